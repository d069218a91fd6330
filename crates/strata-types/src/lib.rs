//! Identifiers shared by every Strata crate.
//!
//! Strata names content by BLAKE3 digest: [`ChunkId`] for a run of file bytes,
//! [`LayerId`] for an encoded layer index, [`ImageId`] for an encoded image
//! record. [`NodeId`] names a cluster member. [`OciDigest`] is the foreign
//! `algorithm:hex` digest of the OCI world (diff_ids, blob digests), kept beside
//! our own ids but never confused with them.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod background;
mod blake3_id;
mod oci_digest;
mod read_stats;
mod secret;

pub use background::{BackgroundFetch, CacheVerdict};
pub use blake3_id::{ChunkId, IdParseError, ImageId, LayerId, NodeId};
pub use oci_digest::{OciDigest, OciDigestError, Sha256Writer};
pub use read_stats::{ReadStats, READ_LATENCY_BOUNDS};
pub use secret::Secret;

/// Most chunks a startup profile names (1 MiB of ids).
pub const MAX_PROFILE_CHUNKS: usize = 32 * 1024;

/// A list of chunk ids as stored and sent (startup profiles): 32 bytes
/// each, in order.
pub fn encode_chunk_list(chunks: &[ChunkId]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.as_bytes().iter().copied()).collect()
}

/// The ids of an encoded chunk list; `None` unless its length is a multiple
/// of 32 and it names at most `max`.
pub fn decode_chunk_list(bytes: &[u8], max: usize) -> Option<Vec<ChunkId>> {
    if !bytes.len().is_multiple_of(32) || bytes.len() / 32 > max {
        return None;
    }
    bytes.chunks_exact(32).map(|c| ChunkId::from_slice(c).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_and_reject_bad_lengths() {
        let ids = [ChunkId::of(b"a"), ChunkId::of(b"b")];
        let bytes = encode_chunk_list(&ids);
        assert_eq!(decode_chunk_list(&bytes, 2), Some(ids.to_vec()));
        assert_eq!(decode_chunk_list(&bytes, 1), None);
        assert_eq!(decode_chunk_list(&bytes[..33], 2), None);
        assert_eq!(decode_chunk_list(&[], 2), Some(vec![]));
    }
}
