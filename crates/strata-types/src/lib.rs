//! Identifiers shared by every Strata crate.
//!
//! Strata names content by BLAKE3 digest: [`ChunkId`] for a run of file bytes,
//! [`LayerId`] for an encoded layer index, [`ImageId`] for an encoded image
//! record. [`NodeId`] names a cluster member. [`OciDigest`] is the foreign
//! `algorithm:hex` digest of the OCI world (diff_ids, blob digests), kept beside
//! our own ids but never confused with them.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod blake3_id;
mod oci_digest;

pub use blake3_id::{ChunkId, IdParseError, ImageId, LayerId, NodeId};
pub use oci_digest::{OciDigest, OciDigestError, Sha256Writer};
