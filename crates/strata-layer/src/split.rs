//! Tar-split: what an uncompressed layer tar holds beyond its index, so the
//! very same tar (and so the same diff_id, config and image ID) can be
//! written again. The rule is containers/storage's tar-split: every byte
//! that is not a regular file's contents is kept as it was read (headers,
//! PAX and GNU records, padding, end-of-archive blocks, trailing bytes);
//! contents are kept as the chunks the store already holds.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::rc::Rc;

use prost::Message;
use strata_chunk::Chunker;
use strata_proto::v1::{ChunkRef, LayerIndex, TarSplit, TarSplitFile, TarSplitRef};
use strata_types::ChunkId;

use crate::{ChunkSink, ChunkSource, LayerError};

/// The version of the split format this crate writes and reads.
pub const SPLIT_VERSION: u32 = 1;

/// A split whose raw bytes compress beyond this is dropped (the layer is
/// still imported; its export is the canonical tar).
pub const MAX_SPLIT_RAW_ZSTD: usize = 64 << 20;
/// A split whose raw bytes are more than this (4 GiB: headers of millions
/// of members, or bytes after the end) is dropped, and one that says so
/// is refused when read back: a split from a peer cannot make an export
/// write more than this of its own before the tar's hash is checked.
pub const MAX_SPLIT_RAW_LEN: u64 = 4 << 30;
/// A split of more non-empty regular files than this (2 Mi) is dropped:
/// with the bounds above, what a hostile tar can make a split hold in
/// memory (about 120 bytes a file) stays in the hundreds of MiB.
pub const MAX_SPLIT_FILES: usize = 1 << 21;
/// The longest encoded split read back (its chunks' lengths added up).
pub const MAX_SPLIT_ENCODED: u64 = 512 << 20;

/// The zstd level of the raw bytes: headers compress well at any level.
const RAW_LEVEL: i32 = 3;

/// Records the raw bytes of a tar stream while `tar` reads it, leaving out
/// the contents of regular files announced with [`Recorder::begin_file`].
pub(crate) struct Recorder {
    /// Bytes of the stream seen so far.
    pos: u64,
    /// The stream range of the contents being read: not recorded.
    skip: Option<(u64, u64)>,
    raw: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    raw_len: u64,
    since_file: u64,
    files: Vec<TarSplitFile>,
    /// Why no split is kept, once something went wrong.
    dropped: Option<String>,
}

impl Recorder {
    pub(crate) fn new() -> Rc<RefCell<Self>> {
        let (raw, dropped) = match zstd::stream::write::Encoder::new(Vec::new(), RAW_LEVEL) {
            Ok(enc) => (Some(enc), None),
            Err(e) => (None, Some(format!("zstd: {e}"))),
        };
        Rc::new(RefCell::new(Self {
            pos: 0,
            skip: None,
            raw,
            raw_len: 0,
            since_file: 0,
            files: Vec::new(),
            dropped,
        }))
    }

    fn drop_split(&mut self, why: String) {
        if self.dropped.is_none() {
            self.dropped = Some(why);
        }
        self.raw = None;
        self.files = Vec::new();
    }

    fn record(&mut self, bytes: &[u8]) {
        self.raw_len += bytes.len() as u64;
        self.since_file += bytes.len() as u64;
        if let Some(raw) = self.raw.as_mut() {
            if let Err(e) = raw.write_all(bytes) {
                self.drop_split(format!("zstd: {e}"));
            } else if raw.get_ref().len() > MAX_SPLIT_RAW_ZSTD {
                self.drop_split(format!(
                    "the bytes outside file contents compress to more than {MAX_SPLIT_RAW_ZSTD} bytes"
                ));
            } else if self.raw_len > MAX_SPLIT_RAW_LEN {
                self.drop_split(format!("more than {MAX_SPLIT_RAW_LEN} bytes outside file contents"));
            }
        }
    }

