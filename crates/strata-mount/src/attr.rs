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

/// Attributes of an entry of the upper directory (its lstat), numbered `ino`.
pub fn attr_of_stat(ino: u64, st: &libc::stat) -> FileAttr {
    let time = |sec: i64, nsec: i64| system_time(sec.saturating_mul(1_000_000_000).saturating_add(nsec));
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_mtime, st.st_mtime_nsec),
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}
