//! The stored form of a chunk: a 5-byte header (codec, uncompressed length as
//! u32 little-endian) followed by the payload.

use strata_types::ChunkId;

use crate::{MAX_CHUNK_LEN, MAX_DECODED_LEN};

/// How a stored chunk's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// The fixed header in front of every stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunkHeader {
    pub codec: Codec,
    pub len: u32,
}

impl StoredChunkHeader {
    pub const LEN: usize = 5;

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.codec as u8);
        out.extend_from_slice(&self.len.to_le_bytes());
    }

    /// Parses the header of a stored chunk (without looking at the payload).
    pub fn parse(id: &ChunkId, stored: &[u8]) -> Result<Self, ChunkError> {
        let Some((&[codec, a, b, c, d], _)) = stored.split_first_chunk::<5>() else {
            return Err(ChunkError::Truncated { id: *id, len: stored.len() });
        };
        let codec = match codec {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            other => return Err(ChunkError::UnknownCodec { id: *id, codec: other }),
        };
        let len = u32::from_le_bytes([a, b, c, d]);
        if len as usize > MAX_DECODED_LEN {
            return Err(ChunkError::TooLong { id: *id, len: len as u64 });
        }
        Ok(Self { codec, len })
    }
}

/// Why a stored chunk could not be turned back into its bytes.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk {id}: stored form is {len} bytes, shorter than its header")]
    Truncated { id: ChunkId, len: usize },
    #[error("chunk {id}: unknown codec {codec}")]
    UnknownCodec { id: ChunkId, codec: u8 },
    #[error("chunk {id}: declared length {len} exceeds the {MAX_DECODED_LEN}-byte limit")]
    TooLong { id: ChunkId, len: u64 },
    #[error("chunk {id}: zstd payload does not decode: {reason}")]
    Decompress { id: ChunkId, reason: String },
    #[error("chunk {id}: decoded to {actual} bytes, header says {declared}")]
    LengthMismatch { id: ChunkId, declared: u32, actual: usize },
    #[error("chunk {id}: content hashes to {actual}, the data is corrupt")]
    Corrupt { id: ChunkId, actual: ChunkId },
}

/// Encodes chunks for storage, reusing one zstd context.
pub struct ChunkEncoder {
    /// `None`: every chunk is stored raw.
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkEncoder {
    /// `level` is a zstd level (1..=22; negative levels trade ratio for
    /// speed); 0 stores every chunk raw, spending no CPU on compression.
    pub fn new(level: i32) -> std::io::Result<Self> {
        let compressor = if level == 0 { None } else { Some(zstd::bulk::Compressor::new(level)?) };
        Ok(Self { compressor })
    }

    /// The stored form of `data`: zstd if that is smaller, raw otherwise.
    /// Chunks whose bytes look uniformly random (already compressed media,
    /// archives, encrypted data) are stored raw without trying zstd.
    pub fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        debug_assert!(data.len() <= MAX_CHUNK_LEN);
        let Some(compressor) = self.compressor.as_mut() else { return raw(data) };
        if looks_incompressible(data) {
            return raw(data);
        }
        let header_len = StoredChunkHeader::LEN;
        let mut out = Vec::with_capacity(header_len + data.len());
        StoredChunkHeader { codec: Codec::Zstd, len: data.len() as u32 }.write(&mut out);
        // Compress into the room raw storage would take; if zstd needs all of
        // it (or more) the chunk does not compress and is stored raw.
        out.resize(header_len + data.len(), 0);
        let budget = data.len().saturating_sub(1);
        let compressed = compressor.compress_to_buffer(data, &mut out[header_len..header_len + budget]).ok();
        match compressed {
            Some(n) => out.truncate(header_len + n),
            None => return raw(data),
        }
        out
    }
}

fn raw(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(StoredChunkHeader::LEN + data.len());
    StoredChunkHeader { codec: Codec::Raw, len: data.len() as u32 }.write(&mut out);
    out.extend_from_slice(data);
    out
}

/// Byte entropy of a sample (eight 1 KiB windows spread over the chunk)
/// above 7.9 bits per byte: zstd would only find it incompressible, slowly.
/// Small chunks are always tried.
fn looks_incompressible(data: &[u8]) -> bool {
    const WINDOW: usize = 1024;
    const WINDOWS: usize = 8;
    if data.len() < 4 * WINDOW * WINDOWS {
        return false;
    }
    let mut counts = [0u32; 256];
    let stride = data.len() / WINDOWS;
    for w in 0..WINDOWS {
        for &b in &data[w * stride..w * stride + WINDOW] {
            counts[b as usize] += 1;
        }
    }
    let n = (WINDOW * WINDOWS) as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.9
}