    /// Takes bytes as they leave the underlying stream.
    fn take(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.skip {
                Some((start, end)) if start == end => self.skip = None,
                Some((start, end)) if self.pos >= start => {
                    let n = (end - self.pos).min(bytes.len() as u64) as usize;
                    self.pos += n as u64;
                    bytes = &bytes[n..];
                    if self.pos == end {
                        self.skip = None;
                    }
                }
                Some((start, _)) => {
                    let n = (start - self.pos).min(bytes.len() as u64) as usize;
                    self.record(&bytes[..n]);
                    self.pos += n as u64;
                    bytes = &bytes[n..];
                }
                None => {
                    self.record(bytes);
                    self.pos += bytes.len() as u64;
                    bytes = &[];
                }
            }
        }
    }

    /// A regular file's `size` content bytes start at stream offset `at`
    /// (`tar::Entry::raw_file_position`) and are about to be read.
    pub(crate) fn begin_file(&mut self, at: u64, size: u64) {
        if self.dropped.is_some() {
            return;
        }
        if at != self.pos || self.skip.is_some() {
            // The reader ran ahead of the entry: never expected of `tar`,
            // but then the split could not be trusted.
            self.drop_split(format!("file contents at {at}, stream at {}", self.pos));
            return;
        }
        self.skip = Some((at, at + size));
        if self.files.len() == MAX_SPLIT_FILES {
            self.drop_split(format!("more than {MAX_SPLIT_FILES} files"));
            return;
        }
        self.files.push(TarSplitFile { raw_before: self.since_file, chunks: Vec::new() });
        self.since_file = 0;
    }

    /// The chunks of the file last begun, once it has been read whole.
    pub(crate) fn end_file(&mut self, chunks: &[ChunkRef]) {
        if self.dropped.is_some() {
            return;
        }
        if self.skip.is_some() {
            self.drop_split("file contents not read to their end".into());
            return;
        }
        if let Some(file) = self.files.last_mut() {
            file.chunks = chunks.to_vec();
        }
    }

    /// The split, or why there is none.
    pub(crate) fn finish(&mut self) -> Result<TarSplit, String> {
        if let Some(why) = self.dropped.take() {
            return Err(why);
        }
        let raw = self.raw.take().ok_or("recorder finished twice")?;
        let raw_zstd = raw.finish().map_err(|e| format!("zstd: {e}"))?;
        Ok(TarSplit {
            version: SPLIT_VERSION,
            raw_zstd,
            raw_len: self.raw_len,
            files: std::mem::take(&mut self.files),
        })
    }
}

/// A reader that shows each byte it passes to the recorder.
pub(crate) struct Recording<R> {
    pub(crate) inner: R,
    pub(crate) recorder: Rc<RefCell<Recorder>>,
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.recorder.borrow_mut().take(&buf[..n]);
        Ok(n)
    }
}

/// The chunks `split` names that `index` does not: contents the tar holds
/// that the file tree does not show (members replaced by later ones of the
/// same path, AUFS link stores). Each once, in first-use order.
pub fn chunks_outside_index(split: &TarSplit, index: &LayerIndex) -> Vec<ChunkRef> {
    let listed: HashSet<&[u8]> =
        index.entries.iter().flat_map(|e| e.chunks.iter().map(|c| c.id.as_slice())).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for chunk in split.files.iter().flat_map(|f| &f.chunks) {
        if !listed.contains(chunk.id.as_slice()) && seen.insert(chunk.id.as_slice()) {
            out.push(ChunkRef { id: chunk.id.clone(), offset: 0, length: chunk.length });
        }
    }
    out
}

/// Writes the tar `split` describes, contents from `source`. Returns the
/// bytes written. Errors: an unknown split version, raw bytes that do not
/// decompress to `raw_len` or run out before the files, a chunk whose
/// length is not the one recorded. The caller checks the result against
/// the diff_id the split was stored under (sha256 of the output).
pub fn write_split<W: Write, S: ChunkSource>(
    split: &TarSplit,
    source: &mut S,
    mut out: W,
) -> Result<u64, LayerError> {
    if split.version != SPLIT_VERSION {
        return Err(LayerError::Split(format!("unknown tar-split version {}", split.version)));
    }
    if split.raw_len > MAX_SPLIT_RAW_LEN {
        return Err(LayerError::Split(format!("{} raw bytes, more than {MAX_SPLIT_RAW_LEN}", split.raw_len)));
    }
    let bad = LayerError::Split;
    let decoder = zstd::stream::read::Decoder::new(split.raw_zstd.as_slice())
        .map_err(|e| bad(format!("raw bytes: {e}")))?;
    let mut raw = RawBytes { decoder, left: split.raw_len, buf: vec![0; 64 << 10] };
    let mut written = 0u64;
    for file in &split.files {
        written += raw.copy(file.raw_before, &mut out)?;
        for chunk in &file.chunks {
            let id = ChunkId::from_slice(&chunk.id).map_err(|e| bad(format!("chunk id: {e}")))?;
            let data =
                source.chunk(&id).map_err(|e| LayerError::Source { chunk: id, source: Box::new(e) })?;
            if data.len() != chunk.length as usize {
                return Err(bad(format!(
                    "chunk {id} is {} bytes, the split says {}",
                    data.len(),
                    chunk.length
                )));
            }
            out.write_all(&data).map_err(LayerError::Write)?;
            written += data.len() as u64;
        }
    }
    written += raw.copy(raw.left, &mut out)?;
    let mut more = [0u8; 1];
    if raw.decoder.read(&mut more).map_err(|e| bad(format!("raw bytes: {e}")))? != 0 {
        return Err(bad(format!("raw bytes run past the {} recorded", split.raw_len)));
    }
    out.flush().map_err(LayerError::Write)?;
    Ok(written)
}

