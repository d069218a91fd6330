//! The merged view with a writable layer: name resolution across the upper
//! directory and the lower tree, copy-up, and every change a container makes.
//!
//! This module resolves and lists names; `data` reads and writes file bytes;
//! `copy_up` brings lower entries up; `changes` makes, removes, renames and
//! links; `attrs` sets attributes and xattrs.
//!
//! Locks: `nodes` guards names and inode state; a file's copy-on-write lock
//! (one per inode, so files never wait on each other) serializes its
//! writes, truncations and fallocations. A copy-on-write lock is always
//! taken before `nodes`, never after. File data moves without holding
//! `nodes`, and no lock is held while a chunk source is asked: lower bytes
//! a change needs are fetched first and kept, then the lock is taken and
//! they are merged with the upper file as it is then. Every operation that
//! takes a copy-on-write lock runs on a worker, never on a FUSE request
//! thread.

mod attrs;
mod changes;
mod copy_up;
mod data;

use std::collections::{BTreeSet, HashMap};

use std::fs::File;
use std::io;
use std::sync::Arc;

use fuser::FileAttr;
use parking_lot::Mutex;

use crate::attr::{attr_of_stat, file_attr};
use crate::cow::{self, read_merged, read_merged_with, MergedReadError};
use crate::lower::{Ino, Kind, LowerTree};
use crate::nodes::{join, Node, Nodes};
use crate::reader::ChunkReader;
use crate::sys::{self, errno, Time};
use crate::upper::{self, At, Origin, UpperDir};

/// Upper files kept open at once.
const OPEN_FILES: usize = 1024;

/// An errno.
pub type Errno = i32;
pub type OpResult<T> = Result<T, Errno>;

fn ioe(e: io::Error) -> Errno {
    errno(&e)
}

/// Who asks: new entries belong to them.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A new entry to make.
pub enum NewEntry<'a> {
    File { mode: u32 },
    Dir { mode: u32 },
    Special { mode: u32, rdev: u64 },
    Symlink { target: &'a [u8] },
}

/// Attribute changes of a setattr.
#[derive(Default)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The kernel asks for the change time to be set (only with a
    /// writeback cache; otherwise a SETATTR with no change means it).
    pub ctime: bool,
}

/// A directory's entries in the merged view: name, inode, type.
pub type DirEntries = Vec<(Box<[u8]>, u64, fuser::FileType)>;

/// Where a read of an inode goes.
#[derive(Clone, Debug)]
pub enum ReadPlan {
    Lower(Ino),
    Upper { cow: Option<(Ino, u64)> },
}

/// Copy-on-write locks kept before unused ones are dropped.
const COW_LOCKS_KEPT: usize = 1024;

pub struct Overlay {
    pub tree: Arc<LowerTree>,
    pub reader: Arc<ChunkReader>,
    pub upper: Option<UpperDir>,
    nodes: Mutex<Nodes>,
    /// Copy-on-write locks by inode, made on first use; unused ones are
    /// dropped as the map grows.
    cow_locks: Mutex<HashMap<u64, Arc<Mutex<()>>>>,
    /// Open upper files by inode.
    files: quick_cache::sync::Cache<u64, Arc<File>>,
    /// Bumped by every change of names: directory listings taken at an
    /// older generation are stale.
    generation: std::sync::atomic::AtomicU64,
}

impl Overlay {
    pub fn new(tree: Arc<LowerTree>, reader: Arc<ChunkReader>, upper: Option<UpperDir>) -> io::Result<Self> {
        let opaque = match &upper {
            Some(u) => upper::is_opaque(&u.at(b"")?.xattr_path()?)?,
            None => false,
        };
        let mut root = Node::new(Ino::ROOT.0, b"", Some(Ino::ROOT), upper.is_some());
        root.opaque = opaque;
        let nodes = Nodes::new(tree.len() as u64 + 1, root);
        Ok(Self {
            tree,
            reader,
            upper,
            nodes: Mutex::new(nodes),
            cow_locks: Mutex::default(),
            files: quick_cache::sync::Cache::new(OPEN_FILES),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The generation of names; see [`Self::children`].
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn names_changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    fn upper(&self) -> OpResult<&UpperDir> {
        self.upper.as_ref().ok_or(libc::EROFS)
    }

    /// The copy-on-write lock of `ino`, held until the guard drops.
    fn cow_lock(&self, ino: u64) -> parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()> {
        let lock = {
            let mut locks = self.cow_locks.lock();
            if locks.len() >= COW_LOCKS_KEPT {
                // Only the map holds them: nobody waits on or holds them.
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(ino).or_default().clone()
        };
        lock.lock_arc()
    }

    /// The upper entry of `ino`: by its name, or its orphan if it has none.
    fn upper_at<'u>(&'u self, nodes: &Nodes, ino: u64) -> OpResult<At<'u>> {
        let upper = self.upper()?;
        if nodes.get(ino).is_some_and(|n| n.detached) {
            return Ok(upper.orphan(ino));
        }
        upper.at(&nodes.path(ino)).map_err(ioe)
    }

    /// The upper entry `name` in directory `parent`.
    fn child_at<'u>(&'u self, nodes: &Nodes, parent: u64, name: &[u8]) -> OpResult<At<'u>> {
        self.upper()?.at(&join(&nodes.path(parent), name)).map_err(ioe)
    }

