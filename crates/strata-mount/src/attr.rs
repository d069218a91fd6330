//! Inode attributes as FUSE replies carry them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::lower::{Ino, Inode, Kind};

/// Preferred I/O size reported in `st_blksize`.
const BLOCK_SIZE: u32 = 4096;

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

pub fn system_time(ns: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

pub fn file_attr(ino: Ino, inode: &Inode) -> FileAttr {
    let time = system_time(inode.mtime_ns);
    FileAttr {
        ino: INodeNo(ino.0),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type(inode.kind),
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        // FUSE carries the kernel's 32-bit encoding, which glibc's makedev
        // matches in its low 32 bits.
        rdev: inode.rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Attributes of an entry of the upper directory, numbered `ino`.
pub fn attr_of_metadata(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    use std::os::unix::fs::MetadataExt;
    let time = |sec: i64, nsec: i64| system_time(sec.saturating_mul(1_000_000_000).saturating_add(nsec));
    let file_type = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if file_type.is_dir() {
        FileType::Directory
    } else if file_type.is_symlink() {
        FileType::Symlink
    } else if file_type.is_char_device() {
        FileType::CharDevice
    } else if file_type.is_block_device() {
        FileType::BlockDevice
    } else if file_type.is_fifo() {
        FileType::NamedPipe
    } else if file_type.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.size(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.mtime(), meta.mtime_nsec()),
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}
