//! Layer indexes on the wire: sent zstd-compressed to an asker that takes
//! them so (`ResolveImage.zstd_indexes`, `LayerIndexReply.index_zstd`).
//!
//! An index is mostly sorted paths and repeated chunk ids; python's layers
//! (numpy, pandas) come to about a quarter of their size. The index
//! crosses the link before the image's first chunk can be asked for, on a
//! connection still in slow start, so every byte saved there is a byte of
//! the congestion window's first round trips.

use std::io::Read;

use crate::WireError;

/// Most bytes a compressed index may decompress to (256 MiB: a layer of
/// some two million files). A frame that says more is refused, whatever
/// it holds, so a peer cannot make this node allocate without bound.
pub const MAX_LAYER_INDEX: usize = 256 << 20;

/// zstd's level for indexes: fast (hundreds of MB/s), and higher levels
/// save little more on such data.
const LEVEL: i32 = 3;

/// `index` as one zstd frame (RFC 8878), if that is smaller.
pub fn compress_index(index: &[u8]) -> Option<Vec<u8>> {
    let compressed = zstd::bulk::compress(index, LEVEL).ok()?;
    (compressed.len() < index.len()).then_some(compressed)
}

/// The index bytes `compressed` (one or more zstd frames) holds.
///
/// Errors: [`WireError::BadFrame`] when the bytes are not zstd, are cut
/// short or hold trailing garbage; [`WireError::TooLarge`] when they would
/// decompress past [`MAX_LAYER_INDEX`] (reading stops there).
pub fn decompress_index(compressed: &[u8]) -> Result<Vec<u8>, WireError> {
    let decoder = zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| WireError::BadFrame(format!("compressed layer index: {e}")))?;
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(MAX_LAYER_INDEX));
    let read = decoder.take(MAX_LAYER_INDEX as u64 + 1).read_to_end(&mut out);
    read.map_err(|e| WireError::BadFrame(format!("compressed layer index: {e}")))?;
    if out.len() > MAX_LAYER_INDEX {
        return Err(WireError::TooLarge { len: out.len(), max: MAX_LAYER_INDEX });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..5000)
            .flat_map(|i| format!("usr/lib/python3.11/site-packages/numpy/f{i}.py\0").into_bytes())
            .collect()
    }

    #[test]
    fn an_index_crosses_compressed_and_comes_back_the_same() {
        let index = sample();
        let compressed = compress_index(&index).expect("paths compress");
        assert!(compressed.len() * 4 < index.len(), "{} of {}", compressed.len(), index.len());
        assert_eq!(decompress_index(&compressed).expect("decompressed"), index);
    }

    #[test]
    fn bytes_that_do_not_shrink_are_sent_as_they_are() {
        let random: Vec<u8> =
            (0..4096u32).flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes().to_vec()).collect();
        assert_eq!(compress_index(&random), None);
    }

    #[test]
    fn garbage_cut_short_and_bombs_are_refused() {
        let compressed = compress_index(&sample()).expect("paths compress");
        for bad in [&b"not zstd at all"[..], &compressed[..compressed.len() / 2]] {
            assert!(matches!(decompress_index(bad), Err(WireError::BadFrame(_))), "{bad:?}");
        }
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_LAYER_INDEX + 1], 1).expect("compressed");
        assert!(bomb.len() < 64 << 10, "a bomb is small: {}", bomb.len());
        assert_eq!(
            decompress_index(&bomb),
            Err(WireError::TooLarge { len: MAX_LAYER_INDEX + 1, max: MAX_LAYER_INDEX })
        );
    }
}