/// Decodes stored chunks and verifies them against their ids.
pub struct ChunkDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl ChunkDecoder {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { decompressor: zstd::bulk::Decompressor::new()? })
    }

    /// The chunk's bytes, checked: BLAKE3 of the result must equal `id`.
    pub fn decode(&mut self, id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let header = StoredChunkHeader::parse(id, stored)?;
        let payload = &stored[StoredChunkHeader::LEN..];
        let data = match header.codec {
            Codec::Raw => payload.to_vec(),
            Codec::Zstd => {
                let mut out = Vec::with_capacity(header.len as usize);
                self.decompressor
                    .decompress_to_buffer(payload, &mut out)
                    .map_err(|e| ChunkError::Decompress { id: *id, reason: e.to_string() })?;
                out
            }
        };
        if data.len() != header.len as usize {
            return Err(ChunkError::LengthMismatch { id: *id, declared: header.len, actual: data.len() });
        }
        let actual = ChunkId::of(&data);
        if actual != *id {
            return Err(ChunkError::Corrupt { id: *id, actual });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_longer_than_new_chunking_cuts_still_decodes() {
        // Stored before the wire-frame limit: 8 MiB, raw.
        let data = vec![7u8; 8 << 20];
        let id = ChunkId::of(&data);
        let mut stored = vec![Codec::Raw as u8];
        stored.extend_from_slice(&(data.len() as u32).to_le_bytes());
        stored.extend_from_slice(&data);
        assert!(data.len() > MAX_CHUNK_LEN);
        assert_eq!(ChunkDecoder::new().unwrap().decode(&id, &stored).unwrap(), data);
        let mut too_long = vec![Codec::Raw as u8];
        too_long.extend_from_slice(&((MAX_DECODED_LEN + 1) as u32).to_le_bytes());
        assert!(matches!(StoredChunkHeader::parse(&id, &too_long), Err(ChunkError::TooLong { .. })));
    }

    fn round_trip(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let stored = ChunkEncoder::new(3).unwrap().encode(data);
        let raw_stored = ChunkEncoder::new(0).unwrap().encode(data);
        assert_eq!(StoredChunkHeader::parse(&ChunkId::of(data), &raw_stored).unwrap().codec, Codec::Raw);
        assert_eq!(ChunkDecoder::new().unwrap().decode(&ChunkId::of(data), &raw_stored).unwrap(), data);
        let back = ChunkDecoder::new().unwrap().decode(&ChunkId::of(data), &stored).unwrap();
        (stored, back)
    }

    #[test]
    fn compressible_is_zstd_random_is_raw() {
        let text = b"strata ".repeat(2000);
        let (stored, back) = round_trip(&text);
        assert_eq!(back, text);
        assert_eq!(StoredChunkHeader::parse(&ChunkId::of(&text), &stored).unwrap().codec, Codec::Zstd);
        assert!(stored.len() < text.len() / 10);

        let mut noise = vec![0u8; 4096];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9),
            &mut noise,
        );
        let (stored, back) = round_trip(&noise);
        assert_eq!(back, noise);
        assert_eq!(stored.len(), noise.len() + StoredChunkHeader::LEN);
    }

    #[test]
    fn random_chunks_skip_zstd_but_repetitive_ones_do_not() {
        let mut noise = vec![0u8; 256 << 10];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
            &mut noise,
        );
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(&b"abcdefgh".repeat(32 << 10)));
        assert!(!looks_incompressible(&noise[..1000]), "small chunks are always tried");
    }

    #[test]
    fn empty_chunk_round_trips() {
        assert_eq!(round_trip(b"").1, b"");
    }

    #[test]
    fn a_flipped_bit_is_an_error_naming_the_chunk() {
        let data = b"hello world, hello chunk".repeat(10);
        let id = ChunkId::of(&data);
        let mut dec = ChunkDecoder::new().unwrap();

        let mut raw = vec![0u8];
        raw.extend_from_slice(&(data.len() as u32).to_le_bytes());
        raw.extend_from_slice(&data);
        *raw.last_mut().unwrap() ^= 1;
        let err = dec.decode(&id, &raw).unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt { id: i, .. } if i == id));
        assert!(err.to_string().contains(&id.to_hex()));

        let mut zstd = ChunkEncoder::new(3).unwrap().encode(&data);
        let last = zstd.len() - 3;
        zstd[last] ^= 0x40;
        assert!(dec.decode(&id, &zstd).is_err());
    }

    #[test]
    fn hostile_headers_are_rejected_before_allocating() {
        let id = ChunkId::of(b"x");
        let mut dec = ChunkDecoder::new().unwrap();
        assert!(matches!(dec.decode(&id, &[1, 2]), Err(ChunkError::Truncated { .. })));
        assert!(matches!(dec.decode(&id, &[9, 0, 0, 0, 0]), Err(ChunkError::UnknownCodec { .. })));
        assert!(matches!(dec.decode(&id, &[1, 255, 255, 255, 255]), Err(ChunkError::TooLong { .. })));
        assert!(matches!(dec.decode(&id, &[0, 5, 0, 0, 0, b'x']), Err(ChunkError::LengthMismatch { .. })));
    }
}
