//! The writable layer on disk: a directory tree in the style of an overlayfs
//! upper directory, plus what chunk-level copy-on-write needs.
//!
//! ```text
//! DIR/strata-upper   "strata-upper 1" and the image id it belongs to
//! DIR/lock           flock: one mount per writable layer
//! DIR/root/          the changed entries, with their real modes, owners, times, xattrs
//! DIR/work/          entries being made, renamed into root/ when complete
//! ```
//!
//! - A whiteout (deleted lower entry) is a character device 0/0.
//! - An entry `strata run` made for the container's setup (mountpoints
//!   `/proc`, `/dev`, `/sys`; empty `/etc/hosts`, `/etc/hostname`,
//!   `/etc/resolv.conf` to bind over) has `trusted.strata.init`: its path,
//!   mode, owner, group and mtime once made. Docker keeps such entries in an init layer
//!   below the container's; here they share the writable layer, and commit
//!   leaves them out while they are as made (see [`crate::commit`]).
//! - An opaque directory (lower children hidden) has `trusted.strata.opaque`.
//! - A copied-up file keeps its lower data where it was not written: it is a
//!   sparse file of the right size whose holes read from the lower file named
//!   by `trusted.strata.origin` (its path in the lower tree), below the offset
//!   in `trusted.strata.lower_size`. Written ranges are whole filesystem blocks
//!   of data, so SEEK_DATA / SEEK_HOLE tell them apart.

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use strata_types::ImageId;

use crate::error::MountError;
use crate::sys;

const FORMAT: &str = "strata-upper 1";
/// Xattrs Strata keeps for itself; hidden from and refused to the container.
pub const PRIVATE_XATTR_PREFIX: &[u8] = b"trusted.strata.";
const OPAQUE: &[u8] = b"trusted.strata.opaque";
const ORIGIN: &[u8] = b"trusted.strata.origin";
const LOWER_SIZE: &[u8] = b"trusted.strata.lower_size";
const INIT: &[u8] = b"trusted.strata.init";
/// Longest relative path handed to one openat(2) while walking down to a
/// deep directory (PATH_MAX is 4096 with its NUL).
const PATH_PIECE: usize = 4000;

/// Where a copied-up file's unwritten bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file's path in the lower tree.
    pub lower_path: Vec<u8>,
    /// Bytes below this offset that the upper file does not hold come from
    /// the lower file; above it they are zeros.
    pub lower_size: u64,
}

/// The directory an [`At`] names its entry in.
enum DirFd<'u> {
    Borrowed(BorrowedFd<'u>),
    Owned(OwnedFd),
}

/// An entry of the writable layer named by a directory descriptor and one
/// name: every call on it is one of the `*at` family (xattrs, which have
/// none, go through `/proc/self/fd/N/name`), so no path handed to the kernel
/// is longer than a name, and the mount's path limits are the kernel's
/// wherever the upper directory lives.
pub struct At<'u> {
    dir: DirFd<'u>,
    name: CString,
}

impl<'u> At<'u> {
    /// `name` in the directory open as `dir`.
    pub fn new(dir: BorrowedFd<'u>, name: &[u8]) -> io::Result<Self> {
        Ok(At { dir: DirFd::Borrowed(dir), name: sys::c_bytes(name)? })
    }

