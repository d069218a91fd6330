//! The FUSE filesystem over a lower tree.
//!
//! Metadata requests are answered from memory on the FUSE threads. Reads go to
//! a pool of blocking workers, which own the reply: a read waiting on a slow
//! chunk source holds one worker, never a FUSE thread, so every other request
//! keeps being served.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::{debug_span, warn};

use crate::attr::{file_attr, file_type};
use crate::lower::{Ino, Inode, Kind, LowerTree};
use crate::reader::ChunkReader;

/// How long the kernel may cache names and attributes. The lower tree never
/// changes while mounted, so this can be long.
const TTL: Duration = Duration::from_secs(300);
/// Largest read the kernel sends in one request, and its readahead.
const MAX_IO: u32 = 1 << 20;
const NAME_MAX: u32 = 255;

/// What the mount serves: the merged tree and a reader for file data.
pub struct MountFs {
    tree: Arc<LowerTree>,
    reader: Arc<ChunkReader>,
    workers: tokio::runtime::Runtime,
}

impl MountFs {
    pub(crate) fn new(
        tree: Arc<LowerTree>,
        reader: Arc<ChunkReader>,
        max_workers: usize,
    ) -> std::io::Result<Self> {
        let workers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(max_workers.max(1))
            .thread_name("strata-read")
            .build()?;
        Ok(Self { tree, reader, workers })
    }

    fn inode(&self, ino: INodeNo) -> Result<&Inode, Errno> {
        self.tree.get(Ino(ino.0)).ok_or(Errno::ENOENT)
    }

    fn entry_of(&self, ino: Ino) -> Option<(Ino, &Inode)> {
        self.tree.get(ino).map(|inode| (ino, inode))
    }
}

/// Directory entries from `offset` on, each with the offset of the next:
/// "." is 0, ".." is 1, child i is 2 + i.
fn dir_entries(dir: &Inode, dir_ino: Ino, offset: u64) -> impl Iterator<Item = (u64, Ino, &[u8])> {
    let dots = [(dir_ino, &b"."[..]), (dir.parent, &b".."[..])];
    let children = dir.children.iter().map(|(name, ino)| (*ino, &name[..]));
    dots.into_iter()
        .chain(children)
        .enumerate()
        .skip(offset as usize)
        .map(|(i, (ino, name))| (i as u64 + 1, ino, name))
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        // Capabilities the kernel lacks are simply not used.
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_readahead(MAX_IO).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_write(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.inode(parent).and_then(|dir| dir.child(name.as_bytes()).ok_or(Errno::ENOENT));
        match found.map(|ino| self.entry_of(ino)) {
            Ok(Some((ino, inode))) => reply.entry(&TTL, &file_attr(ino, inode), Generation(0)),
            Ok(None) | Err(_) => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &file_attr(Ino(ino.0), inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino) {
            Ok(inode) if inode.kind == Kind::Symlink => reply.data(&inode.target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino) {
            Err(e) => reply.error(e),
            Ok(inode) if inode.kind == Kind::Dir => reply.error(Errno::EISDIR),
            Ok(_) if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 => {
                reply.error(Errno::EROFS)
            }
            // Lower files never change: the kernel may keep their pages.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
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
        let ino = Ino(ino.0);
        if self.tree.get(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let tree = self.tree.clone();
        let reader = self.reader.clone();
        self.workers.spawn_blocking(move || {
            let Some(inode) = tree.get(ino) else { return reply.error(Errno::ENOENT) };
            let _span = debug_span!("read", ino = ino.0, offset, size).entered();
            match reader.read(&inode.chunks, inode.size, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    warn!(
                        file = %String::from_utf8_lossy(&inode.origin.path),
                        layer = %inode.origin.layer.short(),
                        offset,
                        error = %e,
                        "read failed"
                    );
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino) {
            Ok(inode) if inode.kind == Kind::Dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dir = match self.inode(ino) {
            Ok(dir) if dir.kind == Kind::Dir => dir,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        for (next, child, name) in dir_entries(dir, Ino(ino.0), offset) {
            let kind = self.tree.get(child).map_or(fuser::FileType::Directory, |c| file_type(c.kind));
            if reply.add(INodeNo(child.0), next, kind, OsStr::from_bytes(name)) {
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
        let dir = match self.inode(ino) {
            Ok(dir) if dir.kind == Kind::Dir => dir,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        for (next, child, name) in dir_entries(dir, Ino(ino.0), offset) {
            let Some(inode) = self.tree.get(child) else { continue };
            let attr = file_attr(child, inode);
            if reply.add(INodeNo(child.0), next, OsStr::from_bytes(name), &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let block = 4096u64;
        let blocks = self.tree.content_bytes().div_ceil(block);
        let files = self.tree.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, block as u32, NAME_MAX, block as u32);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let inode = match self.inode(ino) {
            Ok(inode) => inode,
            Err(e) => return reply.error(e),
        };
        match inode.xattrs.iter().find(|(n, _)| **n == *name.as_bytes()) {
            Some((_, value)) => xattr_reply(reply, value, size),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let inode = match self.inode(ino) {
            Ok(inode) => inode,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (name, _) in inode.xattrs.iter() {
            names.extend_from_slice(name);
            names.push(0);
        }
        xattr_reply(reply, &names, size);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        match self.inode(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
