//! File reads: byte ranges mapped to chunks, chunks fetched once and kept
//! decoded in a bounded cache.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use strata_types::ChunkId;

use crate::lower::ChunkSpan;
use crate::ChunkSource;
use crate::SourceError;

/// Chunks of one read fetched ahead of the in-order pass, at most.
const MAX_PREFETCH: usize = 32;
/// Chunks past the end of a sequential read fetched ahead of the next one.
const READ_AHEAD_CHUNKS: usize = 8;
/// Files whose read position is tracked.
const MAX_STREAMS: usize = 4096;

/// Decoded chunks, weighed by their length.
#[derive(Clone)]
struct ByLength;

impl Weighter<ChunkId, Arc<Vec<u8>>> for ByLength {
    fn weight(&self, _key: &ChunkId, value: &Arc<Vec<u8>>) -> u64 {
        value.len().max(1) as u64
    }
}

/// Reads file ranges through a [`ChunkSource`]. Concurrent readers of one
/// chunk share a single fetch; a failed fetch is not cached.
pub struct ChunkReader {
    source: Arc<dyn ChunkSource>,
    cache: Cache<ChunkId, Arc<Vec<u8>>, ByLength>,
    prefetch: Option<tokio::runtime::Handle>,
    /// Where the last read of each recently read file ended.
    streams: parking_lot::Mutex<std::collections::HashMap<usize, u64>>,
    /// Chunks a prefetch task is fetching, and whether as read-ahead.
    in_flight: parking_lot::Mutex<std::collections::HashMap<ChunkId, bool>>,
    /// The source's [`ChunkSource::demand_overtakes_ahead`].
    overtake: bool,
}

impl ChunkReader {
    pub fn new(source: Arc<dyn ChunkSource>, cache_bytes: u64) -> Self {
        let items = (cache_bytes / (64 << 10)).max(16) as usize;
        Self {
            overtake: source.demand_overtakes_ahead(),
            source,
            cache: Cache::with_weighter(items, cache_bytes, ByLength),
            prefetch: None,
            streams: Default::default(),
            in_flight: Default::default(),
        }
    }

    /// Fetches the chunks of a read concurrently on `pool`'s blocking threads.
    pub fn with_prefetch(mut self, pool: tokio::runtime::Handle) -> Self {
        self.prefetch = Some(pool);
        self
    }

    /// The chunk's bytes, from the cache or the source. When the source
    /// lets demand overtake read-ahead without a second fetch
    /// ([`ChunkSource::demand_overtakes_ahead`]: a node, whose single flight
    /// the read joins and whose priority it raises), a chunk being fetched
    /// as read-ahead is asked for again as demand rather than waited for.
    pub fn chunk(&self, span: &ChunkSpan) -> Result<Arc<Vec<u8>>, SourceError> {
        if self.overtake && self.in_flight.lock().get(&span.id) == Some(&true) {
            if let Some(bytes) = self.cache.get(&span.id) {
                return Ok(bytes);
            }
            let bytes = Arc::new(self.fetch(span, false)?);
            self.cache.insert(span.id, bytes.clone());
            return Ok(bytes);
        }
        self.chunk_as(span, false)
    }

    /// [`chunk`](Self::chunk), asked of the source as a read-ahead when
    /// `ahead` (no read waits for it). Concurrent callers share one fetch.
    fn chunk_as(&self, span: &ChunkSpan, ahead: bool) -> Result<Arc<Vec<u8>>, SourceError> {
        self.cache.get_or_insert_with(&span.id, || self.fetch(span, ahead).map(Arc::new))
    }

    /// The chunk from the source, its length checked against the index.
    fn fetch(&self, span: &ChunkSpan, ahead: bool) -> Result<Vec<u8>, SourceError> {
        let t = std::time::Instant::now();
        let bytes = if ahead { self.source.fetch_ahead(&span.id)? } else { self.source.fetch(&span.id)? };
        tracing::trace!(us = t.elapsed().as_micros() as u64, len = bytes.len(), ahead, "fetched");
        if bytes.len() != span.len as usize {
            return Err(SourceError::Failed {
                id: span.id,
                reason: format!("{} bytes where the index says {}", bytes.len(), span.len),
            });
        }
        Ok(bytes)
    }

