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
