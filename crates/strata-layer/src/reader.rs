use std::cell::RefCell;
use std::io::{self, Read};

use strata_chunk::Chunker;
use strata_proto::v1::{ChunkRef, Entry, TarSplit, Xattr};
use strata_types::ChunkId;
use tar::EntryType;

use crate::path::{join, split_parent};
use crate::split::{Recorder, Recording};
use crate::tree::Tree;
use crate::{
    display_path, normalize_member_path, pax, EntryKind, EntryProblem, LayerError, LayerIndex, MAX_PATH_LEN,
};

/// Where [`read_layer`] sends the chunks of regular files, in file order.
pub trait ChunkSink {
    type Error: std::error::Error + Send + Sync + 'static;
    fn put(&mut self, id: ChunkId, data: &[u8]) -> Result<(), Self::Error>;
}

/// Totals of one layer, for its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSummary {
    pub entries: u64,
    /// Regular-file bytes, each hardlinked file once.
    pub content_bytes: u64,
    pub chunk_refs: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What [`read_layer`] made of one tar.
#[derive(Debug)]
pub struct LayerRead {
    /// The canonical index.
    pub index: LayerIndex,
    pub summary: LayerSummary,
    /// How to write this very tar again ([`crate::write_split`]), or why it
    /// could not be kept (see [`crate::MAX_SPLIT_RAW_ZSTD`]).
    pub split: Result<TarSplit, String>,
}

/// Reads an uncompressed layer tar to its end (the caller may be hashing the
/// stream) and returns its canonical index and its tar-split.
pub fn read_layer<R: Read, S: ChunkSink>(
    reader: R,
    chunker: &mut Chunker,
    sink: &mut S,
) -> Result<LayerRead, LayerError> {
    let recorder = Recorder::new();
    let recording = Recording { inner: reader, recorder: recorder.clone() };
    let mut archive = tar::Archive::new(TailReader::new(recording));
    let mut tree = Tree::default();
    let mut last = String::from("(start of archive)");
    {
        let entries =
            archive.entries().map_err(|source| LayerError::Stream { after: last.clone(), source })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| LayerError::Stream { after: last.clone(), source })?;
            let raw_path = entry.path_bytes().into_owned();
            let member = String::from_utf8_lossy(&raw_path).into_owned();
            add_member(&mut tree, &mut entry, &raw_path, chunker, sink, &recorder)
                .map_err(|e| e.at(&member))?;
            last = member;
        }
    }
    let mut tail = archive.into_inner();
    if !tail.last_block_was_zero() {
        return Err(LayerError::Truncated { after: last });
    }
    io::copy(&mut tail, &mut io::sink()).map_err(|source| LayerError::Stream { after: last, source })?;

    let index = tree
        .finish()
        .map_err(|(path, problem)| LayerError::Entry { member: display_path(&path), problem })?;
    let mut summary = LayerSummary { entries: index.entries.len() as u64, ..Default::default() };
    for e in &index.entries {
        if e.kind == EntryKind::File as i32 {
            summary.content_bytes += e.size;
            summary.chunk_refs += e.chunks.len() as u64;
        }
    }
    let split = recorder.borrow_mut().finish();
    Ok(LayerRead { index, summary, split })
}

/// An error about the current member, before we know its display name.
enum MemberError {
    Problem(EntryProblem),
    Sink(Box<dyn std::error::Error + Send + Sync>),
}

impl MemberError {
    fn at(self, member: &str) -> LayerError {
        match self {
            MemberError::Problem(problem) => LayerError::Entry { member: member.to_owned(), problem },
            MemberError::Sink(source) => LayerError::Sink { member: member.to_owned(), source },
        }
    }
}

impl From<EntryProblem> for MemberError {
    fn from(p: EntryProblem) -> Self {
        MemberError::Problem(p)
    }
}

impl From<io::Error> for MemberError {
    fn from(e: io::Error) -> Self {
        MemberError::Problem(EntryProblem::Read(e))
    }
}

fn field(field: &'static str) -> impl Fn(io::Error) -> EntryProblem {
    move |e| EntryProblem::Field { field, reason: e.to_string() }
}