    /// Resolves `name` in `parent` for the kernel: the lookup it gets
    /// counts until FORGET gives it back.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> OpResult<(u64, FileAttr)> {
        let mut nodes = self.nodes.lock();
        let ino = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let attr = self.attr_locked(&nodes, ino)?;
        nodes.remember(ino);
        Ok((ino, attr))
    }

    /// The kernel gives back `n` lookups of `ino`; a nameless inode none
    /// holds any more goes, and its upper blocks with it.
    pub fn forget(&self, ino: u64, n: u64) {
        // Under `nodes`, so no new life of the number races the removal.
        let mut nodes = self.nodes.lock();
        if let Some(node) = nodes.forget(ino, n) {
            self.drop_orphan(ino, &node);
        }
    }

    /// Removes what a nameless inode kept in the writable layer.
    fn drop_orphan(&self, ino: u64, node: &Node) {
        self.files.remove(&ino);
        if let (true, Some(upper)) = (node.upper, &self.upper) {
            if let Err(e) = upper.orphan(ino).remove_all() {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(ino, error = %e, "could not remove an unlinked file's upper entry");
                }
            }
        }
    }

    pub fn attr(&self, ino: u64) -> OpResult<FileAttr> {
        let nodes = self.nodes.lock();
        self.attr_locked(&nodes, ino)
    }

    fn attr_locked(&self, nodes: &Nodes, ino: u64) -> OpResult<FileAttr> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        let mut attr = if node.upper {
            let st = self.upper_at(nodes, ino)?.stat().map_err(ioe)?;
            let mut attr = attr_of_stat(ino, &st);
            if upper::is_dir(&st) && node.lower.is_some() && !node.opaque {
                // Merged: the upper count of subdirectories is not the whole
                // story; 1 tells tools such as find not to rely on it.
                attr.nlink = 1;
            }
            if node.detached {
                // The orphan's own link is no name.
                attr.nlink = attr.nlink.saturating_sub(1);
            }
            attr
        } else {
            let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
            let mut attr = file_attr(Ino(ino), lower);
            if node.detached {
                attr.nlink = attr.nlink.saturating_sub(1);
            }
            attr
        };
        if node.detached && attr.kind == fuser::FileType::Directory {
            attr.nlink = 0;
        }
        Ok(attr)
    }

    fn kind(&self, nodes: &Nodes, ino: u64) -> OpResult<fuser::FileType> {
        Ok(self.attr_locked(nodes, ino)?.kind)
    }

    /// The inode `name` in `parent` shows, if any.
    fn resolve(&self, nodes: &mut Nodes, parent: u64, name: &[u8]) -> OpResult<Option<u64>> {
        if let Some(ino) = nodes.named(parent, name) {
            return Ok(Some(ino));
        }
        let p = nodes.get(parent).ok_or(libc::ENOENT)?.clone();
        if p.detached {
            return Ok(None);
        }
        let lower_child =
            if p.opaque { None } else { p.lower.and_then(|l| self.tree.get(l)).and_then(|d| d.child(name)) };
        if p.upper {
            let at = self.child_at(nodes, parent, name)?;
            if let Some(st) = at.try_stat().map_err(ioe)? {
                if upper::is_whiteout(&st) {
                    return Ok(None);
                }
                let mut node = Node::new(parent, name, None, true);
                if upper::is_dir(&st) {
                    node.opaque = upper::is_opaque(&at.xattr_path().map_err(ioe)?).map_err(ioe)?;
                    let lower_dir =
                        lower_child.filter(|l| self.tree.get(*l).is_some_and(|i| i.kind == Kind::Dir));
                    node.lower = if node.opaque { None } else { lower_dir };
                } else if let Some(origin) = upper::origin(&at.xattr_path().map_err(ioe)?).map_err(ioe)? {
                    node.lower = self.tree.lookup_path(&origin.lower_path);
                    if upper::is_file(&st) && node.lower.is_some() {
                        node.cow_lower_size = Some(origin.lower_size);
                    }
                }
                if let Some(known) = node.lower.map(|l| l.0).filter(|i| nodes.get(*i).is_some()) {
                    if self.same_upper_inode(nodes, known, &st) {
                        if nodes.add_name(parent, name, known) {
                            // A nameless inode found by another of its names:
                            // its orphan link is no longer needed.
                            let _ = self.upper()?.orphan(known).unlink();
                        }
                        return Ok(Some(known));
                    }
                    // Another upper file with the same origin: numbered anew.
                    return Ok(Some(nodes.insert(None, node)));
                }
                let number = node.lower.map(|l| l.0);
                return Ok(Some(nodes.insert(number, node)));
            }
        }
        let Some(lower) = lower_child else { return Ok(None) };
        if nodes.get(lower.0).is_some() {
            nodes.add_name(parent, name, lower.0);
            return Ok(Some(lower.0));
        }
        Ok(Some(nodes.insert(Some(lower.0), Node::new(parent, name, Some(lower), false))))
    }

    /// Whether the known inode `ino` is the upper entry `st` describes (or
    /// has no upper entry to compare).
    fn same_upper_inode(&self, nodes: &Nodes, ino: u64, st: &libc::stat) -> bool {
        let Some(node) = nodes.get(ino) else { return false };
        if !node.upper {
            return true;
        }
        match self.upper_at(nodes, ino).and_then(|at| at.stat().map_err(ioe)) {
            Ok(known) => known.st_ino == st.st_ino && known.st_dev == st.st_dev,
            Err(_) => true,
        }
    }

    /// The inode at merged `path`, resolving each component.
    fn resolve_path(&self, nodes: &mut Nodes, path: &[u8]) -> OpResult<Option<u64>> {
        let mut at = Ino::ROOT.0;
        for name in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            match self.resolve(nodes, at, name)? {
                Some(next) => at = next,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Whether `name` in `parent` names something in the lower tree that an
    /// upper entry must hide once the name goes.
    fn lower_has(&self, nodes: &Nodes, parent: u64, name: &[u8]) -> bool {
        nodes.get(parent).is_some_and(|p| {
            !p.opaque && p.lower.and_then(|l| self.tree.get(l)).and_then(|d| d.child(name)).is_some()
        })
    }

    /// A directory's entries in the merged view, sorted by name.
    pub fn children(&self, ino: u64) -> OpResult<DirEntries> {
        let mut nodes = self.nodes.lock();
        let names = self.child_names(&mut nodes, ino)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(child) = self.resolve(&mut nodes, ino, &name)? {
                let kind = self.kind(&nodes, child)?;
                out.push((name.into_boxed_slice(), child, kind));
            }
        }
        Ok(out)
    }

    fn child_names(&self, nodes: &mut Nodes, ino: u64) -> OpResult<BTreeSet<Vec<u8>>> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?.clone();
        let mut names = BTreeSet::new();
        if node.detached {
            return Ok(names);
        }
        if node.upper {
            names.extend(self.upper_at(nodes, ino)?.names().map_err(ioe)?);
        }
        if !node.opaque {
            if let Some(dir) = node.lower.and_then(|l| self.tree.get(l)) {
                names.extend(dir.children.iter().map(|(n, _)| n.to_vec()));
            }
        }
        Ok(names)
    }

    fn has_children(&self, nodes: &mut Nodes, ino: u64) -> OpResult<bool> {
        for name in self.child_names(nodes, ino)? {
            if self.resolve(nodes, ino, &name)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The node's lower directory, when it has no upper one (the fast path
    /// of directory listing).
    pub fn lower_only_dir(&self, ino: u64) -> Option<Ino> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino)?;
        (!node.upper && !node.detached).then_some(node.lower).flatten()
    }

    pub fn readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            return self.upper_at(&nodes, ino)?.read_link().map_err(ioe);
        }
        let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
        if lower.kind != Kind::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(lower.target.to_vec())
    }
}

/// Opens an upper file; creation, truncation and appending are the
/// overlay's business, never the open's.
fn open_upper(at: &At<'_>, flags: i32) -> OpResult<File> {
    let access = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => libc::O_WRONLY,
        libc::O_RDWR => libc::O_RDWR,
        _ => libc::O_RDONLY,
    };
    let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
    at.open(access | (flags & keep), 0).map_err(ioe)
}

fn read_plain(file: &File, offset: u64, len: u32) -> OpResult<Vec<u8>> {
    cow::read_plain(file, offset, len).map_err(ioe)
}

/// Moves a finished entry from the work directory to `dest`, replacing a
/// whiteout there in the same step.
fn place(tmp: &At<'_>, dest: &At<'_>, over_whiteout: bool) -> io::Result<()> {
    if over_whiteout {
        // Exchange works whatever the two kinds; the whiteout ends up in work/.
        tmp.rename_to(dest, libc::RENAME_EXCHANGE)?;
        tmp.unlink()
    } else {
        tmp.rename_to(dest, libc::RENAME_NOREPLACE)
    }
}