    /// This directory, open for listing and as the base of its entries' `At`s.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        sys::open_at(self.dir(), &self.name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
    }

    fn dir(&self) -> BorrowedFd<'_> {
        match &self.dir {
            DirFd::Borrowed(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }

    /// lstat(2).
    pub fn stat(&self) -> io::Result<libc::stat> {
        sys::stat_at(self.dir(), &self.name)
    }

    /// lstat(2), `None` if nothing has the name.
    pub fn try_stat(&self) -> io::Result<Option<libc::stat>> {
        match self.stat() {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn mkdir(&self, mode: u32) -> io::Result<()> {
        sys::mkdir_at(self.dir(), &self.name, mode)
    }

    /// mknod(2): `mode` holds the file type and permission bits.
    pub fn mknod(&self, mode: u32, rdev: u64) -> io::Result<()> {
        sys::mknod_at(self.dir(), &self.name, mode, rdev)
    }

    pub fn symlink(&self, target: &[u8]) -> io::Result<()> {
        sys::symlink_at(target, self.dir(), &self.name)
    }

    /// A new regular file, open read-write.
    pub fn create_file(&self, mode: u32) -> io::Result<File> {
        self.open(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// open(2) with `flags`, never following a final symlink.
    pub fn open(&self, flags: i32, mode: u32) -> io::Result<File> {
        Ok(File::from(sys::open_at(self.dir(), &self.name, flags | libc::O_NOFOLLOW, mode)?))
    }

    /// Gives this entry the further name `to` (link(2)).
    pub fn link_to(&self, to: &At<'_>) -> io::Result<()> {
        sys::link_at(self.dir(), &self.name, to.dir(), &to.name)
    }

    /// renameat2(2) of this entry to `to`.
    pub fn rename_to(&self, to: &At<'_>, flags: u32) -> io::Result<()> {
        sys::rename_at(self.dir(), &self.name, to.dir(), &to.name, flags)
    }

    pub fn unlink(&self) -> io::Result<()> {
        sys::unlink_at(self.dir(), &self.name, 0)
    }

    pub fn rmdir(&self) -> io::Result<()> {
        sys::unlink_at(self.dir(), &self.name, libc::AT_REMOVEDIR)
    }

    /// Removes the entry, with everything below it if it is a directory.
    pub fn remove_all(&self) -> io::Result<()> {
        sys::remove_all_at(self.dir(), &self.name)
    }

    /// lchown(2); `None` leaves that id.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        sys::chown_at(self.dir(), &self.name, uid, gid)
    }

    /// chmod(2) (not for symlinks).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        sys::chmod_at(self.dir(), &self.name, mode)
    }

    pub fn set_times(&self, atime: sys::Time, mtime: sys::Time) -> io::Result<()> {
        sys::set_times_at(self.dir(), &self.name, atime, mtime)
    }

    pub fn read_link(&self) -> io::Result<Vec<u8>> {
        sys::read_link_at(self.dir(), &self.name)
    }

    /// The names in this directory.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        sys::dir_names(self.open_dir()?)
    }

    /// A short path the xattr calls can use for this entry.
    pub fn xattr_path(&self) -> io::Result<CString> {
        sys::proc_path(self.dir().as_raw_fd(), self.name.as_bytes())
    }

    pub fn get_xattr(&self, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        sys::get_xattr(&self.xattr_path()?, name)
    }

    pub fn set_xattr(&self, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        sys::set_xattr(&self.xattr_path()?, name, value, flags)
    }

    pub fn remove_xattr(&self, name: &[u8]) -> io::Result<()> {
        sys::remove_xattr(&self.xattr_path()?, name)
    }

    pub fn list_xattrs(&self) -> io::Result<Vec<Vec<u8>>> {
        sys::list_xattrs(&self.xattr_path()?)
    }
}

pub struct UpperDir {
    dir: PathBuf,
    root: PathBuf,
    /// `root/` and `work/`, open for the `*at` calls.
    root_fd: OwnedFd,
    work_fd: OwnedFd,
    /// Filesystem block size: written ranges are whole blocks.
    block: u64,
    temp_counter: AtomicU64,
    _lock: File,
}

fn open_dir(path: &Path) -> Result<OwnedFd, MountError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| MountError::Io { path: path.to_owned(), source })
}

