//! The merged view with a writable layer: name resolution across the upper
//! directory and the lower tree, copy-up, and every change a container makes.
//!
//! Locks: `nodes` guards names and inode state; a copy-on-write file's stripe
//! lock serializes its writes and truncations. A stripe lock is always taken
//! before `nodes`, never after. File data moves without holding `nodes`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
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

    // ---- names and attributes

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

    // ---- file data

    pub fn read_plan(&self, ino: u64) -> OpResult<ReadPlan> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if !node.upper {
            return node.lower.map(ReadPlan::Lower).ok_or(libc::ENOENT);
        }
        let cow = node.cow_lower_size.and_then(|size| node.lower.map(|l| (l, size)));
        Ok(ReadPlan::Upper { cow })
    }

    /// Prepares an open of `ino`: a write or truncate copies the file up.
    /// Files are used by inode afterwards ([`Self::upper_file`]), so the
    /// kernel may skip opens altogether.
    pub fn open(&self, ino: u64, flags: i32) -> OpResult<()> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        if (write || truncate) && !self.writable() {
            return Err(libc::EROFS);
        }
        if write || truncate {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
        }
        if truncate {
            self.setattr(ino, &AttrChanges { size: Some(0), ..AttrChanges::default() })?;
        }
        Ok(())
    }

    /// The upper file of `ino`, open read-write, from a bounded cache of
    /// open files (the kernel sends no open or release to tie them to).
    fn upper_file(&self, ino: u64) -> OpResult<Arc<File>> {
        self.files.get_or_insert_with(&ino, || {
            let path = {
                let nodes = self.nodes.lock();
                if !nodes.get(ino).ok_or(libc::ENOENT)?.upper {
                    return Err(libc::EBADF);
                }
                self.upper_path(&nodes, ino)?
            };
            open_upper(&path, libc::O_RDWR).map(Arc::new)
        })
    }

    /// Keeps a file just made open for its first writes.
    pub fn keep_open(&self, ino: u64, file: File) {
        self.files.insert(ino, Arc::new(file));
    }

    pub fn read(&self, ino: u64, plan: &ReadPlan, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        match plan {
            ReadPlan::Lower(lower) => self.read_lower(*lower, offset, len),
            ReadPlan::Upper { cow, .. } => {
                let file = self.upper_file(ino)?;
                match cow {
                    None => read_plain(&file, offset, len),
                    Some((lower, lower_size)) => self.read_cow(&file, *lower, *lower_size, offset, len),
                }
            }
        }
    }

    /// fsync / fdatasync of `ino`'s upper file, if it has one.
    pub fn fsync(&self, ino: u64, data_only: bool) -> OpResult<()> {
        if !self.nodes.lock().get(ino).is_some_and(|n| n.upper) {
            return Ok(());
        }
        let file = self.upper_file(ino)?;
        if data_only { file.sync_data() } else { file.sync_all() }.map_err(ioe)
    }

    /// fallocate(2) on `ino`'s upper file. Refused where lower bytes still
    /// show through holes: allocated blocks would hide them.
    pub fn fallocate(&self, ino: u64, mode: i32, offset: u64, len: u64) -> OpResult<()> {
        {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
            if nodes.get(ino).is_some_and(|n| n.cow_lower_size.unwrap_or(0) > 0) {
                return Err(libc::EOPNOTSUPP);
            }
        }
        sys::fallocate(&*self.upper_file(ino)?, mode, offset, len).map_err(ioe)
    }

    fn read_lower(&self, lower: Ino, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        let inode = self.tree.get(lower).ok_or(libc::ENOENT)?;
        self.reader
            .read(&inode.chunks, inode.size, offset, len)
            .map_err(|e| self.source_failed(lower, offset, &e))
    }

    /// A chunk no source could give: logged with the file it belongs to; EIO.
    fn source_failed(&self, lower: Ino, offset: u64, error: &crate::SourceError) -> Errno {
        tracing::warn!(
            file = %String::from_utf8_lossy(&self.tree.path_of(lower)),
            offset,
            %error,
            "read failed"
        );
        libc::EIO
    }

    fn read_cow(&self, file: &File, lower: Ino, lower_size: u64, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        let inode = self.tree.get(lower).ok_or(libc::ENOENT)?;
        read_merged(file, inode, lower_size, &self.reader, offset, len).map_err(|e| match e {
            MergedReadError::Io(e) => ioe(e),
            MergedReadError::Source(e) => self.source_failed(lower, offset, &e),
        })
    }

    /// Writes `data` at `offset` of the upper file of `ino`. In a copied-up
    /// file the blocks a write only partly covers are first filled from
    /// below, so that every upper block holds the file's true bytes.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
        }
        let file = self.upper_file(ino)?;
        let file = &*file;
        let _stripe = self.cow_lock(ino);
        let cow = {
            let nodes = self.nodes.lock();
            nodes.get(ino).and_then(|n| n.cow_lower_size.and_then(|s| n.lower.map(|l| (l, s))))
        };
        let Some((lower, lower_size)) = cow else {
            file.write_all_at(data, offset).map_err(ioe)?;
            return Ok(data.len() as u32);
        };
        let block = self.upper()?.block_size();
        let end = offset + data.len() as u64;
        let size = file.metadata().map_err(ioe)?.len();
        let head_start = offset / block * block;
        let mut start = offset;
        let mut buf = Vec::with_capacity(data.len() + 2 * block as usize);
        if head_start < offset && head_start < lower_size {
            buf = self.read_cow(file, lower, lower_size, head_start, (offset - head_start) as u32)?;
            buf.resize((offset - head_start) as usize, 0);
            start = head_start;
        }
        buf.extend_from_slice(data);
        let tail_end = end.div_ceil(block).saturating_mul(block).min(size);
        if end < tail_end && end < lower_size {
            buf.extend(self.read_cow(file, lower, lower_size, end, (tail_end - end) as u32)?);
        }
        file.write_all_at(&buf, start).map_err(ioe)?;
        Ok(data.len() as u32)
    }

    /// Sets the size of the upper file of `ino`; a copied-up file forgets
    /// the lower bytes at and above the new size.
    fn truncate(&self, ino: u64, file: &File, path: &std::path::Path, size: u64) -> OpResult<()> {
        let _stripe = self.cow_lock(ino);
        {
            let mut nodes = self.nodes.lock();
            if let Some(node) = nodes.get_mut(ino) {
                if node.cow_lower_size.is_some_and(|lower_size| size < lower_size) {
                    upper::set_lower_size(path, size).map_err(ioe)?;
                    node.cow_lower_size = Some(size);
                }
            }
        }
        file.set_len(size).map_err(ioe)
    }

    // ---- copy-up

    /// Makes `ino` exist in the upper directory, with the lower entry's
    /// metadata; a file's data stays below until written.
    fn copy_up(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?.clone();
        if node.upper {
            return Ok(());
        }
        let upper = self.upper()?;
        self.copy_up(nodes, node.parent)?;
        let lower_ino = node.lower.ok_or(libc::EIO)?;
        let lower = self.tree.get(lower_ino).ok_or(libc::EIO)?;
        let rel = nodes.path(ino);
        let dest = upper.path(&rel);
        let tmp = upper.temp_path();
        let made = match lower.kind {
            Kind::Dir => fs::create_dir(&tmp),
            Kind::File => {
                OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|f| f.set_len(lower.size))
            }
            Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&lower.target), &tmp),
            Kind::CharDevice => sys::mknod(&tmp, libc::S_IFCHR | 0o600, lower.rdev),
            Kind::BlockDevice => sys::mknod(&tmp, libc::S_IFBLK | 0o600, lower.rdev),
            Kind::Fifo => sys::mknod(&tmp, libc::S_IFIFO | 0o600, 0),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            if lower.kind != Kind::Dir {
                let lower_size = if lower.kind == Kind::File { lower.size } else { 0 };
                upper::set_origin(&tmp, &Origin { lower_path: self.tree.path_of(lower_ino), lower_size })?;
            }
            for (name, value) in lower.xattrs.iter() {
                sys::set_xattr(&tmp, name, value, 0)?;
            }
            std::os::unix::fs::lchown(&tmp, Some(lower.uid), Some(lower.gid))?;
            if lower.kind != Kind::Symlink {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(u32::from(lower.perm)))?;
            }
            sys::set_times(&tmp, Time::from_ns(lower.mtime_ns), Time::from_ns(lower.mtime_ns))?;
            sys::rename(&tmp, &dest, libc::RENAME_NOREPLACE)
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir(&tmp).or_else(|_| fs::remove_file(&tmp));
            return Err(ioe(e));
        }
        if let Some(n) = nodes.get_mut(ino) {
            n.upper = true;
            if lower.kind == Kind::File {
                n.cow_lower_size = Some(lower.size);
            }
        }
        if lower.kind == Kind::File && lower.nlink > 1 {
            self.link_other_names(nodes, ino, lower_ino, &rel, &dest)?;
        }
        Ok(())
    }

    /// A copied-up hardlinked file keeps its other names: each that still
    /// shows this inode becomes a link to the upper file.
    fn link_other_names(
        &self,
        nodes: &mut Nodes,
        ino: u64,
        lower: Ino,
        done: &[u8],
        dest: &std::path::Path,
    ) -> OpResult<()> {
        let upper = self.upper()?;
        for other in self.tree.paths_of(lower) {
            if other == done || self.resolve_path(nodes, &other)? != Some(ino) {
                continue;
            }
            let (parent_path, _) = match other.iter().rposition(|b| *b == b'/') {
                Some(i) => (&other[..i], &other[i + 1..]),
                None => (&b""[..], &other[..]),
            };
            let parent = self.resolve_path(nodes, parent_path)?.ok_or(libc::ENOENT)?;
            self.copy_up(nodes, parent)?;
            let target = upper.path(&other);
            if fs::symlink_metadata(&target).is_err() {
                fs::hard_link(dest, &target).map_err(ioe)?;
            }
        }
        Ok(())
    }

    /// Copies up a whole subtree and makes each directory of it opaque: the
    /// subtree no longer needs the lower tree, so it can move.
    fn copy_up_tree(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        self.copy_up(nodes, ino)?;
        if self.kind(nodes, ino)? != fuser::FileType::Directory {
            return Ok(());
        }
        for name in self.child_names(nodes, ino)? {
            if let Some(child) = self.resolve(nodes, ino, &name)? {
                self.copy_up_tree(nodes, child)?;
            }
        }
        let path = self.upper_path(nodes, ino)?;
        upper::set_opaque(&path).map_err(ioe)?;
        if let Some(node) = nodes.get_mut(ino) {
            node.opaque = true;
            node.lower = None;
        }
        Ok(())
    }

    // ---- namespace changes

    /// Creates `name` in `parent`; for a file also returns it opened read-write.
    pub fn make(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        entry: NewEntry<'_>,
    ) -> OpResult<(u64, FileAttr, Option<File>)> {
        let mut nodes = self.nodes.lock();
        if self.resolve(&mut nodes, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let parent_attr = self.attr_locked(&nodes, parent)?;
        if parent_attr.kind != fuser::FileType::Directory {
            return Err(libc::ENOTDIR);
        }
        self.copy_up(&mut nodes, parent)?;
        let upper = self.upper()?;
        let dest = upper.path(&join(&nodes.path(parent), name));
        let over_whiteout = fs::symlink_metadata(&dest).is_ok_and(|m| upper::is_whiteout(&m));
        let hides_lower = over_whiteout || self.lower_has(&nodes, parent, name);
        // New entries take the directory's group where it is setgid.
        let setgid_dir = u32::from(parent_attr.perm) & libc::S_ISGID != 0;
        let gid = if setgid_dir { parent_attr.gid } else { caller.gid };
        let tmp = upper.temp_path();
        let is_dir = matches!(entry, NewEntry::Dir { .. });
        let (mut file, mut mode) = (None, 0);
        let made = match entry {
            NewEntry::File { mode: m } => {
                mode = m;
                OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&tmp).map(|f| {
                    file = Some(f);
                })
            }
            NewEntry::Dir { mode: m } => {
                mode = m | if setgid_dir { libc::S_ISGID } else { 0 };
                fs::create_dir(&tmp).and_then(|()| if hides_lower { upper::set_opaque(&tmp) } else { Ok(()) })
            }
            NewEntry::Special { mode: m, rdev } => {
                if m & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                    // A character device 0/0 is how the upper layer records a deletion.
                    return Err(libc::EPERM);
                }
                mode = m;
                sys::mknod(&tmp, m & libc::S_IFMT | 0o600, rdev)
            }
            NewEntry::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            std::os::unix::fs::lchown(&tmp, Some(caller.uid), Some(gid))?;
            if !matches!(entry, NewEntry::Symlink { .. }) {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            place(&tmp, &dest, over_whiteout)
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir(&tmp).or_else(|_| fs::remove_file(&tmp));
            return Err(ioe(e));
        }
        let node = Node {
            parent,
            name: name.into(),
            lower: None,
            upper: true,
            opaque: is_dir && hides_lower,
            cow_lower_size: None,
        };
        let ino = nodes.insert(None, node);
        self.names_changed();
        Ok((ino, self.attr_locked(&nodes, ino)?, file))
    }

    /// unlink (`dir` false) or rmdir (`dir` true).
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> OpResult<()> {
        let mut nodes = self.nodes.lock();
        self.upper()?;
        let ino = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let is_dir = self.check_kind(&mut nodes, ino, dir)?;
        self.copy_up(&mut nodes, parent)?;
        if !is_dir && nodes.get(ino).is_some_and(|n| !n.upper) {
            // A lower file with other names: copy it up (its names become
            // upper links) so that the names left count right.
            let hardlinked = nodes
                .get(ino)
                .and_then(|n| n.lower)
                .and_then(|l| self.tree.get(l))
                .is_some_and(|i| i.nlink > 1);
            if hardlinked {
                self.copy_up(&mut nodes, ino)?;
            }
        }
        let dest = self.upper()?.path(&join(&nodes.path(parent), name));
        let whiteout = self.lower_has(&nodes, parent, name);
        self.replace_upper_entry(&dest, whiteout)?;
        nodes.remove_name(parent, name);
        self.names_changed();
        Ok(())
    }

    /// Whether `target` may be removed as (or replaced by) a directory if
    /// `dir`, else a non-directory: the kinds must match and a directory must
    /// be empty. Returns whether `target` is a directory.
    fn check_kind(&self, nodes: &mut Nodes, target: u64, dir: bool) -> OpResult<bool> {
        let is_dir = self.kind(nodes, target)? == fuser::FileType::Directory;
        match (dir, is_dir) {
            (true, false) => Err(libc::ENOTDIR),
            (false, true) => Err(libc::EISDIR),
            (true, true) if self.has_children(nodes, target)? => Err(libc::ENOTEMPTY),
            _ => Ok(is_dir),
        }
    }

    /// Removes the upper entry at `dest` (if any), leaving a whiteout there
    /// if `whiteout`, in one rename so that a crash leaves one or the other.
    fn replace_upper_entry(&self, dest: &std::path::Path, whiteout: bool) -> OpResult<()> {
        let upper = self.upper()?;
        let exists = fs::symlink_metadata(dest).is_ok();
        if !whiteout {
            if exists {
                remove_any(dest).map_err(ioe)?;
            }
            return Ok(());
        }
        let tmp = upper.temp_path();
        upper::make_whiteout(&tmp).map_err(ioe)?;
        if exists {
            sys::rename(&tmp, dest, libc::RENAME_EXCHANGE).map_err(ioe)?;
            remove_any(&tmp).map_err(ioe)
        } else {
            sys::rename(&tmp, dest, 0).map_err(ioe)
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
            || flags == libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
        {
            return Err(libc::EINVAL);
        }
        let mut nodes = self.nodes.lock();
        self.upper()?;
        let src = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let dst = self.resolve(&mut nodes, new_parent, new_name)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        match dst {
            Some(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
            None if exchange => return Err(libc::ENOENT),
            Some(d) if d == src => return Ok(()),
            _ => {}
        }
        let src_dir = self.kind(&nodes, src)? == fuser::FileType::Directory;
        if let (Some(d), false) = (dst, exchange) {
            self.check_kind(&mut nodes, d, src_dir)?;
        }
        self.copy_up_tree(&mut nodes, src)?;
        self.copy_up(&mut nodes, new_parent)?;
        let upper = self.upper()?;
        let src_path = upper.path(&join(&nodes.path(parent), name));
        let dst_path = upper.path(&join(&nodes.path(new_parent), new_name));
        if exchange {
            let dst = dst.ok_or(libc::ENOENT)?;
            self.copy_up_tree(&mut nodes, dst)?;
            sys::rename(&src_path, &dst_path, libc::RENAME_EXCHANGE).map_err(ioe)?;
            nodes.rename(src, parent, name, new_parent, new_name);
            nodes.rename(dst, new_parent, new_name, parent, name);
            self.names_changed();
            return Ok(());
        }
        // What the destination holds in the upper layer goes: a whiteout, or
        // a directory that is empty in the merged view (only whiteouts).
        if fs::symlink_metadata(&dst_path).is_ok() {
            remove_any(&dst_path).map_err(ioe)?;
        }
        let leave_whiteout = self.lower_has(&nodes, parent, name);
        if leave_whiteout {
            // The whiteout appears in the same step as the move where the
            // filesystem can; otherwise just after it.
            if let Err(e) = sys::rename(&src_path, &dst_path, libc::RENAME_WHITEOUT) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(ioe(e));
                }
                sys::rename(&src_path, &dst_path, 0).map_err(ioe)?;
                upper::make_whiteout(&src_path).map_err(ioe)?;
            }
        } else {
            sys::rename(&src_path, &dst_path, 0).map_err(ioe)?;
        }
        if dst.is_some() {
            nodes.remove_name(new_parent, new_name);
        }
        nodes.rename(src, parent, name, new_parent, new_name);
        self.names_changed();
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> OpResult<FileAttr> {
        let mut nodes = self.nodes.lock();
        self.upper()?;
        if self.resolve(&mut nodes, new_parent, new_name)?.is_some() {
            return Err(libc::EEXIST);
        }
        if self.kind(&nodes, ino)? == fuser::FileType::Directory {
            return Err(libc::EPERM);
        }
        self.copy_up(&mut nodes, ino)?;
        self.copy_up(&mut nodes, new_parent)?;
        let upper = self.upper()?;
        let src = upper.path(&nodes.path(ino));
        let dest = upper.path(&join(&nodes.path(new_parent), new_name));
        let tmp = upper.temp_path();
        fs::hard_link(&src, &tmp).map_err(ioe)?;
        if let Err(e) = sys::rename(&tmp, &dest, 0) {
            let _ = fs::remove_file(&tmp);
            return Err(ioe(e));
        }
        nodes.add_name(new_parent, new_name, ino);
        self.names_changed();
        self.attr_locked(&nodes, ino)
    }

    // ---- attributes and xattrs

    pub fn setattr(&self, ino: u64, changes: &AttrChanges) -> OpResult<FileAttr> {
        let path = {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
            self.upper_path(&nodes, ino)?
        };
        if changes.uid.is_some() || changes.gid.is_some() {
            std::os::unix::fs::lchown(&path, changes.uid, changes.gid).map_err(ioe)?;
        }
        if let Some(mode) = changes.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(ioe)?;
        }
        if let Some(size) = changes.size {
            self.truncate(ino, &*self.upper_file(ino)?, &path, size)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let (a, m) = (changes.atime.unwrap_or(Time::Omit), changes.mtime.unwrap_or(Time::Omit));
            sys::set_times(&path, a, m).map_err(ioe)?;
        }
        self.attr(ino)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            return sys::get_xattr(&self.upper_path(&nodes, ino)?, name).map_err(ioe)?.ok_or(libc::ENODATA);
        }
        let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
        lower.xattrs.iter().find(|(n, _)| **n == *name).map(|(_, v)| v.to_vec()).ok_or(libc::ENODATA)
    }

    /// Xattr names, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        let names: Vec<Vec<u8>> = if node.upper {
            sys::list_xattrs(&self.upper_path(&nodes, ino)?).map_err(ioe)?
        } else {
            let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
            lower.xattrs.iter().map(|(n, _)| n.to_vec()).collect()
        };
        let mut out = Vec::new();
        for name in names.iter().filter(|n| !upper::is_private_xattr(n)) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        if upper::is_private_xattr(name) {
            return Err(libc::EPERM);
        }
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        sys::set_xattr(&self.upper_path(&nodes, ino)?, name, value, flags).map_err(ioe)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> OpResult<()> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        drop(self.getxattr(ino, name)?);
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        sys::remove_xattr(&self.upper_path(&nodes, ino)?, name).map_err(ioe)
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
