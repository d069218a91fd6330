use std::io::{self, Read, Write};

use strata_proto::v1::Entry;
use strata_types::ChunkId;
use tar::{EntryType, Header};

use crate::path::{join, split_parent};
use crate::pax::{format_pax_time, XATTR_PREFIX};
use crate::{display_path, EntryKind, LayerError, LayerIndex, INDEX_VERSION};

/// Where [`write_layer`] gets file content from.
pub trait ChunkSource {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The verified bytes of a chunk.
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, Self::Error>;
}

/// Largest size, uid/gid and mtime a ustar header holds in octal.
const USTAR_SIZE_MAX: u64 = 0o77777777777;
const USTAR_ID_MAX: u32 = 0o7777777;
const NAME_FIELD: usize = 100;

/// Writes the layer as a tar that [`crate::read_layer`] reads back to the same
/// index. Members come in index order (parents first, each hardlink group's
/// file before its links); what ustar cannot hold goes in PAX records.
pub fn write_layer<W: Write, S: ChunkSource>(
    index: &LayerIndex,
    source: &mut S,
    out: W,
) -> Result<W, LayerError> {
    if index.version != INDEX_VERSION {
        return Err(LayerError::Index(format!("unknown index version {}", index.version)));
    }
    let mut tar = LayerTarWriter::new(out);
    let mut opaque = index.opaque_dirs.iter().peekable();
    for entry in &index.entries {
        // Opaque markers sort with the dirs' children: emit each before the
        // first entry that sorts after it.
        while let Some(dir) = opaque.peek() {
            let marker = join(dir, b".wh..wh..opq");
            if marker.as_slice() > entry.path.as_slice() {
                break;
            }
            tar.append_opaque_marker(dir)?;
            opaque.next();
        }
        let content =
            FileReader { chunks: &entry.chunks, next: 0, buf: Vec::new(), pos: 0, source: &mut *source };
        tar.append(entry, content)?;
    }
    for dir in opaque {
        tar.append_opaque_marker(dir)?;
    }
    tar.finish()
}

/// Writes layer tar members one at a time, each as [`write_layer`] would:
/// whiteouts as `.wh.` members, PAX records for what ustar cannot hold.
pub struct LayerTarWriter<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> LayerTarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { builder: tar::Builder::new(out) }
    }

    /// Appends `entry`; a regular file's `size` bytes are read from `content`.
    pub fn append(&mut self, entry: &Entry, content: impl Read) -> Result<(), LayerError> {
        append_entry(&mut self.builder, entry, content)
    }

    /// Marks directory `dir` opaque (`dir/.wh..wh..opq`).
    pub fn append_opaque_marker(&mut self, dir: &[u8]) -> Result<(), LayerError> {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_mtime(0);
        append(&mut self.builder, header, &join(dir, b".wh..wh..opq"), None, &[], io::empty())
    }

    /// Writes the end-of-archive marker and returns the output.
    pub fn finish(self) -> Result<W, LayerError> {
        self.builder.into_inner().map_err(LayerError::Write)
    }
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    entry: &Entry,
    content: impl Read,
) -> Result<(), LayerError> {
    let bad = |why: &str| LayerError::Index(format!("entry {:?}: {why}", display_path(&entry.path)));
    let kind = EntryKind::try_from(entry.kind).map_err(|_| bad("unknown kind"))?;
    let mut header = Header::new_ustar();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    header.set_mode(entry.mode & 0o7777);
    set_id(&mut header, &mut pax, "uid", entry.uid);
    set_id(&mut header, &mut pax, "gid", entry.gid);
    let secs = entry.mtime_ns.div_euclid(1_000_000_000);
    if entry.mtime_ns % 1_000_000_000 != 0 || !(0..=USTAR_SIZE_MAX as i64).contains(&secs) {
        pax.push(("mtime".into(), format_pax_time(entry.mtime_ns).into_bytes()));
    }
    header.set_mtime(secs.clamp(0, USTAR_SIZE_MAX as i64) as u64);
    for x in &entry.xattrs {
        let name =
            std::str::from_utf8(&x.name).map_err(|_| bad("xattr name is not UTF-8, PAX cannot carry it"))?;
        pax.push((format!("{XATTR_PREFIX}{name}"), x.value.clone()));
    }
    header.set_size(0);

    let path = if kind == EntryKind::Whiteout {
        let (parent, name) = split_parent(&entry.path);
        join(parent, &[b".wh.", name].concat())
    } else if entry.path.is_empty() {
        b"./".to_vec()
    } else if kind == EntryKind::Dir {
        [&entry.path[..], b"/"].concat()
    } else {
        entry.path.clone()
    };
    let mut link: Option<&[u8]> = None;
    match kind {
        EntryKind::File => {
            header.set_entry_type(EntryType::Regular);
            if entry.size > USTAR_SIZE_MAX {
                pax.push(("size".into(), entry.size.to_string().into_bytes()));
            }
            header.set_size(entry.size);
            if !entry.chunks.is_empty() {
                let total: u64 = entry.chunks.iter().map(|c| u64::from(c.length)).sum();
                if total != entry.size {
                    return Err(bad("chunk lengths do not add up to the file size"));
                }
            }
            return append(builder, header, &path, None, &pax, Exact { inner: content, left: entry.size });
        }
        EntryKind::Dir => header.set_entry_type(EntryType::Directory),
        EntryKind::Symlink => {
            header.set_entry_type(EntryType::Symlink);
            link = Some(&entry.link_target);
        }
        EntryKind::Hardlink => {
            header.set_entry_type(EntryType::Link);
            link = Some(&entry.link_target);
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            header.set_entry_type(if kind == EntryKind::CharDevice {
                EntryType::Char
            } else {
                EntryType::Block
            });
            header.set_device_major(entry.dev_major).map_err(LayerError::Write)?;
            header.set_device_minor(entry.dev_minor).map_err(LayerError::Write)?;
        }
        EntryKind::Fifo => header.set_entry_type(EntryType::Fifo),
        EntryKind::Whiteout => {
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o644);
        }
        EntryKind::Unspecified => return Err(bad("unknown kind")),
    }
    append(builder, header, &path, link, &pax, io::empty())
}