impl UpperDir {
    /// Opens (creating if needed) the writable layer in `dir` for `image`.
    /// Clears `work/`: entries half made by an interrupted operation, and
    /// files unlinked while open when the last mount ended (their blocks are
    /// freed here if that mount's process died).
    pub fn open(dir: &Path, image: &ImageId) -> Result<Self, MountError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| MountError::Io { path, source }
        };
        let root = dir.join("root");
        let work = dir.join("work");
        fs::create_dir_all(&root).map_err(io(&root))?;
        fs::create_dir_all(&work).map_err(io(&work))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(MountError::UpperInUse(dir.to_owned()));
        }
        let marker = dir.join("strata-upper");
        let expected = format!("{FORMAT}\nimage {}\n", image.to_hex());
        match fs::read_to_string(&marker) {
            Ok(found) if found == expected => {}
            Ok(found) => {
                let other = found.lines().find_map(|l| l.strip_prefix("image ")).unwrap_or("?").to_owned();
                return Err(MountError::UpperOfOtherImage { dir: dir.to_owned(), image: other });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut f = File::create(&marker).map_err(io(&marker))?;
                f.write_all(expected.as_bytes()).and_then(|()| f.sync_all()).map_err(io(&marker))?;
            }
            Err(e) => return Err(io(&marker)(e)),
        }
        let root_fd = open_dir(&root)?;
        let work_fd = open_dir(&work)?;
        for name in sys::dir_names(
            sys::open_at(work_fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io(&work))?,
        )
        .map_err(io(&work))?
        {
            let c = sys::c_bytes(&name).map_err(io(&work))?;
            sys::remove_all_at(work_fd.as_fd(), &c).map_err(io(&work))?;
        }
        let block = fs::metadata(&root).map_err(io(&root))?.blksize().max(512);
        let upper = Self {
            dir: dir.to_owned(),
            root,
            root_fd,
            work_fd,
            block,
            temp_counter: AtomicU64::new(0),
            _lock: lock,
        };
        upper.probe_holes()?;
        Ok(upper)
    }

    /// The image a writable layer directory belongs to, read without
    /// taking it (a mount may be serving it).
    pub fn image_of(dir: &Path) -> Result<ImageId, MountError> {
        let marker = dir.join("strata-upper");
        let text =
            fs::read_to_string(&marker).map_err(|source| MountError::Io { path: marker.clone(), source })?;
        let bad = || MountError::Io {
            path: marker.clone(),
            source: io::Error::other("not a strata writable layer"),
        };
        if text.lines().next() != Some(FORMAT) {
            return Err(bad());
        }
        let hex = text.lines().find_map(|l| l.strip_prefix("image ")).ok_or_else(bad)?;
        hex.parse().map_err(|_| bad())
    }

    /// Whether a mount holds the writable layer in `dir` (its lock, which
    /// every mount of it takes for as long as it lives).
    ///
    /// Errors: `dir` is not a writable layer (no `strata-upper`), or I/O.
    /// Looked up in /proc/locks, without taking the lock (a mount starting
    /// meanwhile must not find it taken).
    pub fn in_use(dir: &Path) -> Result<bool, MountError> {
        Self::image_of(dir)?;
        let path = dir.join("lock");
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(MountError::Io { path, source }),
        };
        let locks = fs::read_to_string("/proc/locks")
            .map_err(|source| MountError::Io { path: "/proc/locks".into(), source })?;
        // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF": MAJOR:MINOR:INODE.
        let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
        Ok(locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&"FLOCK") && fields.iter().any(|f| *f == wanted)
        }))
    }

    /// Deletes the writable layer in `dir`, holding its lock meanwhile so
    /// that no mount takes it half deleted.
    ///
    /// Errors: [`MountError::UpperInUse`] while a mount holds it; `dir` is
    /// not a writable layer; I/O.
    pub fn remove(dir: &Path) -> Result<(), MountError> {
        Self::image_of(dir)?;
        let io = |source| MountError::Io { path: dir.to_owned(), source };
        let Some(_lock) = Self::claim(dir)? else {
            return Err(MountError::UpperInUse(dir.to_owned()));
        };
        // Everything but the lock first (a mount starting now finds no
        // marker and refuses), then the rest.
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name() == "lock" {
                continue;
            }
            let path = entry.path();
            match entry.file_type().map_err(io)?.is_dir() {
                true => fs::remove_dir_all(&path),
                false => fs::remove_file(&path),
            }
            .map_err(|source| MountError::Io { path, source })?;
        }
        fs::remove_dir_all(dir).map_err(io)
    }

    /// The layer's lock if no mount holds it.
    fn claim(dir: &Path) -> Result<Option<File>, MountError> {
        let path = dir.join("lock");
        let lock = match File::open(&path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Some(
                    File::open(dir).map_err(|source| MountError::Io { path: dir.to_owned(), source })?,
                ))
            }
            Err(source) => return Err(MountError::Io { path, source }),
        };
        // SAFETY: flock on an open descriptor.
        Ok((unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(lock))
    }

    /// Chunk-level copy-on-write needs a filesystem that reports holes.
    fn probe_holes(&self) -> Result<(), MountError> {
        let at = self.temp();
        let path = self.dir.join("work");
        let io = |source| MountError::Io { path: path.clone(), source };
        let file = at.create_file(0o600).map_err(io)?;
        let result = (|| {
            file.set_len(4 << 20)?;
            file.write_all_at(b"x", 2 << 20)?;
            sys::seek(&file, 0, libc::SEEK_DATA)
        })();
        let _ = at.unlink();
        match result.map_err(io)? {
            Some(first_data) if first_data > 0 => Ok(()),
            _ => Err(MountError::NoHoles(self.dir.clone())),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// The upper entry of merged path `rel` ("" is the root), reached by
    /// descriptors: its parent directory is opened relative to `root/` (in
    /// pieces shorter than PATH_MAX when the path is longer).
    pub fn at(&self, rel: &[u8]) -> io::Result<At<'_>> {
        at_in(self.root_fd.as_fd(), rel)
    }

    /// A fresh name in the work directory, for an entry being made.
    pub fn temp(&self) -> At<'_> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!("t{}-{n}", std::process::id())).unwrap_or_default();
        At { dir: DirFd::Borrowed(self.work_fd.as_fd()), name }
    }

    /// Where the upper entry of inode `ino` lives while it has no name: it
    /// was unlinked or renamed over while the kernel still held it (open
    /// files, a working directory). Removed when the kernel forgets the
    /// inode, or by the next mount.
    pub fn orphan(&self, ino: u64) -> At<'_> {
        let name = CString::new(format!("o{ino}")).unwrap_or_default();
        At { dir: DirFd::Borrowed(self.work_fd.as_fd()), name }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The entry at `rel` below the directory `root` ("" is `root` itself),
