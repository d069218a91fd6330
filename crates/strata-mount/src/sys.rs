//! Thin safe wrappers over the Linux calls the writable layer needs and std
//! lacks: xattrs without following symlinks, mknod, nanosecond times,
//! renameat2, SEEK_DATA / SEEK_HOLE and fallocate.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn c_bytes(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The value of xattr `name` of `path` (not following a final symlink), or
/// `None` if it has none.
pub fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (p, n) = (c_path(path)?, c_bytes(name)?);
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings; the buffer is as long as said.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
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
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (c_path(path)?, c_bytes(name)?);
    // SAFETY: valid C strings and a value slice of the length given.
    check(unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

pub fn remove_xattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let (p, n) = (c_path(path)?, c_bytes(name)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

/// Names of the xattrs of `path`.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = c_path(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: a valid C string and a buffer as long as said.
        let len = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
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

/// mknod(2): `mode` holds the file type and permission bits.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid C string.
    check(unsafe { libc::mknod(p.as_ptr(), mode, rdev) })
}

/// A time for [`set_times`]: seconds and nanoseconds, now, or unchanged.
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

/// Sets atime and mtime of `path`, not following a final symlink.
pub fn set_times(path: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let p = c_path(path)?;
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: a valid C string and two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn rename(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (f, t) = (c_path(from)?, c_path(to)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) })
}

/// The next offset at or after `from` that holds data (`SEEK_DATA`) or is a
/// hole (`SEEK_HOLE`); `None` past the last data.
pub fn seek(file: &std::fs::File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
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

pub fn fallocate(file: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: fallocate on an open descriptor.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })
}

/// The errno of an I/O error, EIO if it has none.
pub fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(libc::EIO)
}
