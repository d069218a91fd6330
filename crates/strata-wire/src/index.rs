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

/// Most bytes a compressed index may decompress to (64 MiB: a layer of
/// some half a million files; an index sent plain must fit one 4 MiB
/// frame). Decompression stops there and the index is refused, so a peer
/// cannot make this node allocate without bound.
pub const MAX_LAYER_INDEX: usize = 64 << 20;

/// The largest zstd window a compressed index may use: 2^23 bytes (8 MiB).
/// The compressor's level uses 2 MiB at most; a frame that asks for more is
/// refused before its window is allocated.
const MAX_WINDOW_LOG: u32 = 23;

/// zstd's level for indexes: fast (hundreds of MB/s), and higher levels
/// save little more on such data.
const LEVEL: i32 = 3;

/// `index` as one zstd frame (RFC 8878), if that is smaller.
pub fn compress_index(index: &[u8]) -> Option<Vec<u8>> {
    let compressed = zstd::bulk::compress(index, LEVEL).ok()?;
    (compressed.len() < index.len()).then_some(compressed)
}

/// The index bytes `compressed`, one zstd frame, holds.
///
/// Errors: [`WireError::BadFrame`] when the bytes are not one zstd frame
/// (not zstd, cut short, followed by more bytes, or asking for a window
/// over 8 MiB); [`WireError::IndexTooLarge`] when they would decompress past
/// [`MAX_LAYER_INDEX`] (reading stops there).
pub fn decompress_index(compressed: &[u8]) -> Result<Vec<u8>, WireError> {
    let bad = |e: std::io::Error| WireError::BadFrame(format!("compressed layer index: {e}"));
    let mut decoder = zstd::stream::read::Decoder::new(compressed).map_err(bad)?.single_frame();
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(bad)?;
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(MAX_LAYER_INDEX));
    let mut limited = decoder.take(MAX_LAYER_INDEX as u64 + 1);
    limited.read_to_end(&mut out).map_err(bad)?;
    if out.len() > MAX_LAYER_INDEX {
        return Err(WireError::IndexTooLarge { len: out.len(), max: MAX_LAYER_INDEX });
    }
    // One frame: anything after it is not part of the index.
    let mut rest = limited.into_inner().finish();
    if !std::io::BufRead::fill_buf(&mut rest).map_err(bad)?.is_empty() {
        return Err(WireError::BadFrame("compressed layer index: bytes after its zstd frame".into()));
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
    fn garbage_cut_short_trailing_bytes_and_bombs_are_refused() {
        let compressed = compress_index(&sample()).expect("paths compress");
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(&compressed);
        for bad in [&b"not zstd at all"[..], &compressed[..compressed.len() / 2], &trailing[..]] {
            assert!(matches!(decompress_index(bad), Err(WireError::BadFrame(_))), "{} bytes", bad.len());
        }
        // Four times the bound: refused once the bound is passed, not after.
        let bomb = zstd::bulk::compress(&vec![0u8; 4 * MAX_LAYER_INDEX], 1).expect("compressed");
        assert!(bomb.len() < 64 << 10, "a bomb is small: {}", bomb.len());
        assert_eq!(
            decompress_index(&bomb),
            Err(WireError::IndexTooLarge { len: MAX_LAYER_INDEX + 1, max: MAX_LAYER_INDEX })
        );
    }

    #[test]
    fn a_frame_asking_for_a_larger_window_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        encoder.window_log(MAX_WINDOW_LOG + 2).expect("window");
        encoder.long_distance_matching(true).expect("ldm");
        std::io::Write::write_all(&mut encoder, &sample()).expect("write");
        let wide = encoder.finish().expect("finish");
        assert!(matches!(decompress_index(&wide), Err(WireError::BadFrame(_))));
    }
}