/// reached by descriptors: its parent directory is opened relative to
/// `root` (in pieces shorter than PATH_MAX when the path is longer). `rel`
/// is a merged path: its parents are directories (only the last component
/// of each piece is opened with O_NOFOLLOW).
fn at_in<'u>(root: BorrowedFd<'u>, rel: &[u8]) -> io::Result<At<'u>> {
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    if rel.is_empty() {
        return Ok(At { dir: DirFd::Borrowed(root), name: c".".to_owned() });
    }
    let (parent, name) = match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    let name = sys::c_bytes(name)?;
    if parent.is_empty() {
        return Ok(At { dir: DirFd::Borrowed(root), name });
    }
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut rest = parent;
    let mut dir: Option<OwnedFd> = None;
    while !rest.is_empty() {
        let cut = if rest.len() <= PATH_PIECE {
            rest.len()
        } else {
            rest[..PATH_PIECE]
                .iter()
                .rposition(|b| *b == b'/')
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?
        };
        let piece = sys::c_bytes(&rest[..cut])?;
        let from = dir.as_ref().map_or(root, |d| d.as_fd());
        dir = Some(sys::open_at(from, &piece, flags, 0)?);
        rest = rest.get(cut + 1..).unwrap_or_default();
    }
    let dir = dir.map_or(DirFd::Borrowed(root), DirFd::Owned);
    Ok(At { dir, name })
}

