//! Column families and key layouts.

use strata_types::{ChunkId, ImageId, LayerId};

/// Stored chunks, key = ChunkId (32 bytes), value = strata-chunk's stored
/// form, in RocksDB blob files.
pub const CHUNKS: &str = "chunks";
/// Which chunks exist, key = ChunkId, value = [`ChunkMeta`] (8 bytes): what
/// lookups, GC and stats read instead of the chunk bytes. Written in the same
/// batch as [`CHUNKS`]; also holds [`STATS_KEY`], the running totals.
pub const CHUNK_META: &str = "chunk_meta";
/// LayerRecord by LayerId.
pub const LAYERS: &str = "layers";
/// Encoded LayerIndex by LayerId; LayerId = BLAKE3 of the value.
pub const INDEXES: &str = "indexes";
/// ImageRecord by ImageId; ImageId = [`crate::image_id`] of the value.
pub const IMAGES: &str = "images";
/// Image name (`repo:tag`) to ImageId.
pub const NAMES: &str = "names";
/// Reference edges, all with empty values; see the key builders below.
pub const REFS: &str = "refs";

/// An image's startup profile by ImageId: the chunks its containers read
/// first, in that order, as concatenated ChunkIds. Advisory: recorded by a
/// node that ran the image, never part of the image's identity.
pub const PROFILES: &str = "profiles";

/// containerd snapshots (the snapshotter's metastore): `SnapshotRecord` by
/// the snapshot's key, UTF-8 as containerd sends it.
pub const SNAPSHOTS: &str = "snapshots";

/// An image's cache record by ImageId ([`crate::FetchState`]): version,
/// background-fetch mode, flags (started, pinned), last use (11 bytes).
pub const FETCH_STATE: &str = "fetch_state";

pub const ALL: [&str; 10] =
    [CHUNKS, CHUNK_META, LAYERS, INDEXES, IMAGES, NAMES, REFS, PROFILES, SNAPSHOTS, FETCH_STATE];

/// Key of the chunk totals in [`CHUNK_META`]; its length sets it apart from ids.
pub const STATS_KEY: &[u8] = b"\xffstats";

const CHUNK_USED_BY_LAYER: u8 = b'c';
const LAYER_USED_BY_IMAGE: u8 = b'l';
const IMAGE_NAMED: u8 = b'n';

fn key(tag: u8, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + a.len() + b.len());
    k.push(tag);
    k.extend_from_slice(a);
    k.extend_from_slice(b);
    k
}

/// `c` chunk layer: the layer's index lists the chunk.
pub fn chunk_ref(chunk: &ChunkId, layer: &LayerId) -> Vec<u8> {
    key(CHUNK_USED_BY_LAYER, chunk.as_bytes(), layer.as_bytes())
}

pub fn chunk_ref_prefix(chunk: &ChunkId) -> Vec<u8> {
    key(CHUNK_USED_BY_LAYER, chunk.as_bytes(), &[])
}

/// `l` layer image: the image lists the layer.
pub fn layer_ref(layer: &LayerId, image: &ImageId) -> Vec<u8> {
    key(LAYER_USED_BY_IMAGE, layer.as_bytes(), image.as_bytes())
}

pub fn layer_ref_prefix(layer: &LayerId) -> Vec<u8> {
    key(LAYER_USED_BY_IMAGE, layer.as_bytes(), &[])
}

/// `n` image name: the image is known under the name.
pub fn name_ref(image: &ImageId, name: &str) -> Vec<u8> {
    key(IMAGE_NAMED, image.as_bytes(), name.as_bytes())
}

pub fn name_ref_prefix(image: &ImageId) -> Vec<u8> {
    key(IMAGE_NAMED, image.as_bytes(), &[])
}

/// The value of a [`CHUNK_META`] entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Uncompressed length.
    pub len: u32,
    /// Length of the stored form.
    pub stored: u32,
}

impl ChunkMeta {
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0; 8];
        out[..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..].copy_from_slice(&self.stored.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 8] = bytes.try_into().ok()?;
        let [a, b, c, d, e, f, g, h] = bytes;
        Some(Self { len: u32::from_le_bytes([a, b, c, d]), stored: u32::from_le_bytes([e, f, g, h]) })
    }
}
