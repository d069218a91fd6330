//! containerd's snapshots API, served from Strata: a proxy snapshotter
//! (containerd `proxy_plugins`, type `snapshot`) on a Unix socket.
//!
//! Owns: the generated API ([`api`], from the protos vendored in
//! `proto/containerd/`), containerd's filter language ([`filter`]), the
//! snapshots themselves — metadata in the store's `snapshots` family, so
//! they survive a restart, directories and overlay mounts as containerd's
//! overlayfs snapshotter lays them out ([`snapshots`]) — and the gRPC
//! service mapping each call and error onto them ([`service`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client;
pub mod filter;
pub mod service;
pub mod snapshots;

pub use filter::{FilterError, Filters};
pub use service::{bind, serve, ServeError, Service};
pub use snapshots::{ChainSource, Info, Kind, Layers, Mount, SnapshotError, Snapshots, Usage, TARGET_LABEL};

/// The API as generated from containerd's protos (package paths kept, as
/// prost refers across them).
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod api {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}
