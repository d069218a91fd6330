//! The FUSE filesystem: requests in, [`Overlay`] operations, replies out.
//!
//! Metadata requests are answered on the FUSE threads (memory and local
//! disk). Reads and writes go to a pool of blocking workers, which own the
//! reply: a read waiting on a slow chunk source holds one worker, never a
//! FUSE thread, so every other request keeps being served.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use tracing::debug_span;

use crate::attr::file_type;
use crate::overlay::{AttrChanges, Caller, NewEntry, OpResult, Overlay, ReadPlan};
use crate::sys::Time;
use crate::trace::ReadTrace;

/// How long the kernel may cache names and attributes. Every change goes
/// through this filesystem, which keeps the kernel's view current.
const TTL: Duration = Duration::from_secs(300);
/// Largest read or write the kernel sends in one request, and the most it may read ahead.
const MAX_IO: u32 = 1 << 20;
const NAME_MAX: u32 = 255;
/// Directory listings kept between readdir calls.
const RECENT_LISTINGS: usize = 64;
/// Offsets of "." and ".."; entries' offsets (cookies) are above.
const DOT_OFFSET: u64 = 1;
const DOTDOT_OFFSET: u64 = 2;

/// A directory's entries in the order of their cookies.
type Listing = Arc<Vec<ListEntry>>;

/// A directory entry and its cookie: the readdir offset that resumes the
/// stream after it.
struct ListEntry {
    cookie: u64,
    name: Box<[u8]>,
    ino: u64,
    kind: FileType,
}

/// The readdir offset of the entry after `name`: a hash of the name, so that
/// a directory stream resumed after changes to the directory neither skips
/// nor repeats an entry present throughout (offsets by position would shift
/// under an unlink: `rm -rf` of a large directory then left entries behind).
/// In 3..2^63, as the kernel takes offsets as signed and "." and ".." hold 1
/// and 2 (ext4 and others hash names into readdir cookies alike).
fn cookie(name: &[u8]) -> u64 {
    let hash = blake3::hash(name);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) >> 1).max(DOTDOT_OFFSET + 1)
}

fn sorted_listing(entries: impl Iterator<Item = (Box<[u8]>, u64, FileType)>) -> Listing {
    let mut list: Vec<ListEntry> =
        entries.map(|(name, ino, kind)| ListEntry { cookie: cookie(&name), name, ino, kind }).collect();
    list.sort_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
    Arc::new(list)
}

/// The entries of `listing` a readdir at `offset` continues with.
fn entries_after(listing: &[ListEntry], offset: u64) -> &[ListEntry] {
    if offset <= DOTDOT_OFFSET {
        return listing;
    }
    &listing[listing.partition_point(|e| e.cookie <= offset)..]
}

pub struct MountFs {
    overlay: Arc<Overlay>,
    /// Per directory: the listing a stream goes on with, and the generation
    /// of names it was taken at.
    recent_listings: Mutex<HashMap<u64, (u64, Listing)>>,
    /// The kernel opens files without asking (zero-message opens).
    no_open: AtomicBool,
    /// ... and directories.
    no_opendir: AtomicBool,
    workers: tokio::runtime::Runtime,
    trace: Option<Arc<ReadTrace>>,
    /// Bytes the kernel may read ahead.
    readahead: u32,
    stats: Arc<crate::stats::MountStats>,
}

fn err(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn time_of(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(at) => match at.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => Time::from_ns(-(e.duration().as_nanos() as i64)),
        },
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

impl MountFs {
    /// Serves `overlay`, reading and writing on `workers`' blocking threads.
    pub(crate) fn new(
        overlay: Arc<Overlay>,
        workers: tokio::runtime::Runtime,
        trace: Option<Arc<ReadTrace>>,
        readahead: u32,
        stats: Arc<crate::stats::MountStats>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            overlay,
            recent_listings: Mutex::new(HashMap::new()),
            no_open: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            workers,
            trace,
            readahead,
            stats,
        })
    }

    fn reply_entry(reply: ReplyEntry, result: OpResult<(u64, fuser::FileAttr)>) {
        match result {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, entry: NewEntry<'_>, reply: ReplyEntry) {
        let result = self
            .overlay
            .make(caller(req), parent.0, name.as_bytes(), entry)
            .map(|(ino, attr, _)| (ino, attr));
        Self::reply_entry(reply, result);
    }

    /// The listing of directory `ino` a readdir at `offset` reads from. A
    /// stream that starts (offset 0) sees the directory as it is now; one
    /// that goes on reads the listing it started from, by cookie, so entries
    /// present throughout are neither skipped nor repeated, whatever
    /// changed meanwhile (entries added or removed since may or may not
    /// show, as POSIX allows).
    fn listing(&self, ino: INodeNo, offset: u64) -> OpResult<Listing> {
        let generation = self.overlay.generation();
        if let Some((at, listing)) = self.recent_listings.lock().get(&ino.0) {
            if *at == generation || offset > 0 {
                return Ok(listing.clone());
            }
        }
        let listing = match self.overlay.lower_only_dir(ino.0).and_then(|l| self.overlay.tree.get(l)) {
            Some(dir) => sorted_listing(dir.children.iter().map(|(n, c)| {
                let kind = self.overlay.tree.get(*c).map_or(FileType::RegularFile, |i| file_type(i.kind));
                (n.clone(), c.0, kind)
            })),
            None => sorted_listing(self.overlay.children(ino.0)?.into_iter()),
        };
        let mut recent = self.recent_listings.lock();
        if recent.len() >= RECENT_LISTINGS {
            // Streams that go on rebuild theirs and resume by cookie.
            recent.clear();
        }
        recent.insert(ino.0, (generation, listing.clone()));
        Ok(listing)
    }
}

