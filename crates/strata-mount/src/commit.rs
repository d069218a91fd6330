//! A writable layer as an OCI layer tar: what `strata commit` stores; and
//! a kernel overlayfs upper directory as one (a layer containerd applied
//! into a snapshot, ingested by the snapshotter).
//!
//! The upper directory is walked in name order, parents first. Whiteouts
//! become `.wh.NAME` members, opaque directories `.wh..wh..opq` markers, and
//! a copied-up file's content is its merged bytes (upper blocks, lower chunks
//! elsewhere), so the layer stands on its own.
//!
//! What `strata run` set up for the container and marked
//! ([`crate::upper::mark_init`]) is left out while unchanged, as `docker
//! commit` leaves out the init layer: an empty mountpoint directory, an
//! empty file made to bind `/etc/hosts` over, and a lower directory copied
//! up only to hold them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_layer::{Entry, EntryKind, LayerError, LayerTarWriter, Xattr};

use crate::cow::{read_merged, MergedReadError};
use crate::lower::{Kind, LowerTree};
use crate::nodes::join;
use crate::reader::ChunkReader;
use crate::sys;
use crate::upper::{self, At};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: io::Error },
    /// An overlayfs upper entry whose meaning lives in the lower layers
    /// (a `redirect_dir` rename, a `metacopy` copy-up): a layer tar cannot
    /// say it.
    #[error("{}: {what} cannot be written as a layer", path.display())]
    Unrepresentable { path: std::path::PathBuf, what: &'static str },
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// Writes the changes in `upper_root` (a writable layer's `root/`) as a layer tar.
/// The tree is walked by directory descriptors, so paths of any depth commit.
pub fn write_upper_layer<W: Write>(
    upper_root: &Path,
    tree: &LowerTree,
    reader: &Arc<ChunkReader>,
    out: W,
) -> Result<W, CommitError> {
    write_layer(upper_root, Some((tree, reader)), out)
}

/// Writes a kernel overlayfs upper directory as an OCI layer tar: how
/// containerd leaves a layer it applied into an overlay snapshot
/// (containerd's `archive.Apply` with `OverlayConvertWhiteout`).
/// Whiteouts (character devices 0/0) become `.wh.NAME` members,
/// directories with `trusted.overlay.opaque` = `y` get `.wh..wh..opq`
/// markers (kernel Documentation/filesystems/overlayfs.rst, "whiteouts and
/// opaque directories"; image-spec layer.md), and overlayfs' own
/// `trusted.overlay.*` xattrs are left out (and the host's
/// `security.selinux` labels). The upper's root is written as the layer's
/// `./` entry (overlayfs shows the upper root's attributes). Every other
/// entry is written
/// as it is: content, mode, owner, mtime, xattrs (file capabilities
/// included), device numbers, hardlinks as link members.
///
/// Errors: [`CommitError::Io`] naming the path that could not be read.
pub fn write_overlay_upper_layer<W: Write>(upper_root: &Path, out: W) -> Result<W, CommitError> {
    write_layer(upper_root, None, out)
}

/// The overlayfs xattr marking an opaque directory.
const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// The SELinux label a host gives files it creates.
const SELINUX_XATTR: &[u8] = b"security.selinux";
/// Set on a directory renamed with `redirect_dir=on`: its lower content
/// is elsewhere.
const OVERLAY_REDIRECT: &[u8] = b"trusted.overlay.redirect";
/// Set on a file copied up with `metacopy=on`: its data is still below.
const OVERLAY_METACOPY: &[u8] = b"trusted.overlay.metacopy";
/// Xattrs overlayfs keeps for itself (origin, redirect, impure, nlink, …).
const OVERLAY_PRIVATE_PREFIX: &[u8] = b"trusted.overlay.";

/// `lower`: a Strata writable layer over that tree, read with that reader
/// (copy-ups, `strata run` setup marks); `None`: a kernel overlayfs upper.
fn write_layer<W: Write>(
    upper_root: &Path,
    lower: Option<(&LowerTree, &Arc<ChunkReader>)>,
    out: W,
) -> Result<W, CommitError> {
    let root_err = |source| CommitError::Io { path: upper_root.to_owned(), source };
    let root = File::open(upper_root).map(OwnedFd::from).map_err(root_err)?;
    let mut walk = Walk { upper_root, lower, tar: LayerTarWriter::new(out), links: HashMap::new() };
    let dot = At::new(root.as_fd(), b".").map_err(root_err)?;
    if lower.is_none() {
        // The root of an overlayfs upper is the merged root (its mode,
        // owner, xattrs: what a layer's `./` entry set when applied).
        let st = dot.stat().map_err(root_err)?;
        let xattrs = walk.xattrs(&dot.xattr_path().map_err(root_err)?, b"")?;
        let entry = Entry { kind: EntryKind::Dir as i32, ..stat_entry(Vec::new(), &st, xattrs) };
        walk.tar.append(&entry, io::empty())?;
    }
    if walk.is_opaque(&dot.xattr_path().map_err(root_err)?).map_err(root_err)? {
        walk.tar.append_opaque_marker(b"")?;
    }
    walk.dir(root.as_fd(), b"")?;
    Ok(walk.tar.finish()?)
}

/// An upper entry with respect to the container setup `strata run` made.
#[derive(Debug, PartialEq, Eq)]
enum Setup {
    /// A change of the container's (or not setup at all): committed.
    Changed,
    /// Setup as made, where the lower tree has nothing: left out.
    LeftOut,
    /// Setup as made over a lower entry the container had deleted: the
    /// deletion is committed.
    OverDeletion,
}

struct Walk<'a, W: Write> {
    upper_root: &'a Path,
    /// The lower tree and its reader for a Strata writable layer; `None`
    /// for a kernel overlayfs upper.
    lower: Option<(&'a LowerTree, &'a Arc<ChunkReader>)>,
    tar: LayerTarWriter<W>,
    /// First path of each upper entry with several links, by (device, inode).
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walk<'_, W> {
    fn is_opaque(&self, path: &std::ffi::CStr) -> io::Result<bool> {
        match self.lower {
            Some(_) => upper::is_opaque(path),
            None => Ok(sys::get_xattr(path, OVERLAY_OPAQUE)?.is_some_and(|v| v == b"y")),
        }
    }

    fn is_private_xattr(&self, name: &[u8]) -> bool {
        match self.lower {
            Some(_) => upper::is_private_xattr(name),
            // The host's SELinux label is the host's, not the layer's
            // (containerd's and docker's layer writers leave it out too).
            None => name.starts_with(OVERLAY_PRIVATE_PREFIX) || name == SELINUX_XATTR,
        }
    }

    fn io_at<'p>(&self, rel: &'p [u8]) -> impl Fn(io::Error) -> CommitError + 'p {
        let root = self.upper_root.to_owned();
        move |source| CommitError::Io { path: join_path(&root, rel), source }
    }

    fn dir(&mut self, dir: BorrowedFd<'_>, rel: &[u8]) -> Result<(), CommitError> {
        let listing =
            sys::open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(self.io_at(rel))?;
        let mut names = sys::dir_names(listing).map_err(self.io_at(rel))?;
        names.sort();
        for name in names {
            let child = join(rel, &name);
            let at = At::new(dir, &name).map_err(self.io_at(&child))?;
            self.entry(&at, child)?;
        }
        Ok(())
    }

    fn entry(&mut self, at: &At<'_>, rel: Vec<u8>) -> Result<(), CommitError> {
        let st = at.stat().map_err(self.io_at(&rel))?;
        if upper::is_whiteout(&st) {
            let entry = Entry { path: rel, kind: EntryKind::Whiteout as i32, ..Default::default() };
            return Ok(self.tar.append(&entry, io::empty())?);
        }
        let setup = match self.lower {
            Some((tree, _)) => self.setup(tree, at, &rel, &st)?,
            None => Setup::Changed,
        };
        match setup {
            Setup::Changed => {}
            Setup::LeftOut => {
                tracing::debug!(path = %String::from_utf8_lossy(&rel), "container setup left out");
                return Ok(());
            }
            Setup::OverDeletion => {
                // The run remade a lower entry the container had deleted:
                // the deletion is the change.
                let entry = Entry { path: rel, kind: EntryKind::Whiteout as i32, ..Default::default() };
                return Ok(self.tar.append(&entry, io::empty())?);
            }
        }
        let xattr_path = at.xattr_path().map_err(self.io_at(&rel))?;
        if self.lower.is_none() {
            for (xattr, what) in [
                (OVERLAY_REDIRECT, "an overlayfs redirect (redirect_dir)"),
                (OVERLAY_METACOPY, "an overlayfs metadata-only copy-up (metacopy)"),
            ] {
                if sys::get_xattr(&xattr_path, xattr).map_err(self.io_at(&rel))?.is_some() {
                    return Err(CommitError::Unrepresentable {
                        path: join_path(self.upper_root, &rel),
                        what,
                    });
                }
            }
        }
        let mut entry = stat_entry(rel.clone(), &st, self.xattrs(&xattr_path, &rel)?);
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFDIR {
            entry.kind = EntryKind::Dir as i32;
            self.tar.append(&entry, io::empty())?;
            if self.is_opaque(&xattr_path).map_err(self.io_at(&rel))? {
                self.tar.append_opaque_marker(&rel)?;
            }
            let dir = at.open_dir().map_err(self.io_at(&rel))?;
            return self.dir(dir.as_fd(), &rel);
        }
        if kind == libc::S_IFSOCK {
            tracing::warn!(path = %String::from_utf8_lossy(&rel), "sockets cannot go in a layer; left out");
            return Ok(());
        }
        if st.st_nlink > 1 {
            // Any non-directory may have several names (docker writes a
            // hardlink member for each further name, whatever the type).
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                let link = Entry {
                    path: rel,
                    kind: EntryKind::Hardlink as i32,
                    link_target: first.clone(),
                    ..Default::default()
                };
                return Ok(self.tar.append(&link, io::empty())?);
            }
            self.links.insert((st.st_dev, st.st_ino), rel.clone());
        }
        match kind {
            libc::S_IFREG => {
                entry.kind = EntryKind::File as i32;
                entry.size = st.st_size as u64;
                let file = at.open(libc::O_RDONLY, 0).map_err(self.io_at(&rel))?;
                let content = match self.lower {
                    Some((tree, reader)) => {
                        let origin = upper::origin(&xattr_path).map_err(self.io_at(&rel))?;
                        let lower = origin
                            .as_ref()
                            .and_then(|o| tree.lookup_path(&o.lower_path))
                            .and_then(|l| tree.get(l));
                        MergedFile {
                            file: &file,
                            lower: lower.zip(origin.map(|o| o.lower_size)),
                            reader: Some(reader),
                            pos: 0,
                        }
                    }
                    None => MergedFile { file: &file, lower: None, reader: None, pos: 0 },
                };
                return Ok(self.tar.append(&entry, content)?);
            }
            libc::S_IFLNK => {
                entry.kind = EntryKind::Symlink as i32;
                entry.link_target = at.read_link().map_err(self.io_at(&rel))?;
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                entry.kind =
                    if kind == libc::S_IFCHR { EntryKind::CharDevice } else { EntryKind::BlockDevice } as i32;
                entry.dev_major = libc::major(st.st_rdev);
                entry.dev_minor = libc::minor(st.st_rdev);
            }
            libc::S_IFIFO => entry.kind = EntryKind::Fifo as i32,
            _ => {
                tracing::warn!(path = %String::from_utf8_lossy(&rel), "sockets cannot go in a layer; left out");
                return Ok(());
            }
        }
        Ok(self.tar.append(&entry, io::empty())?)
    }

    /// What the entry is with respect to container setup ([`upper::mark_init`]).
    ///
    /// Setup left unchanged is an entry marked and still as marked (an
    /// empty regular file with one name, or a directory), every child of a
    /// directory included. Such an entry where the lower tree has nothing
    /// is left out; where the lower tree holds the path, the run remade a
    /// deleted entry, and the deletion is written. An unmarked directory
    /// whose children are all left out, copied up from the lower one with
    /// its mode, owner, group and xattrs unchanged (only to hold them), is
    /// left out too.
    fn setup(
        &self,
        tree: &LowerTree,
        at: &At<'_>,
        rel: &[u8],
        st: &libc::stat,
    ) -> Result<Setup, CommitError> {
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Ok(Setup::Changed);
        }
        let xattr_path = at.xattr_path().map_err(self.io_at(rel))?;
        let marked = upper::init_unchanged(&xattr_path, rel, st).map_err(self.io_at(rel))?;
        if marked == Some(false) {
            return Ok(Setup::Changed);
        }
        let in_lower = tree.lookup_path(rel).is_some();
        if kind == libc::S_IFREG {
            let unchanged = marked.is_some() && st.st_size == 0 && st.st_nlink == 1;
            return Ok(match (unchanged, in_lower) {
                (false, _) => Setup::Changed,
                (true, false) => Setup::LeftOut,
                (true, true) => Setup::OverDeletion,
            });
        }
        // An unmarked directory is listed only if it may be a copied-up
        // holder (most upper directories are the container's own, and the
        // walk lists them anyway).
        if marked.is_none()
            && (upper::is_opaque(&xattr_path).map_err(self.io_at(rel))?
                || !self.same_as_lower(tree, &xattr_path, rel, st)?)
        {
            return Ok(Setup::Changed);
        }
        let names = at.names().map_err(self.io_at(rel))?;
        if marked.is_none() && names.is_empty() {
            return Ok(Setup::Changed);
        }
        // Children remade over deletions inside a directory remade over a
        // deletion: the directory's deletion covers them.
        let mut remade = false;
        if !names.is_empty() {
            let dir = at.open_dir().map_err(self.io_at(rel))?;
            for name in names {
                let child = join(rel, &name);
                let child_at = At::new(dir.as_fd(), &name).map_err(self.io_at(&child))?;
                let child_st = child_at.stat().map_err(self.io_at(&child))?;
                match self.setup(tree, &child_at, &child, &child_st)? {
                    Setup::LeftOut => {}
                    Setup::OverDeletion => remade = true,
                    Setup::Changed => return Ok(Setup::Changed),
                }
            }
        }
        Ok(match (marked.is_some() && in_lower, remade) {
            (true, _) => Setup::OverDeletion,
            (false, false) => Setup::LeftOut,
            (false, true) => Setup::Changed,
        })
    }

    /// Whether the upper directory `rel` has the mode, owner, group and
    /// xattrs of the lower directory at the same path.
    fn same_as_lower(
        &self,
        tree: &LowerTree,
        xattr_path: &std::ffi::CStr,
        rel: &[u8],
        st: &libc::stat,
    ) -> Result<bool, CommitError> {
        let Some(lower) = tree.lookup_path(rel).and_then(|ino| tree.get(ino)) else {
            return Ok(false);
        };
        if lower.kind != Kind::Dir
            || u32::from(lower.perm) != st.st_mode & 0o7777
            || (lower.uid, lower.gid) != (st.st_uid, st.st_gid)
        {
            return Ok(false);
        }
        let mut lower_xattrs: Vec<(&[u8], &[u8])> = lower
            .xattrs
            .iter()
            .filter(|(name, _)| !upper::is_private_xattr(name))
            .map(|(name, value)| (&name[..], &value[..]))
            .collect();
        lower_xattrs.sort();
        let upper_xattrs = self.xattrs(xattr_path, rel)?;
        Ok(lower_xattrs.iter().copied().eq(upper_xattrs.iter().map(|x| (&x.name[..], &x.value[..]))))
    }

    fn xattrs(&self, path: &std::ffi::CStr, rel: &[u8]) -> Result<Vec<Xattr>, CommitError> {
        let mut out = Vec::new();
        for name in sys::list_xattrs(path).map_err(self.io_at(rel))? {
            if self.is_private_xattr(&name) {
                continue;
            }
            if let Some(value) = sys::get_xattr(path, &name).map_err(self.io_at(rel))? {
                out.push(Xattr { name, value });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// An entry at `path` with `st`'s mode bits, owner and mtime (kind and
/// content to be filled in).
fn stat_entry(path: Vec<u8>, st: &libc::stat, xattrs: Vec<Xattr>) -> Entry {
    Entry {
        path,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st.st_mtime.saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec),
        xattrs,
        ..Default::default()
    }
}

fn join_path(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// A file's bytes as the mount shows them.
struct MergedFile<'a> {
    file: &'a File,
    lower: Option<(&'a crate::lower::Inode, u64)>,
    reader: Option<&'a Arc<ChunkReader>>,
    pos: u64,
}

impl Read for MergedFile<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let len = out.len().min(1 << 20) as u32;
        let bytes = match self.lower.zip(self.reader) {
            Some(((lower, lower_size), reader)) => {
                read_merged(self.file, lower, lower_size, reader, self.pos, len).map_err(|e| match e {
                    MergedReadError::Io(e) => e,
                    MergedReadError::Source(e) => io::Error::other(e),
                })?
            }
            None => crate::cow::read_plain(self.file, self.pos, len)?,
        };
        out[..bytes.len()].copy_from_slice(&bytes);
        self.pos += bytes.len() as u64;
        Ok(bytes.len())
    }
}
