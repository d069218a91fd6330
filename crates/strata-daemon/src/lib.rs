//! What runs on a data dir: the node process and everything the CLI does
//! to a store, as a library with typed results.
//!
//! - [`server`]: the node process (`strata serve`): a `strata_node::Node`,
//!   its control socket (`strata-control`: typed requests, progress steps,
//!   cancellation by half-close) and its metrics endpoint.
//! - [`ops`]: the store commands (import, rm, gc, commit, images, inspect,
//!   store stats, peers), each returning a typed `strata_control::Outcome`;
//!   run by the node for its callers, or in the caller when no node runs.
//! - [`client`]: the caller's side of the control socket.
//! - [`mount`], [`mounts`]: mount serving (`strata mount` starts a serving
//!   process; its record under `DATA_DIR/mounts/`), unmounting.
//! - [`run`]: `strata run` (namespaces, the container's files, the
//!   image's user) with [`container`].
//! - [`profile`]: a mount's startup profile, handed to the node.
//! - [`chunks`]: chunk bytes for mounts and whole-image work through the
//!   node on the data dir, verified.
//!
//! Nothing here prints: the binary formats the outcomes (tables, `--json`,
//! progress bars). Errors are [`Error`]; [`error::chain`] formats one
//! with its causes.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cancel;
pub mod chunks;
pub mod client;
pub mod container;
pub mod data_dir;
pub mod error;
pub mod format;
pub mod identity;
pub mod metrics;
pub mod mount;
pub mod mounts;
pub mod ops;
pub mod pipe;
pub mod profile;
pub mod pull;
pub mod run;
pub mod server;
pub mod settings;
pub mod signals;
pub mod snapshotter;
pub mod terminal;
pub mod uppers;

pub use cancel::Cancel;
pub use data_dir::DataDir;
pub use error::{Error, Result};
pub use settings::Settings;
