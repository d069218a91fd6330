//! A record of the image bytes a mount served: for each lower file, the
//! distinct byte ranges read and when it was first read. It says what a
//! container actually needed from its image — the figure lazy fetching is
//! judged against, and the order a startup prefetch would follow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use strata_types::ChunkId;

use crate::lower::{ChunkSpan, Ino, LowerTree};

/// Reads recorded as the mount serves them; cheap enough for FUSE threads
/// (one lock, a range merge).
pub struct ReadTrace {
    started: Instant,
    files: Mutex<HashMap<Ino, FileReads>>,
    /// The mounted tree, attached by the mount: paths and chunks for the report.
    tree: OnceLock<Arc<LowerTree>>,
}

struct FileReads {
    first_read: Duration,
    reads: u64,
    /// Disjoint, non-adjacent ranges read: start -> end.
    ranges: BTreeMap<u64, u64>,
}

/// What a mount's workload read, as written to the trace file.
#[derive(Debug, Serialize)]
pub struct TraceReport {
    /// Distinct bytes of image files read.
    pub bytes_read: u64,
    /// Uncompressed bytes of the distinct chunks those reads touched: what
    /// fetching at chunk granularity cannot go below.
    pub chunk_bytes_touched: u64,
    pub chunks_touched: u64,
    pub files_read: u64,
    /// Read requests served.
    pub reads: u64,
    /// In the order first read.
    pub files: Vec<FileReport>,
}

#[derive(Debug, Serialize)]
pub struct FileReport {
    /// Path in the image, lossily UTF-8.
    pub path: String,
    pub size: u64,
    pub bytes_read: u64,
    pub reads: u64,
    pub first_read_ms: f64,
}

impl Default for ReadTrace {
    fn default() -> Self {
        Self { started: Instant::now(), files: Mutex::new(HashMap::new()), tree: OnceLock::new() }
    }
}

impl std::fmt::Debug for ReadTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTrace").field("files", &self.files.lock().len()).finish()
    }
}

impl ReadTrace {
    /// Records a read of `len` bytes at `offset` of lower file `ino`, cut
    /// to the file's `size`.
    pub fn record(&self, ino: Ino, size: u64, offset: u64, len: u32) {
        let end = offset.saturating_add(u64::from(len)).min(size);
        let mut files = self.files.lock();
        let file = files.entry(ino).or_insert_with(|| FileReads {
            first_read: self.started.elapsed(),
            reads: 0,
            ranges: BTreeMap::new(),
        });
        file.reads += 1;
        if offset < end {
            insert_range(&mut file.ranges, offset, end);
        }
    }

    pub(crate) fn attach(&self, tree: Arc<LowerTree>) {
        let _ = self.tree.set(tree);
    }

    /// The chunks the reads touched: files in the order first read (those
    /// first read within `window` of the mount's start), each file's chunks
    /// in offset order, each chunk once. A startup profile.
    pub fn chunks_in_read_order(&self, window: Duration) -> Vec<ChunkId> {
        let Some(tree) = self.tree.get() else { return Vec::new() };
        let files = self.files.lock();
        let mut seen = HashSet::new();
        let mut chunks = Vec::new();
        for (ino, reads) in in_read_order(&files) {
            if reads.first_read > window {
                break;
            }
            chunks.extend(touched(tree, *ino, reads).filter(|span| seen.insert(span.id)).map(|span| span.id));
        }
        chunks
    }