fn reply_empty(reply: ReplyEmpty, result: OpResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_data(reply: ReplyData, result: OpResult<Vec<u8>>) {
    match result {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_attr(reply: ReplyAttr, result: OpResult<fuser::FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(err(e)),
    }
}

fn xattr_reply(reply: ReplyXattr, value: OpResult<Vec<u8>>, size: u32) {
    match value {
        Err(e) => reply.error(err(e)),
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if (size as usize) < value.len() => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
    }
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_NO_OPEN_SUPPORT
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        // Capabilities the kernel lacks are simply not used.
        let _ = config.add_capabilities(wanted & config.capabilities());
        let no_open = config.capabilities().contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_open.store(no_open, Ordering::Relaxed);
        let no_opendir = config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.no_opendir.store(no_opendir, Ordering::Relaxed);
        tracing::debug!(no_open, capabilities = ?config.capabilities(), "FUSE session initialised");
        let readahead = self.readahead.clamp(4096, MAX_IO);
        let _ = config.set_max_readahead(readahead).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_write(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Self::reply_entry(reply, self.overlay.lookup(parent.0, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.overlay.attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if !self.overlay.writable() {
            return reply.error(Errno::EROFS);
        }
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
            ctime: ctime.is_some(),
        };
        if changes.size.is_none() {
            return reply_attr(reply, self.overlay.setattr(ino.0, &changes));
        }
        // A truncation (O_TRUNC included) takes the file's copy-on-write
        // lock, which a write waiting on a chunk source may hold: on a
        // worker, so no request thread waits on a source.
        let overlay = self.overlay.clone();
        self.workers.spawn_blocking(move || {
            let _span = debug_span!("truncate", ino = ino.0, size = changes.size).entered();
            reply_attr(reply, overlay.setattr(ino.0, &changes));
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply_data(reply, self.overlay.readlink(ino.0));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let entry = if mode & libc::S_IFMT == libc::S_IFREG {
            NewEntry::File { mode }
        } else {
            NewEntry::Special { mode, rdev: u64::from(rdev) }
        };
        self.make(req, parent, name, entry, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        self.make(req, parent, name, NewEntry::Dir { mode }, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        self.make(req, parent, link_name, NewEntry::Symlink { target }, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.overlay.remove(parent.0, name.as_bytes(), false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.overlay.remove(parent.0, name.as_bytes(), true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.overlay.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits()),
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let result = self.overlay.link(ino.0, newparent.0, newname.as_bytes()).map(|attr| (ino.0, attr));
        Self::reply_entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open.load(Ordering::Relaxed) {
            // The kernel then opens files without asking again; every read
            // and write finds its file by inode.
            return reply.error(Errno::ENOSYS);
        }
        match self.overlay.open(ino.0, flags.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.overlay.make(caller(req), parent.0, name.as_bytes(), NewEntry::File { mode }) {
            Ok((ino, attr, file)) => {
                if let Some(file) = file {
                    self.overlay.keep_open(ino, file);
                }
                let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
                reply.created(&TTL, &attr, Generation(0), FileHandle(0), flags)
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let started = std::time::Instant::now();
        let plan = match self.overlay.read_plan(ino.0) {
            Ok(plan) => plan,
            Err(e) => return reply.error(err(e)),
        };
        if let (Some(trace), ReadPlan::Lower(lower)) = (&self.trace, &plan) {
            let file_size = self.overlay.tree.get(*lower).map_or(0, |inode| inode.size);
            trace.record(*lower, file_size, offset, size);
        }
        // Chunks already decoded are copied out here; anything that may wait
        // on a source goes to a worker.
        if let Some(data) = self.overlay.read_cached(&plan, offset, size) {
            self.stats.record(true, Some(data.len()), started.elapsed());
            return reply.data(&data);
        }
        let (overlay, stats) = (self.overlay.clone(), self.stats.clone());
        self.workers.spawn_blocking(move || {
            let _span = debug_span!("read", ino = ino.0, offset, size).entered();
            tracing::trace!("read request");
            let result = overlay.read(ino.0, &plan, offset, size);
            stats.record(false, result.as_ref().ok().map(Vec::len), started.elapsed());
            reply_data(reply, result);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let overlay = self.overlay.clone();
        let data = data.to_vec();
        self.workers.spawn_blocking(move || {
            let _span = debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
            match overlay.write(ino.0, offset, &data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here: ENOSYS tells the kernel to stop sending
        // a flush on every close(2).
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.overlay.fsync(ino.0, datasync));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if !self.overlay.writable() {
            return reply.error(Errno::EROFS);
        }
        // May fetch a copied-up file's lower bytes: on a worker.
        let overlay = self.overlay.clone();
        self.workers.spawn_blocking(move || {
            let _span = debug_span!("fallocate", ino = ino.0, offset, length, mode).entered();
            reply_empty(reply, overlay.fallocate(ino.0, mode, offset, length));
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir.load(Ordering::Relaxed) {
            // The kernel then opens directories without asking again and
            // keeps their listings until they change.
            return reply.error(Errno::ENOSYS);
        }
        // Streams need no state here: offsets are cookies.
        let flags = if self.overlay.lower_only_dir(ino.0).is_some() {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(e) => return reply.error(err(e)),
        };
        let dots = [(&b"."[..], DOT_OFFSET), (&b".."[..], DOTDOT_OFFSET)];
        for (name, off) in dots {
            if offset < off && reply.add(ino, off, FileType::Directory, OsStr::from_bytes(name)) {
                return reply.ok();
            }
        }
        for e in entries_after(&listing, offset) {
            if reply.add(INodeNo(e.ino), e.cookie, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(e) => return reply.error(err(e)),
        };
        if offset < DOTDOT_OFFSET {
            // "." and ".." carry no lookup (the kernel does not count them).
            let Ok(attr) = self.overlay.attr(ino.0) else { return reply.error(Errno::ENOENT) };
            for (name, off) in [(&b"."[..], DOT_OFFSET), (&b".."[..], DOTDOT_OFFSET)] {
                if offset < off && reply.add(ino, off, OsStr::from_bytes(name), &TTL, &attr, Generation(0)) {
                    return reply.ok();
                }
            }
        }
        for e in entries_after(&listing, offset) {
            // Each entry given with attributes counts as a lookup; entries
            // gone since the listing was taken are left out.
            let Ok((child, attr)) = self.overlay.lookup(ino.0, &e.name) else { continue };
            if reply.add(INodeNo(child), e.cookie, OsStr::from_bytes(&e.name), &TTL, &attr, Generation(0)) {
                // Not sent: the lookup does not count.
                self.overlay.forget(child, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // BATCH_FORGET comes here too (fuser's default splits it).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.overlay.forget(ino.0, nlookup);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        if let Some(upper) = &self.overlay.upper {
            if let Ok(s) = nix::sys::statvfs::statvfs(upper.root()) {
                return reply.statfs(
                    s.blocks(),
                    s.blocks_free(),
                    s.blocks_available(),
                    s.files(),
                    s.files_free(),
                    s.block_size() as u32,
                    NAME_MAX,
                    s.fragment_size() as u32,
                );
            }
        }
        let block = 4096u64;
        let tree = &self.overlay.tree;
        reply.statfs(
            tree.content_bytes().div_ceil(block),
            0,
            0,
            tree.len() as u64,
            0,
            block as u32,
            NAME_MAX,
            block as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.overlay.writable() {
            return reply.error(Errno::EROFS);
        }
        reply_empty(reply, self.overlay.setxattr(ino.0, name.as_bytes(), value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, self.overlay.getxattr(ino.0, name.as_bytes()), size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, self.overlay.listxattr(ino.0), size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.overlay.writable() {
            return reply.error(Errno::EROFS);
        }
        reply_empty(reply, self.overlay.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        match self.overlay.attr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }
}
