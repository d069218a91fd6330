use std::io::{self, Read};

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

/// No chunk cut now is longer than this (4 MiB less 64 KiB): chunking
/// settings that could cut more are refused. It is what one frame of the
/// peer protocol (4 MiB, `strata_wire::MAX_FRAME`) carries as one chunk
/// reply, stored form (5-byte header, at most the chunk's length after it)
/// and envelope included, so every chunk can be served to a peer.
pub const MAX_CHUNK_LEN: usize = (4 << 20) - (64 << 10);

/// The longest chunk a decoder accepts: FastCDC's own maximum (16 MiB),
/// which settings allowed before [`MAX_CHUNK_LEN`] existed, so chunks
/// stored then still read (they cannot be served to peers).
pub const MAX_DECODED_LEN: usize = v2020::MAXIMUM_MAX;

/// How regular files are split into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Chunking {
    /// FastCDC (2020) content-defined chunking: boundaries follow content, so
    /// an insertion moves only the chunks around it.
    Cdc { min: usize, avg: usize, max: usize },
    /// Fixed-size blocks, the scheme of Nydus and others; kept for comparison.
    Fixed { size: usize },
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking::Cdc { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkingError {
    #[error("chunk sizes must satisfy {min_lo} <= min <= avg <= max <= {max_hi}, got min={min} avg={avg} max={max}")]
    CdcBounds { min: usize, avg: usize, max: usize, min_lo: usize, max_hi: usize },
    #[error("fixed chunk size must be between 1 and {max_hi} bytes, got {size}")]
    FixedBounds { size: usize, max_hi: usize },
}

impl Chunking {
    pub fn validate(&self) -> Result<(), ChunkingError> {
        match *self {
            Chunking::Cdc { min, avg, max } => {
                let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
                    && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
                    && (v2020::MAXIMUM_MIN..=MAX_CHUNK_LEN).contains(&max)
                    && min <= avg
                    && avg <= max;
                if ok {
                    Ok(())
                } else {
                    Err(ChunkingError::CdcBounds {
                        min,
                        avg,
                        max,
                        min_lo: v2020::MINIMUM_MIN,
                        max_hi: MAX_CHUNK_LEN,
                    })
                }
            }
            Chunking::Fixed { size } if (1..=MAX_CHUNK_LEN).contains(&size) => Ok(()),
            Chunking::Fixed { size } => Err(ChunkingError::FixedBounds { size, max_hi: MAX_CHUNK_LEN }),
        }
    }

    /// The longest chunk this scheme produces.
    pub fn max_len(&self) -> usize {
        match *self {
            Chunking::Cdc { max, .. } => max,
            Chunking::Fixed { size } => size,
        }
    }
}

/// Splits streams into chunks. One `Chunker` serves any number of files and
/// keeps one buffer (at least four times the largest chunk, and 4 MiB) for
/// all of them, so small files cost no allocation and the unconsumed tail is
/// moved to the front only once per several chunks.
pub struct Chunker {
    scheme: Chunking,
    masks: (u64, u64),
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(scheme: Chunking) -> Result<Self, ChunkingError> {
        scheme.validate()?;
        let masks = match scheme {
            Chunking::Cdc { avg, .. } => v2020::select_masks(avg, v2020::Normalization::Level1),
            Chunking::Fixed { .. } => (0, 0),
        };
        Ok(Self { scheme, masks, buf: Vec::new() })
    }

    pub fn scheme(&self) -> Chunking {
        self.scheme
    }

    /// Reads `reader` to its end and calls `on_chunk` with each chunk, in
    /// order. Returns the number of bytes read. An empty stream has no chunks.
    pub fn split<R, E, F>(&mut self, mut reader: R, mut on_chunk: F) -> Result<u64, E>
    where
        R: Read,
        E: From<io::Error>,
        F: FnMut(&[u8]) -> Result<(), E>,
    {
        let max = self.scheme.max_len();
        let want = (4 * max).max(4 << 20);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < max {
                self.buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while !eof && end < self.buf.len() {
                    match reader.read(&mut self.buf[end..]) {
                        Ok(0) => eof = true,
                        Ok(n) => end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if start == end {
                return Ok(total);
            }
            let cut = self.cut(&self.buf[start..end]);
            on_chunk(&self.buf[start..start + cut])?;
            start += cut;
            total += cut as u64;
        }
    }

    fn cut(&self, window: &[u8]) -> usize {
        match self.scheme {
            Chunking::Fixed { size } => size.min(window.len()),
            Chunking::Cdc { min, avg, max } => {
                let (mask_s, mask_l) = self.masks;
                let (_, cut) = v2020::cut(window, min, avg, max, mask_s, mask_l, mask_s << 1, mask_l << 1);
                // `cut` returns 0 only for an empty window, which never reaches here.
                cut.max(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};

    fn small_cdc() -> Chunking {
        Chunking::Cdc { min: 256, avg: 1024, max: 4096 }
    }

    fn chunks_of(scheme: Chunking, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut chunker = Chunker::new(scheme).unwrap();
        let n = chunker
            .split::<_, io::Error, _>(data, |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n, data.len() as u64);
        out
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn default_matches_the_documented_sizes() {
        assert_eq!(Chunking::default(), Chunking::Cdc { min: 16384, avg: 65536, max: 262144 });
        assert!(Chunking::default().validate().is_ok());
    }

    #[test]
    fn rejects_bad_bounds() {
        assert!(Chunker::new(Chunking::Cdc { min: 10, avg: 1024, max: 4096 }).is_err());
        assert!(Chunker::new(Chunking::Cdc { min: 8192, avg: 1024, max: 4096 }).is_err());
        assert!(Chunker::new(Chunking::Fixed { size: 0 }).is_err());
        assert!(Chunker::new(Chunking::Fixed { size: MAX_CHUNK_LEN + 1 }).is_err());
        // FastCDC would cut chunks of up to 16 MiB; no peer frame carries them.
        assert!(Chunker::new(Chunking::Cdc { min: 1 << 20, avg: 2 << 20, max: 16 << 20 }).is_err());
        assert!(Chunker::new(Chunking::Cdc { min: 1 << 20, avg: 2 << 20, max: MAX_CHUNK_LEN + 1 }).is_err());
        assert!(Chunker::new(Chunking::Cdc { min: 1 << 20, avg: 2 << 20, max: MAX_CHUNK_LEN }).is_ok());
    }

    #[test]
    fn small_input_is_one_chunk_and_empty_is_none() {
        assert_eq!(chunks_of(Chunking::default(), b"tiny"), vec![b"tiny".to_vec()]);
        assert!(chunks_of(Chunking::default(), b"").is_empty());
    }

    #[test]
    fn chunks_respect_bounds_and_reassemble() {
        let data = random_bytes(7, 1 << 20);
        let chunks = chunks_of(Chunking::default(), &data);
        assert!(chunks.len() > 4, "1 MiB at avg 64 KiB gives several chunks");
        for c in &chunks[..chunks.len() - 1] {
            assert!((16384..=262144).contains(&c.len()), "chunk of {} bytes", c.len());
        }
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn fixed_mode_cuts_every_size_bytes() {
        let data = random_bytes(1, 10_000);
        let lens: Vec<usize> =
            chunks_of(Chunking::Fixed { size: 4096 }, &data).iter().map(Vec::len).collect();
        assert_eq!(lens, vec![4096, 4096, 1808]);
    }

    proptest! {
        #[test]
        fn deterministic_whatever_the_read_sizes(seed: u64, len in 0usize..40_000, step in 1usize..5000) {
            let data = random_bytes(seed, len);
            let whole = chunks_of(small_cdc(), &data);
            let mut trickled = Vec::new();
            Chunker::new(small_cdc()).unwrap()
                .split::<_, io::Error, _>(Trickle(&data, step), |c| { trickled.push(c.to_vec()); Ok(()) })
                .unwrap();
            prop_assert_eq!(&whole, &trickled);
            prop_assert_eq!(whole.concat(), data);
        }

        #[test]
        fn an_insertion_moves_only_nearby_boundaries(seed: u64, at in 0usize..200_000, insert in proptest::collection::vec(any::<u8>(), 1..200)) {
            let data = random_bytes(seed, 200_000);
            let mut edited = data[..at].to_vec();
            edited.extend_from_slice(&insert);
            edited.extend_from_slice(&data[at..]);

            let before = chunks_of(small_cdc(), &data);
            let after = chunks_of(small_cdc(), &edited);
            // Chunks wholly before the insertion point are untouched, and CDC
            // resynchronises after it: of ~200 chunks, only a few around the
            // insertion change (fixed-size blocks would change all after it).
            let mut end = 0;
            for (old, new) in before.iter().zip(&after) {
                end += old.len();
                // A boundary depends on the byte just after it too.
                if end >= at { break; }
                prop_assert_eq!(old, new);
            }
            let shared = before.iter().filter(|c| after.contains(c)).count();
            prop_assert!(shared + 20 >= before.len(),
                "only {} of {} chunks survived a {}-byte insertion", shared, before.len(), insert.len());
        }
    }
}