    /// The trace so far (empty before a mount used it).
    pub fn report(&self) -> TraceReport {
        let empty = LowerTree::default();
        let tree = self.tree.get().map_or(&empty, |t| &**t);
        let files = self.files.lock();
        let order = in_read_order(&files);
        let mut chunks = HashSet::new();
        let mut chunk_bytes_touched = 0;
        let mut report = TraceReport {
            bytes_read: 0,
            chunk_bytes_touched: 0,
            chunks_touched: 0,
            files_read: order.len() as u64,
            reads: 0,
            files: Vec::with_capacity(order.len()),
        };
        for (ino, reads) in order {
            let bytes_read: u64 = reads.ranges.iter().map(|(s, e)| e - s).sum();
            let size = tree.get(*ino).map_or(0, |inode| inode.size);
            for span in touched(tree, *ino, reads) {
                if chunks.insert(span.id) {
                    chunk_bytes_touched += u64::from(span.len);
                }
            }
            report.bytes_read += bytes_read;
            report.reads += reads.reads;
            report.files.push(FileReport {
                path: String::from_utf8_lossy(&tree.path_of(*ino)).into_owned(),
                size,
                bytes_read,
                reads: reads.reads,
                first_read_ms: reads.first_read.as_secs_f64() * 1e3,
            });
        }
        report.chunk_bytes_touched = chunk_bytes_touched;
        report.chunks_touched = chunks.len() as u64;
        report
    }
}

/// The chunks of file `ino` that its reads overlap, in offset order.
fn touched<'a>(
    tree: &'a LowerTree,
    ino: Ino,
    reads: &'a FileReads,
) -> impl Iterator<Item = &'a ChunkSpan> + 'a {
    let spans = tree.get(ino).map_or(&[][..], |inode| &inode.chunks[..]);
    spans.iter().filter(|span| overlaps(&reads.ranges, span.offset, span.offset + u64::from(span.len)))
}

/// Files by the time they were first read.
fn in_read_order(files: &HashMap<Ino, FileReads>) -> Vec<(&Ino, &FileReads)> {
    let mut order: Vec<(&Ino, &FileReads)> = files.iter().collect();
    order.sort_by_key(|(ino, f)| (f.first_read, **ino));
    order
}

/// Adds [start, end) to disjoint ranges, merging what it overlaps or touches.
fn insert_range(ranges: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    // A range starting before `start` that reaches it absorbs the new one.
    if let Some((&s, &e)) = ranges.range(..=start).next_back() {
        if e >= start {
            start = s;
            end = end.max(e);
            ranges.remove(&s);
        }
    }
    let absorbed: Vec<(u64, u64)> = ranges.range(start..=end).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in absorbed {
        end = end.max(e);
        ranges.remove(&s);
    }
    ranges.insert(start, end);
}

/// Whether any range meets [start, end).
fn overlaps(ranges: &BTreeMap<u64, u64>, start: u64, end: u64) -> bool {
    ranges.range(..end).next_back().is_some_and(|(_, &e)| e > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        let mut r = BTreeMap::new();
        for &(s, e) in list {
            insert_range(&mut r, s, e);
        }
        r
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let r = ranges(&[(10, 20), (30, 40), (20, 25), (5, 12), (39, 50)]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![(5, 25), (30, 50)]);
        let r = ranges(&[(0, 10), (20, 30), (40, 50), (5, 45)]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![(0, 50)]);
        let r = ranges(&[(0, 10), (2, 3)]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![(0, 10)]);
    }

    #[test]
    fn overlap_is_half_open() {
        let r = ranges(&[(10, 20)]);
        assert!(overlaps(&r, 0, 11));
        assert!(overlaps(&r, 19, 30));
        assert!(!overlaps(&r, 0, 10));
        assert!(!overlaps(&r, 20, 30));
    }

    #[test]
    fn reads_are_cut_to_the_file_and_counted_once() {
        let trace = ReadTrace::default();
        trace.record(Ino(2), 100, 0, 64);
        trace.record(Ino(2), 100, 32, 128);
        trace.record(Ino(2), 100, 100, 4096);
        let files = trace.files.lock();
        let file = &files[&Ino(2)];
        assert_eq!(file.reads, 3);
        assert_eq!(file.ranges.iter().map(|(s, e)| e - s).sum::<u64>(), 100);
    }
}