fn add_member<R: Read, S: ChunkSink>(
    tree: &mut Tree,
    entry: &mut tar::Entry<'_, R>,
    raw_path: &[u8],
    chunker: &mut Chunker,
    sink: &mut S,
    recorder: &RefCell<Recorder>,
) -> Result<(), MemberError> {
    let entry_type = entry.header().entry_type();
    if matches!(entry_type, EntryType::XGlobalHeader) {
        return Ok(());
    }
    let path = normalize_member_path(raw_path)?;
    let (parent, name) = split_parent(&path);
    // AUFS bookkeeping (`.wh..wh.plnk/`, `.wh..wh.aufs`, `.wh..wh.orph/`)
    // is not content: never in the rootfs; files under `.wh..wh.plnk/` are
    // kept aside, as hardlinks may name them (docker's aufs driver wrote
    // layers that way).
    let aufs = is_aufs_path(&path);

    if !aufs {
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if name == OPAQUE_MARKER {
                tree.mark_opaque(parent.to_vec());
            } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(EntryProblem::BadWhiteout.into());
            } else {
                tree.whiteout(join(parent, hidden));
            }
            return Ok(());
        }
    }

    let kind = match entry_type {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::Hardlink,
        EntryType::Char => EntryKind::CharDevice,
        EntryType::Block => EntryKind::BlockDevice,
        EntryType::Fifo => EntryKind::Fifo,
        other => return Err(EntryProblem::UnsupportedType(other.as_byte()).into()),
    };
    if path.is_empty() && kind != EntryKind::Dir {
        return Err(EntryProblem::RootNotDir.into());
    }
    if aufs && kind != EntryKind::File {
        return Ok(());
    }

    if kind == EntryKind::Hardlink {
        let target = entry.link_name_bytes().unwrap_or_default();
        let target = normalize_member_path(&target).map_err(|p| EntryProblem::HardlinkPath(Box::new(p)))?;
        tree.insert_hardlink(path, &target)?;
        return Ok(());
    }

    let header = entry.header();
    let mode = header.mode().map_err(field("mode"))? & 0o7777;
    let uid = u32::try_from(header.uid().map_err(field("uid"))?)
        .map_err(|_| EntryProblem::Field { field: "uid", reason: "does not fit in 32 bits".into() })?;
    let gid = u32::try_from(header.gid().map_err(field("gid"))?)
        .map_err(|_| EntryProblem::Field { field: "gid", reason: "does not fit in 32 bits".into() })?;
    let header_mtime = header.mtime().map_err(field("mtime"))?;
    let (dev_major, dev_minor) = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => (
            header.device_major().map_err(field("devmajor"))?.unwrap_or(0),
            header.device_minor().map_err(field("devminor"))?.unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let link_target = match kind {
        EntryKind::Symlink => {
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            if target.is_empty() {
                return Err(EntryProblem::EmptySymlink.into());
            }
            if target.len() > MAX_PATH_LEN {
                return Err(EntryProblem::PathTooLong(target.len()).into());
            }
            target
        }
        _ => Vec::new(),
    };
    let extras = match entry.pax_extensions().map_err(field("pax"))? {
        Some(records) => pax::read_extras(records)?,
        None => pax::PaxExtras::default(),
    };
    let mtime_ns = match extras.mtime_ns {
        Some(ns) => ns,
        None => i64::try_from(header_mtime)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000_000))
            .ok_or_else(|| EntryProblem::Field { field: "mtime", reason: "out of range".into() })?,
    };
    let xattrs = extras.xattrs.into_iter().map(|(name, value)| Xattr { name, value }).collect();

    let mut node = Entry {
        path,
        kind: kind as i32,
        mode,
        uid,
        gid,
        mtime_ns,
        xattrs,
        link_target,
        dev_major,
        dev_minor,
        ..Default::default()
    };
    if kind == EntryKind::File {
        let declared = entry.size();
        // Contents read as they lie in the stream: the split keeps them as
        // chunks. A sparse file's stream is its map and data, kept raw.
        let in_split = declared > 0 && matches!(entry_type, EntryType::Regular | EntryType::Continuous);
        if in_split {
            recorder.borrow_mut().begin_file(entry.raw_file_position(), declared);
        }
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        let present = chunker.split::<_, MemberError, _>(&mut *entry, |data| {
            let id = ChunkId::of(data);
            sink.put(id, data).map_err(|e| MemberError::Sink(Box::new(e)))?;
            chunks.push(ChunkRef { id: id.as_bytes().to_vec(), offset, length: data.len() as u32 });
            offset += data.len() as u64;
            Ok(())
        })?;
        if present != declared {
            return Err(EntryProblem::Truncated { declared, present }.into());
        }
        if in_split {
            recorder.borrow_mut().end_file(&chunks);
        }
        node.size = present;
        node.chunks = chunks;
    }
    if aufs {
        tree.insert_aufs(node);
    } else {
        tree.insert(node);
    }
    Ok(())
}

/// Whether `path` lies in AUFS's own namespace: a component (other than a
/// final opaque marker) named `.wh..wh.*`.
fn is_aufs_path(path: &[u8]) -> bool {
    let (parent, name) = split_parent(path);
    let own = |c: &[u8]| c.starts_with(b".wh..wh.");
    (own(name) && name != OPAQUE_MARKER) || parent.split(|b| *b == b'/').any(own)
}

/// Passes bytes through and remembers whether the last 512-byte block read
/// was all zeros: a tar that ends without that end-of-archive marker was cut.
struct TailReader<R> {
    inner: R,
    tail: [u8; 512],
    filled: usize,
}

impl<R: Read> TailReader<R> {
    fn new(inner: R) -> Self {
        Self { inner, tail: [0; 512], filled: 0 }
    }

    fn last_block_was_zero(&self) -> bool {
        self.filled == self.tail.len() && self.tail.iter().all(|&b| b == 0)
    }
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        let len = self.tail.len();
        if n >= len {
            self.tail.copy_from_slice(&got[n - len..]);
        } else {
            self.tail.copy_within(n.., 0);
            self.tail[len - n..].copy_from_slice(got);
        }
        self.filled = (self.filled + n).min(len);
        Ok(n)
    }
}
