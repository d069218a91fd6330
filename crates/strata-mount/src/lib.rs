//! The FUSE filesystem of a mounted image: the image's layers merged by OCI rules into
//! one read-only lower tree (built from layer indexes alone), file data read lazily
//! through a [`ChunkSource`] (the local store now, peers later), served by worker
//! threads so that a slow chunk never holds up other requests.
//!
//! Writes go to a writable layer on local disk ([`UpperDir`]), in the style of an
//! overlayfs upper directory: the first change to a lower entry copies it up,
//! a file as metadata only (its unwritten bytes keep coming from its chunks).
//!
//! Invariants:
//! - The lower tree is built once per mount and never changes: inode numbers are
//!   stable for the life of the mount, and the kernel may cache lower data.
//! - Writes never reach the store; deleting a lower entry records a whiteout.
//! - Every byte served comes from a chunk verified against its id by the source.
//! - FUSE request threads never wait on a chunk source.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod attr;
mod commit;
mod cow;
mod error;
mod fs;
pub mod lower;
mod nodes;
mod overlay;
mod reader;
mod session;
pub mod stats;
mod sys;
mod trace;
pub mod upper;

pub use commit::{write_overlay_upper_layer, write_upper_layer, CommitError};
pub use error::MountError;
pub use fs::MountFs;
pub use lower::{Ino, Inode, Kind, LowerTree};
pub use reader::ChunkReader;
pub use session::{load_lower, mount, MountOptions};
pub use stats::MountStats;
/// Where chunk bytes come from (defined by the store, below the node).
pub use strata_store::{ChunkSource, SourceError, StoreSource};
pub use trace::{FileReport, ReadTrace, TraceReport};
pub use upper::UpperDir;