    /// Starts fetching the chunks of one read, after the first, on the
    /// prefetch pool, so that their fetches (disk or network) and decoding
    /// overlap with the in-order pass; those from index `ahead_from` on are
    /// read-ahead beyond the read. Single-flight caching means the pass
    /// waits for a chunk of the read in flight instead of fetching it
    /// again; a chunk in flight as read-ahead it asks for as demand.
    fn prefetch_chunks(self: &Arc<Self>, spans: &[ChunkSpan], ahead_from: usize) {
        let Some(pool) = &self.prefetch else { return };
        for (i, span) in spans.iter().enumerate().skip(1).take(MAX_PREFETCH) {
            let ahead = i >= ahead_from;
            // Neither decoded nor already on its way (a second task would only
            // wait for the first).
            if self.cache.get(&span.id).is_some() {
                continue;
            }
            match self.in_flight.lock().entry(span.id) {
                std::collections::hash_map::Entry::Occupied(_) => continue,
                std::collections::hash_map::Entry::Vacant(free) => free.insert(ahead),
            };
            let (reader, span) = (self.clone(), *span);
            pool.spawn_blocking(move || {
                drop(reader.chunk_as(&span, ahead));
                reader.in_flight.lock().remove(&span.id);
            });
        }
    }

    /// Whether a read of `offset..end` starts the file or starts where the
    /// last read of the same file (known by its chunk list) ended.
    fn continues_stream(&self, chunks: &[ChunkSpan], offset: u64, end: u64) -> bool {
        let key = chunks.as_ptr() as usize;
        let mut streams = self.streams.lock();
        // A file read from its start is usually read to its end.
        let sequential = offset == 0 || streams.get(&key) == Some(&offset);
        if streams.len() >= MAX_STREAMS {
            streams.clear();
        }
        streams.insert(key, end);
        sequential
    }

