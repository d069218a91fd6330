//! Thin safe wrappers over the Linux calls the writable layer needs and std
//! lacks: the `*at` family on directory descriptors (so that no path handed
//! to the kernel is longer than one name), xattrs without following
//! symlinks, mknod, nanosecond times, renameat2, SEEK_DATA / SEEK_HOLE and
//! fallocate.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub fn c_bytes(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_fd(ret: libc::c_int) -> io::Result<OwnedFd> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a descriptor the kernel just returned, owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(ret) })
    }
}

/// The value of xattr `name` of `path` (not following a final symlink), or
/// `None` if it has none.
pub fn get_xattr(path: &CStr, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let n = c_bytes(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings; the buffer is as long as said.
        let len = unsafe { libc::lgetxattr(path.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if len >= 0 {
            buf.truncate(len as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

/// Sets xattr `name`; `flags` as setxattr(2) (XATTR_CREATE, XATTR_REPLACE).
pub fn set_xattr(path: &CStr, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let n = c_bytes(name)?;
    // SAFETY: valid C strings and a value slice of the length given.
    check(unsafe { libc::lsetxattr(path.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

/// Sets xattr `name` of the open file `file` (fsetxattr(2)): the inode the
/// descriptor holds, whatever names it has now.
pub fn fset_xattr(file: &File, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = c_bytes(name)?;
    // SAFETY: an open descriptor, a valid C string and a value of the length given.
    check(unsafe { libc::fsetxattr(file.as_raw_fd(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

pub fn remove_xattr(path: &CStr, name: &[u8]) -> io::Result<()> {
    let n = c_bytes(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), n.as_ptr()) })
}

/// Names of the xattrs of `path`.
pub fn list_xattrs(path: &CStr) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: a valid C string and a buffer as long as said.
        let len = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if len >= 0 {
            buf.truncate(len as usize);
            return Ok(buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

/// A time for [`set_times_at`]: seconds and nanoseconds, now, or unchanged.
#[derive(Clone, Copy, Debug)]
pub enum Time {
    At(i64, u32),
    Now,
    Omit,
}

impl Time {
    pub fn from_ns(ns: i64) -> Self {
        Time::At(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
    }

    fn timespec(self) -> libc::timespec {
        match self {
            Time::At(sec, nsec) => libc::timespec { tv_sec: sec, tv_nsec: i64::from(nsec) },
            Time::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
            Time::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        }
    }
}

/// openat(2): `flags` as open(2), O_CLOEXEC added.
pub fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and C string.
    check_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// openat2(2) of `path` below `dir` with RESOLVE_BENEATH and
/// RESOLVE_NO_SYMLINKS: no component may be a symlink or lead out of `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zeroed is a valid start.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: a valid descriptor, C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    check_fd(i32::try_from(fd).unwrap_or(-1))
}

/// fstatat(2) without following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and C string; the kernel fills `st` on success.
    check(unsafe {
        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })?;
    // SAFETY: filled by the successful call above.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// mknodat(2): `mode` holds the file type and permission bits.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: a valid descriptor and C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let t = c_bytes(target)?;
    // SAFETY: valid C strings and descriptor.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// linkat(2), not following a symlink: `from` gets the new name `to`.
pub fn link_at(from_dir: BorrowedFd<'_>, from: &CStr, to_dir: BorrowedFd<'_>, to: &CStr) -> io::Result<()> {
    // SAFETY: valid descriptors and C strings.
    check(unsafe { libc::linkat(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), 0) })
}

/// renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid descriptors and C strings.
    check(unsafe {
        libc::renameat2(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), flags)
    })
}

/// unlinkat(2); `AT_REMOVEDIR` in `flags` removes an empty directory.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: a valid descriptor and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// fchownat(2) without following a symlink; `u32::MAX` leaves an id as it is.
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: a valid descriptor and C string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW) })
}

/// fchmodat(2) (symlinks have no mode of their own: never called on one).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor and C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// Sets atime and mtime, not following a final symlink.
pub fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, atime: Time, mtime: Time) -> io::Result<()> {
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: a valid descriptor, C string and two timespecs.
    check(unsafe {
        libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })
}

pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid descriptor and C string; the buffer is as long as said.
    let len = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// The names in the directory open as `dir` (without "." and "..").
pub fn dir_names(dir: OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    // Read through the descriptor's /proc name: short whatever the depth.
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        names.push(entry?.file_name().as_bytes().to_vec());
    }
    drop(dir);
    Ok(names)
}

/// Removes `name` in `dir`, a whole subtree if it is a directory, by
/// descriptors (no path is ever longer than one name).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = stat_at(dir, name)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink_at(dir, name, 0);
    }
    let sub = open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
    let dup = sub.try_clone()?;
    for child in dir_names(dup)? {
        remove_all_at(sub.as_fd(), &c_bytes(&child)?)?;
    }
    unlink_at(dir, name, libc::AT_REMOVEDIR)
}

/// A path naming `name` in the directory open as `dir` through /proc, for
/// the calls that have no `*at` form (xattrs). It stays short however deep
/// the directory is.
pub fn proc_path(dir: RawFd, name: &[u8]) -> io::Result<CString> {
    let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
    path.extend_from_slice(name);
    c_bytes(&path)
}

/// The next offset at or after `from` that holds data (`SEEK_DATA`) or is a
/// hole (`SEEK_HOLE`); `None` past the last data.
pub fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let from = i64::try_from(from).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on an open descriptor; the offset it moves is not used.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: fallocate on an open descriptor.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })
}

/// The errno of an I/O error, EIO if it has none.
pub fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(libc::EIO)
}
