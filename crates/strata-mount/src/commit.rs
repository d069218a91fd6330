//! A writable layer as an OCI layer tar: what `strata commit` stores.
//!
//! The upper directory is walked in name order, parents first. Whiteouts
//! become `.wh.NAME` members, opaque directories `.wh..wh..opq` markers, and
//! a copied-up file's content is its merged bytes (upper blocks, lower chunks
//! elsewhere), so the layer stands on its own.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use strata_layer::{Entry, EntryKind, LayerError, LayerTarWriter, Xattr};

use crate::cow::{read_merged, MergedReadError};
use crate::lower::LowerTree;
use crate::nodes::join;
use crate::reader::ChunkReader;
use crate::{sys, upper};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: io::Error },
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// Writes the changes in `upper_root` (a writable layer's `root/`) as a layer tar.
pub fn write_upper_layer<W: Write>(
    upper_root: &Path,
    tree: &LowerTree,
    reader: &Arc<ChunkReader>,
    out: W,
) -> Result<W, CommitError> {
    let mut walk = Walk { tree, reader, tar: LayerTarWriter::new(out), links: HashMap::new() };
    if upper::is_opaque(upper_root).map_err(io_at(upper_root))? {
        walk.tar.append_opaque_marker(b"")?;
    }
    walk.dir(upper_root, b"")?;
    Ok(walk.tar.finish()?)
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> CommitError + '_ {
    move |source| CommitError::Io { path: path.to_owned(), source }
}

struct Walk<'a, W: Write> {
    tree: &'a LowerTree,
    reader: &'a Arc<ChunkReader>,
    tar: LayerTarWriter<W>,
    /// First path of each upper file with several links, by (device, inode).
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walk<'_, W> {
    fn dir(&mut self, dir: &Path, rel: &[u8]) -> Result<(), CommitError> {
        let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            let child = join(rel, &name);
            self.entry(&path, child)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: Vec<u8>) -> Result<(), CommitError> {
        let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
        if upper::is_whiteout(&meta) {
            let entry = Entry { path: rel, kind: EntryKind::Whiteout as i32, ..Default::default() };
            return Ok(self.tar.append(&entry, io::empty())?);
        }
        let file_type = meta.file_type();
        let mut entry = Entry {
            path: rel.clone(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            xattrs: self.xattrs(path)?,
            ..Default::default()
        };
        if file_type.is_dir() {
            entry.kind = EntryKind::Dir as i32;
            self.tar.append(&entry, io::empty())?;
            if upper::is_opaque(path).map_err(io_at(path))? {
                self.tar.append_opaque_marker(&rel)?;
            }
            return self.dir(path, &rel);
        }
        if file_type.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    let link = Entry {
                        path: rel,
                        kind: EntryKind::Hardlink as i32,
                        link_target: first.clone(),
                        ..Default::default()
                    };
                    return Ok(self.tar.append(&link, io::empty())?);
                }
                self.links.insert((meta.dev(), meta.ino()), rel);
            }
            entry.kind = EntryKind::File as i32;
            entry.size = meta.len();
            let file = File::open(path).map_err(io_at(path))?;
            let origin = upper::origin(path).map_err(io_at(path))?;
            let lower = origin
                .as_ref()
                .and_then(|o| self.tree.lookup_path(&o.lower_path))
                .and_then(|l| self.tree.get(l));
            let content = MergedFile {
                file: &file,
                lower: lower.zip(origin.map(|o| o.lower_size)),
                reader: self.reader,
                pos: 0,
            };
            return Ok(self.tar.append(&entry, content)?);
        }
        if file_type.is_symlink() {
            entry.kind = EntryKind::Symlink as i32;
            entry.link_target = fs::read_link(path).map_err(io_at(path))?.as_os_str().as_bytes().to_vec();
        } else if file_type.is_char_device() || file_type.is_block_device() {
            entry.kind =
                if file_type.is_char_device() { EntryKind::CharDevice } else { EntryKind::BlockDevice }
                    as i32;
            entry.dev_major = libc::major(meta.rdev());
            entry.dev_minor = libc::minor(meta.rdev());
        } else if file_type.is_fifo() {
            entry.kind = EntryKind::Fifo as i32;
        } else {
            tracing::warn!(path = %path.display(), "sockets cannot go in a layer; left out");
            return Ok(());
        }
        Ok(self.tar.append(&entry, io::empty())?)
    }

    fn xattrs(&self, path: &Path) -> Result<Vec<Xattr>, CommitError> {
        let mut out = Vec::new();
        for name in sys::list_xattrs(path).map_err(io_at(path))? {
            if upper::is_private_xattr(&name) {
                continue;
            }
            if let Some(value) = sys::get_xattr(path, &name).map_err(io_at(path))? {
                out.push(Xattr { name, value });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A file's bytes as the mount shows them.
struct MergedFile<'a> {
    file: &'a File,
    lower: Option<(&'a crate::lower::Inode, u64)>,
    reader: &'a Arc<ChunkReader>,
    pos: u64,
}

impl Read for MergedFile<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let len = out.len().min(1 << 20) as u32;
        let bytes = match self.lower {
            Some((lower, lower_size)) => {
                read_merged(self.file, lower, lower_size, self.reader, self.pos, len).map_err(
                    |e| match e {
                        MergedReadError::Io(e) => e,
                        MergedReadError::Source(e) => io::Error::other(e),
                    },
                )?
            }
            None => crate::cow::read_plain(self.file, self.pos, len)?,
        };
        out[..bytes.len()].copy_from_slice(&bytes);
        self.pos += bytes.len() as u64;
        Ok(bytes.len())
    }
}