    /// Up to `len` bytes at `offset` of a file of `size` bytes made of `chunks`.
    pub fn read(
        self: &Arc<Self>,
        chunks: &[ChunkSpan],
        size: u64,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, SourceError> {
        Ok(self.read_from(chunks, size, offset, len, false)?.unwrap_or_default())
    }

    /// The same read if every chunk it needs is decoded in the cache, without
    /// waiting on any source; `None` otherwise. Cheap enough to answer on the
    /// thread that received the request.
    pub fn read_cached(
        self: &Arc<Self>,
        chunks: &[ChunkSpan],
        size: u64,
        offset: u64,
        len: u32,
    ) -> Option<Vec<u8>> {
        self.read_from(chunks, size, offset, len, true).ok().flatten()
    }

    fn read_from(
        self: &Arc<Self>,
        chunks: &[ChunkSpan],
        size: u64,
        offset: u64,
        len: u32,
        only_cached: bool,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let end = size.min(offset.saturating_add(u64::from(len)));
        if offset >= end {
            return Ok(Some(Vec::new()));
        }
        let first = chunks.partition_point(|c| c.offset + u64::from(c.len) <= offset);
        let last = chunks.partition_point(|c| c.offset < end);
        let spans = &chunks[first..last];
        let cached: Vec<Option<Arc<Vec<u8>>>> = spans.iter().map(|s| self.cache.get(&s.id)).collect();
        if only_cached && cached.iter().any(Option::is_none) {
            return Ok(None);
        }
        // The chunks of this read after the first, and, when the file is
        // being read sequentially, a few beyond it: the next request then
        // finds them decoded.
        let ahead = if self.continues_stream(chunks, offset, end) {
            last.saturating_add(READ_AHEAD_CHUNKS).min(chunks.len())
        } else {
            last
        };
        self.prefetch_chunks(&chunks[first..ahead], last - first);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (span, cached) in spans.iter().zip(cached) {
            let bytes = match cached {
                Some(bytes) => bytes,
                None => self.chunk(span)?,
            };
            let from = offset.max(span.offset) - span.offset;
            let to = end.min(span.offset + u64::from(span.len)) - span.offset;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parking_lot::Mutex;

    use super::*;

    /// Chunks of a known length; remembers how each was asked for.
    #[derive(Default)]
    struct Asked(Mutex<BTreeMap<u8, &'static str>>);

    fn id(i: u8) -> ChunkId {
        ChunkId::of(&[i; 16])
    }

    impl ChunkSource for Asked {
        fn fetch(&self, chunk: &ChunkId) -> Result<Vec<u8>, SourceError> {
            let i = (0..=255).find(|i| id(*i) == *chunk).expect("a known chunk");
            self.0.lock().insert(i, "demand");
            Ok(vec![i; 16])
        }

        fn fetch_ahead(&self, chunk: &ChunkId) -> Result<Vec<u8>, SourceError> {
            let i = (0..=255).find(|i| id(*i) == *chunk).expect("a known chunk");
            self.0.lock().insert(i, "ahead");
            Ok(vec![i; 16])
        }
    }

    /// The chunks a read needs are asked for as demand (the read waits for
    /// them); those read ahead beyond it as read-ahead, which peers answer
    /// after demand.
    #[test]
    fn a_read_asks_its_own_chunks_as_demand_and_those_beyond_as_read_ahead() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let source = Arc::new(Asked::default());
        let reader =
            Arc::new(ChunkReader::new(source.clone(), 1 << 20).with_prefetch(runtime.handle().clone()));
        let chunks: Vec<ChunkSpan> =
            (0..20u8).map(|i| ChunkSpan { id: id(i), offset: u64::from(i) * 16, len: 16 }).collect();
        // From the start of the file: chunks 0..4 are the read, 4..12 ahead.
        let bytes = reader.read(&chunks, 20 * 16, 0, 64).unwrap();
        assert_eq!(bytes.len(), 64);
        // Read-ahead runs on the pool: wait until it is all asked for.
        let started = std::time::Instant::now();
        while source.0.lock().len() < 4 + READ_AHEAD_CHUNKS {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "read-ahead never ran");
            std::thread::yield_now();
        }
        let asked = source.0.lock().clone();
        for i in 0..4 {
            assert_eq!(asked[&i], "demand", "chunk {i} of the read");
        }
        for i in 4..(4 + READ_AHEAD_CHUNKS as u8) {
            assert_eq!(asked[&i], "ahead", "chunk {i} beyond the read");
        }
        assert!(!asked.contains_key(&(4 + READ_AHEAD_CHUNKS as u8)));
    }

    /// A source whose read-ahead fetches wait until released; demand
    /// fetches answer at once.
    #[derive(Default)]
    struct HeldAhead {
        asked: Mutex<Vec<(u8, &'static str)>>,
        released: std::sync::Mutex<bool>,
        release: std::sync::Condvar,
    }

    impl HeldAhead {
        fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.release.notify_all();
        }
    }

    impl ChunkSource for HeldAhead {
        fn fetch(&self, chunk: &ChunkId) -> Result<Vec<u8>, SourceError> {
            let i = (0..=255).find(|i| id(*i) == *chunk).expect("a known chunk");
            self.asked.lock().push((i, "demand"));
            Ok(vec![i; 16])
        }

        fn fetch_ahead(&self, chunk: &ChunkId) -> Result<Vec<u8>, SourceError> {
            let i = (0..=255).find(|i| id(*i) == *chunk).expect("a known chunk");
            self.asked.lock().push((i, "ahead"));
            let mut released = self.released.lock().unwrap();
            while !*released {
                released = self.release.wait(released).unwrap();
            }
            Ok(vec![i; 16])
        }

        fn demand_overtakes_ahead(&self) -> bool {
            true
        }
    }

    /// Releases the held read-ahead however the test ends.
    struct Release(Arc<HeldAhead>);

    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    /// The next read of a sequential file needs a chunk still being read
    /// ahead (held back by the source, as a peer busy with prefetch
    /// replies would): it asks for it as demand instead of waiting, and
    /// keeps it.
    #[test]
    fn a_read_needing_a_chunk_read_ahead_asks_for_it_as_demand() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let source = Arc::new(HeldAhead::default());
        let _release = Release(source.clone());
        let reader =
            Arc::new(ChunkReader::new(source.clone(), 1 << 20).with_prefetch(runtime.handle().clone()));
        let chunks: Arc<Vec<ChunkSpan>> = Arc::new(
            (0..20u8).map(|i| ChunkSpan { id: id(i), offset: u64::from(i) * 16, len: 16 }).collect(),
        );
        assert_eq!(reader.read(&chunks, 20 * 16, 0, 16).unwrap(), vec![0; 16]);
        assert_eq!(reader.in_flight.lock().get(&id(1)), Some(&true), "chunk 1 is being read ahead");
        // The next read (chunk 1) completes while its read-ahead is held;
        // were it to wait for the read-ahead, it would not within a minute.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (reader, chunks) = (reader.clone(), chunks.clone());
            move || done.send(reader.read(&chunks, 20 * 16, 16, 16))
        });
        let read = result.recv_timeout(std::time::Duration::from_secs(60)).expect("the read waited");
        assert_eq!(read.unwrap(), vec![1; 16]);
        assert!(source.asked.lock().contains(&(1, "demand")));
        assert!(reader.cache.get(&id(1)).is_some(), "kept");
    }
}