/// Marks the entry at merged path `rel` of the writable layer in `dir` as
/// container setup made by `strata run` (docker's init layer), recording
/// its path, mode, owner, group and mtime as they are now. Call it once
/// the setup is made through the mount, before the container starts. The
/// layer may be mounted (the mark is one of Strata's private xattrs, which
/// the mount never shows nor copies).
///
/// Errors: [`MountError::Io`] when `rel` is not a canonical relative path
/// (EINVAL), passes through a symlink or is not in the layer's `root/` (it
/// was not made through a mount of this layer), or the xattr cannot be set.
pub fn mark_init(dir: &Path, rel: &[u8]) -> Result<(), MountError> {
    let root = dir.join("root");
    let path = join_host(&root, rel);
    let io = |source| MountError::Io { path: path.clone(), source };
    let canonical =
        !rel.is_empty() && rel.split(|b| *b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..");
    if !canonical {
        return Err(io(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let (parent, name) = match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b"."[..], rel),
    };
    let root_fd = open_dir(&root)?;
    let parent = sys::c_bytes(parent).map_err(io)?;
    let parent_fd =
        sys::open_beneath(root_fd.as_fd(), &parent, libc::O_PATH | libc::O_DIRECTORY).map_err(io)?;
    let at = At { dir: DirFd::Owned(parent_fd), name: sys::c_bytes(name).map_err(io)? };
    let st = at.stat().map_err(io)?;
    at.set_xattr(INIT, &init_mark(rel, &st), 0).map_err(io)
}

fn join_host(root: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(rel.strip_prefix(b"/").unwrap_or(rel)))
}

/// What [`mark_init`] records: the path, then mode, owner, group, mtime.
fn init_mark(rel: &[u8], st: &libc::stat) -> Vec<u8> {
    let mut mark = rel.to_vec();
    mark.push(0);
    mark.extend_from_slice(
        format!(
            "{:o} {} {} {}.{:09}",
            st.st_mode & 0o7777,
            st.st_uid,
            st.st_gid,
            st.st_mtime,
            st.st_mtime_nsec
        )
        .as_bytes(),
    );
    mark
}

/// Whether the entry at `path` (an [`At::xattr_path`]), found at merged
/// path `rel`, is container setup still as [`mark_init`] recorded it: same
/// path (not renamed or linked elsewhere since), mode, owner, group and
/// mtime, and no xattr of its own. `None` when it is not marked.
pub fn init_unchanged(path: &CStr, rel: &[u8], st: &libc::stat) -> io::Result<Option<bool>> {
    let Some(mark) = sys::get_xattr(path, INIT)? else { return Ok(None) };
    if mark != init_mark(rel, st) {
        return Ok(Some(false));
    }
    Ok(Some(sys::list_xattrs(path)?.iter().all(|name| is_private_xattr(name))))
}

/// A character device 0/0 records a deletion (as overlayfs does).
pub fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_file(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

pub fn make_whiteout(at: &At<'_>) -> io::Result<()> {
    at.mknod(libc::S_IFCHR, 0)
}

/// Xattr calls take a path: `path` is an [`At::xattr_path`] or a plain one.
pub fn is_opaque(path: &CStr) -> io::Result<bool> {
    Ok(sys::get_xattr(path, OPAQUE)?.is_some())
}

pub fn set_opaque(path: &CStr) -> io::Result<()> {
    sys::set_xattr(path, OPAQUE, b"y", 0)
}

pub fn origin(path: &CStr) -> io::Result<Option<Origin>> {
    let Some(lower_path) = sys::get_xattr(path, ORIGIN)? else { return Ok(None) };
    let lower_size = match sys::get_xattr(path, LOWER_SIZE)? {
        Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        None => 0,
    };
    Ok(Some(Origin { lower_path, lower_size }))
}

pub fn set_origin(path: &CStr, origin: &Origin) -> io::Result<()> {
    set_lower_size(path, origin.lower_size)?;
    sys::set_xattr(path, ORIGIN, &origin.lower_path, 0)
}

pub fn set_lower_size(path: &CStr, size: u64) -> io::Result<()> {
    sys::set_xattr(path, LOWER_SIZE, size.to_string().as_bytes(), 0)
}

/// [`set_lower_size`] on an open upper file: its inode, whatever its names
/// are by now.
pub fn set_lower_size_of(file: &File, size: u64) -> io::Result<()> {
    sys::fset_xattr(file, LOWER_SIZE, size.to_string().as_bytes())
}

pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_XATTR_PREFIX)
}
