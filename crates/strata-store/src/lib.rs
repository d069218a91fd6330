//! The chunk store: everything a node keeps, in one RocksDB database.
//!
//! Column families ([`schema`]): `chunks` (stored chunks by [`ChunkId`], in
//! RocksDB blob files so compaction never rewrites chunk bytes),
//! `chunk_meta` (8 bytes per chunk: what lookups, GC and stats read),
//! `layers` (records), `indexes` (encoded layer indexes by [`LayerId`]), `images`
//! (records by [`ImageId`]), `names` (`repo:tag` to image), `refs`
//! (chunk→layer, layer→image and image→name edges), `profiles` (startup
//! profiles), `snapshots` (the containerd snapshotter's metastore),
//! `fetch_state` (what the node fetches of each image in the background).
//!
//! Invariants:
//! - Every chunk read is decoded and BLAKE3-verified; every index and image
//!   record read is checked against its id.
//! - An import is one [`ImportTxn`]: chunks go in as they are made, while
//!   layer, image and name records appear in a single synced write at commit.
//!   A failed transaction deletes the chunks it added; a killed one leaves
//!   only unreferenced chunks, which [`Store::gc`] deletes.
//! - A chunk is deleted only when no layer references it and no open
//!   transaction has pinned it; pin-then-check in transactions and
//!   check-pins-then-delete in GC happen under one lock, so GC cannot delete
//!   what a concurrent import relies on.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod error;
mod fetch_state;
mod gc;
mod pins;
mod profile;
mod query;
pub mod schema;
mod snapshots;
pub mod source;
mod stats;
mod store;
mod txn;

pub use error::StoreError;
pub use fetch_state::FetchState;
pub use gc::GcReport;
pub use query::{ImageEntry, LayerEntry, RemoveOutcome};
pub use source::{ChunkSource, SourceError, StoreSource};
pub use stats::{Holding, StoreStats};
pub use store::{OpenMode, Store};
pub use strata_proto::v1::{ImageRecord, LayerIndex, LayerRecord, SnapshotRecord};

/// An image record's id: BLAKE3 of its encoding with the manifest left
/// out, so that one image's layers and config are one id whether it came
/// from a registry (manifest kept), a docker-save archive or a commit.
pub fn image_id(record: &ImageRecord) -> strata_types::ImageId {
    use prost::Message;
    if record.manifest.is_empty() {
        return strata_types::ImageId::of(&record.encode_to_vec());
    }
    let bare = ImageRecord { manifest: Vec::new(), ..record.clone() };
    strata_types::ImageId::of(&bare.encode_to_vec())
}
pub use strata_types::{ChunkId, ImageId, LayerId};
pub use txn::ImportTxn;
