//! The merged view with a writable layer: name resolution across the upper
//! directory and the lower tree, copy-up, and every change a container makes.
//!
//! This module resolves and lists names; `data` reads and writes file bytes;
//! `copy_up` brings lower entries up; `changes` makes, removes, renames and
//! links; `attrs` sets attributes and xattrs.
//!
//! Locks: `nodes` guards names and inode state; a copy-on-write file's stripe
//! lock serializes its writes and truncations. A stripe lock is always taken
//! before `nodes`, never after. File data moves without holding `nodes`.

mod attrs;
mod changes;
mod copy_up;
mod data;

use std::collections::BTreeSet;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use fuser::FileAttr;
use parking_lot::{Mutex, MutexGuard};

use crate::attr::{attr_of_metadata, file_attr};
use crate::cow::{self, read_merged, MergedReadError};
use crate::lower::{Ino, Kind, LowerTree};
use crate::nodes::{join, Node, Nodes};
use crate::reader::ChunkReader;
use crate::sys::{self, errno, Time};
use crate::upper::{self, Origin, UpperDir};

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
}

/// A directory's entries in the merged view: name, inode, type.
pub type DirEntries = Vec<(Box<[u8]>, u64, fuser::FileType)>;

/// Where a read of an inode goes.
#[derive(Clone, Debug)]
pub enum ReadPlan {
    Lower(Ino),
    Upper { cow: Option<(Ino, u64)> },
}

pub struct Overlay {
    pub tree: Arc<LowerTree>,
    pub reader: Arc<ChunkReader>,
    pub upper: Option<UpperDir>,
    nodes: Mutex<Nodes>,
    cow_stripes: [Mutex<()>; 64],
    /// Open upper files by inode.
    files: quick_cache::sync::Cache<u64, Arc<File>>,
    /// Bumped by every change of names: directory listings taken at an
    /// older generation are stale.
    generation: std::sync::atomic::AtomicU64,
}

impl Overlay {
    pub fn new(tree: Arc<LowerTree>, reader: Arc<ChunkReader>, upper: Option<UpperDir>) -> io::Result<Self> {
        let opaque = match &upper {
            Some(u) => upper::is_opaque(u.root())?,
            None => false,
        };
        let root = Node {
            parent: Ino::ROOT.0,
            name: Box::default(),
            lower: Some(Ino::ROOT),
            upper: upper.is_some(),
            opaque,
            cow_lower_size: None,
        };
        let nodes = Nodes::new(tree.len() as u64 + 1, root);
        Ok(Self {
            tree,
            reader,
            upper,
            nodes: Mutex::new(nodes),
            cow_stripes: std::array::from_fn(|_| Mutex::new(())),
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

    fn cow_lock(&self, ino: u64) -> MutexGuard<'_, ()> {
        self.cow_stripes[(ino % 64) as usize].lock()
    }

    fn upper_path(&self, nodes: &Nodes, ino: u64) -> OpResult<PathBuf> {
        Ok(self.upper()?.path(&nodes.path(ino)))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> OpResult<(u64, FileAttr)> {
        let mut nodes = self.nodes.lock();
        let ino = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        Ok((ino, self.attr_locked(&nodes, ino)?))
    }

    pub fn attr(&self, ino: u64) -> OpResult<FileAttr> {
        let nodes = self.nodes.lock();
        self.attr_locked(&nodes, ino)
    }

    fn attr_locked(&self, nodes: &Nodes, ino: u64) -> OpResult<FileAttr> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            let meta = fs::symlink_metadata(self.upper_path(nodes, ino)?).map_err(ioe)?;
            let mut attr = attr_of_metadata(ino, &meta);
            if meta.is_dir() && node.lower.is_some() && !node.opaque {
                // Merged: the upper count of subdirectories is not the whole
                // story; 1 tells tools such as find not to rely on it.
                attr.nlink = 1;
            }
            return Ok(attr);
        }
        let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
        Ok(file_attr(Ino(ino), lower))
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
        let lower_child =
            if p.opaque { None } else { p.lower.and_then(|l| self.tree.get(l)).and_then(|d| d.child(name)) };
        if p.upper {
            let path = self.upper()?.path(&join(&nodes.path(parent), name));
            match fs::symlink_metadata(&path) {
                Ok(meta) if upper::is_whiteout(&meta) => return Ok(None),
                Ok(meta) => {
                    let mut node = Node {
                        parent,
                        name: name.into(),
                        lower: None,
                        upper: true,
                        opaque: false,
                        cow_lower_size: None,
                    };
                    if meta.is_dir() {
                        node.opaque = upper::is_opaque(&path).map_err(ioe)?;
                        let lower_dir =
                            lower_child.filter(|l| self.tree.get(*l).is_some_and(|i| i.kind == Kind::Dir));
                        node.lower = if node.opaque { None } else { lower_dir };
                    } else if let Some(origin) = upper::origin(&path).map_err(ioe)? {
                        node.lower = self.tree.lookup_path(&origin.lower_path);
                        if meta.is_file() && node.lower.is_some() {
                            node.cow_lower_size = Some(origin.lower_size);
                        }
                    }
                    if let Some(known) = node.lower.map(|l| l.0).filter(|i| nodes.get(*i).is_some()) {
                        nodes.add_name(parent, name, known);
                        return Ok(Some(known));
                    }
                    let number = node.lower.map(|l| l.0);
                    return Ok(Some(nodes.insert(number, node)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ioe(e)),
            }
        }
        let Some(lower) = lower_child else { return Ok(None) };
        if nodes.get(lower.0).is_some() {
            nodes.add_name(parent, name, lower.0);
            return Ok(Some(lower.0));
        }
        let node = Node {
            parent,
            name: name.into(),
            lower: Some(lower),
            upper: false,
            opaque: false,
            cow_lower_size: None,
        };
        Ok(Some(nodes.insert(Some(lower.0), node)))
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
        if node.upper {
            let dir = self.upper_path(nodes, ino)?;
            for entry in fs::read_dir(&dir).map_err(ioe)? {
                names.insert(entry.map_err(ioe)?.file_name().as_bytes().to_vec());
            }
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
        (!node.upper).then_some(node.lower).flatten()
    }

    pub fn readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            let target = fs::read_link(self.upper_path(&nodes, ino)?).map_err(ioe)?;
            return Ok(target.as_os_str().as_bytes().to_vec());
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
fn open_upper(path: &std::path::Path, flags: i32) -> OpResult<File> {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => options.write(true),
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
    options.custom_flags((flags & keep) | libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options.open(path).map_err(ioe)
}

fn read_plain(file: &File, offset: u64, len: u32) -> OpResult<Vec<u8>> {
    cow::read_plain(file, offset, len).map_err(ioe)
}

/// Moves a finished entry from the work directory to `dest`, replacing a
/// whiteout there in the same step.
fn place(tmp: &std::path::Path, dest: &std::path::Path, over_whiteout: bool) -> io::Result<()> {
    if over_whiteout {
        // Exchange works whatever the two kinds; the whiteout ends up in work/.
        sys::rename(tmp, dest, libc::RENAME_EXCHANGE)?;
        fs::remove_file(tmp)
    } else {
        sys::rename(tmp, dest, libc::RENAME_NOREPLACE)
    }
}

fn remove_any(path: &std::path::Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