fn set_id(header: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, key: &str, id: u32) {
    if id > USTAR_ID_MAX {
        pax.push((key.into(), id.to_string().into_bytes()));
    }
    let id = u64::from(id.min(USTAR_ID_MAX));
    if key == "uid" {
        header.set_uid(id);
    } else {
        header.set_gid(id);
    }
}

/// Appends one member: names that fit go byte-exact into the ustar fields,
/// longer ones into PAX `path`/`linkpath` records.
fn append<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    mut header: Header,
    path: &[u8],
    link: Option<&[u8]>,
    pax: &[(String, Vec<u8>)],
    data: R,
) -> Result<(), LayerError> {
    let mut records: Vec<(&str, &[u8])> = pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    let fields = header.as_old_mut();
    fields.name = [0; NAME_FIELD];
    if path.len() <= NAME_FIELD {
        fields.name[..path.len()].copy_from_slice(path);
    } else {
        records.push(("path", path));
    }
    fields.linkname = [0; NAME_FIELD];
    if let Some(link) = link {
        if link.len() <= NAME_FIELD {
            fields.linkname[..link.len()].copy_from_slice(link);
        } else {
            records.push(("linkpath", link));
        }
    }
    if !records.is_empty() {
        builder.append_pax_extensions(records).map_err(LayerError::Write)?;
    }
    header.set_cksum();
    builder.append(&header, data).map_err(|e| {
        match e.get_ref().and_then(|i| i.downcast_ref::<SourceFailed>()) {
            Some(failed) => LayerError::Index(format!("{:?}: {}", display_path(path), failed.0)),
            None => LayerError::Write(e),
        }
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SourceFailed(String);

/// Streams a file's content chunk by chunk.
struct FileReader<'a, S> {
    chunks: &'a [strata_proto::v1::ChunkRef],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    source: &'a mut S,
}

impl<S: ChunkSource> Read for FileReader<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(chunk) = self.chunks.get(self.next) else { return Ok(0) };
            self.next += 1;
            let fail = |why: String| io::Error::other(SourceFailed(why));
            let id = ChunkId::from_slice(&chunk.id).map_err(|e| fail(format!("chunk id: {e}")))?;
            self.buf = self.source.chunk(&id).map_err(|e| fail(e.to_string()))?;
            if self.buf.len() != chunk.length as usize {
                return Err(fail(format!(
                    "chunk {id} is {} bytes, index says {}",
                    self.buf.len(),
                    chunk.length
                )));
            }
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Exactly `left` bytes of `inner`: fewer is an error, not a short member.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = out.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::other(SourceFailed(format!("content ended {} bytes short", self.left))));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
