//! The CLI's integration tests, one test binary (one RocksDB link): the
//! real `strata` binary on scratch data dirs, real archives, real mounts,
//! real nodes on loopback, Docker 20.10, docker-compose and Kubernetes
//! manifest checks. Each module is one area; `common` runs the binary.

mod common;

mod cache_cli;
mod cert_cli;
mod cli_habits;
mod cluster_cli;
mod compose;
mod config_cli;
mod containerd;
mod control;
mod crash;
mod debian;
mod disk_full;
mod hostile;
mod import_export;
mod kubernetes;
mod mount_cli;
mod node_cluster;
mod readme;
mod registry_cli;
mod run_env;
mod run_flags;