/// The split's raw bytes as they decompress, with how many are still due.
struct RawBytes<'a> {
    decoder: zstd::stream::read::Decoder<'static, io::BufReader<&'a [u8]>>,
    left: u64,
    buf: Vec<u8>,
}

impl RawBytes<'_> {
    fn copy(&mut self, n: u64, out: &mut impl Write) -> Result<u64, LayerError> {
        if n > self.left {
            return Err(LayerError::Split(format!("{n} raw bytes asked for, {} left", self.left)));
        }
        let mut due = n;
        while due > 0 {
            let want = due.min(self.buf.len() as u64) as usize;
            let got = match self.decoder.read(&mut self.buf[..want]) {
                Ok(0) => return Err(LayerError::Split(format!("raw bytes end {due} bytes early"))),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerError::Split(format!("raw bytes: {e}"))),
            };
            out.write_all(&self.buf[..got]).map_err(LayerError::Write)?;
            due -= got as u64;
        }
        self.left -= n;
        Ok(n)
    }
}

/// Keeps `split` in the chunk store: its encoding is cut by `chunker` and
/// handed to `sink` like file contents. Returns the record entry that finds
/// it again, under `diff_id` (sha256 of the tar it rebuilds).
pub fn put_split<S: ChunkSink>(
    split: &TarSplit,
    index: &LayerIndex,
    diff_id: String,
    chunker: &mut Chunker,
    sink: &mut S,
) -> Result<TarSplitRef, LayerError> {
    let bytes = split.encode_to_vec();
    let mut blob = Vec::new();
    let mut offset = 0u64;
    let sink_err = |e: S::Error| PutError::Sink(Box::new(e));
    chunker
        .split::<_, PutError, _>(bytes.as_slice(), |data| {
            let id = ChunkId::of(data);
            sink.put(id, data).map_err(sink_err)?;
            blob.push(ChunkRef { id: id.as_bytes().to_vec(), offset, length: data.len() as u32 });
            offset += data.len() as u64;
            Ok(())
        })
        .map_err(|e| match e {
            PutError::Sink(source) => LayerError::Sink { member: "(tar-split)".into(), source },
            PutError::Io(e) => LayerError::Split(e.to_string()),
        })?;
    Ok(TarSplitRef { diff_id, blob, extra_chunks: chunks_outside_index(split, index) })
}

enum PutError {
    Sink(Box<dyn std::error::Error + Send + Sync>),
    Io(io::Error),
}

impl From<io::Error> for PutError {
    fn from(e: io::Error) -> Self {
        PutError::Io(e)
    }
}

/// Reads a split back from the chunks `split_ref` lists. Errors: a chunk
/// the source cannot give, a length other than the one recorded, bytes that
/// do not decode as a TarSplit.
pub fn load_split<S: ChunkSource>(split_ref: &TarSplitRef, source: &mut S) -> Result<TarSplit, LayerError> {
    let total: u64 = split_ref.blob.iter().map(|c| u64::from(c.length)).sum();
    if total > MAX_SPLIT_ENCODED {
        return Err(LayerError::Split(format!("{total} bytes, more than {MAX_SPLIT_ENCODED}")));
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for chunk in &split_ref.blob {
        let id = ChunkId::from_slice(&chunk.id).map_err(|e| LayerError::Split(format!("chunk id: {e}")))?;
        let data = source.chunk(&id).map_err(|e| LayerError::Source { chunk: id, source: Box::new(e) })?;
        if data.len() != chunk.length as usize {
            return Err(LayerError::Split(format!(
                "chunk {id} is {} bytes, the record says {}",
                data.len(),
                chunk.length
            )));
        }
        bytes.extend_from_slice(&data);
    }
    TarSplit::decode(bytes.as_slice()).map_err(|e| LayerError::Split(format!("decoding: {e}")))
}
