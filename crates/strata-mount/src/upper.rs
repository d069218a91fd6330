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
//! - An opaque directory (lower children hidden) has `trusted.strata.opaque`.
//! - A copied-up file keeps its lower data where it was not written: it is a
//!   sparse file of the right size whose holes read from the lower file named
//!   by `trusted.strata.origin` (its path in the lower tree), below the offset
//!   in `trusted.strata.lower_size`. Written ranges are whole filesystem blocks
//!   of data, so SEEK_DATA / SEEK_HOLE tell them apart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
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

/// Where a copied-up file's unwritten bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file's path in the lower tree.
    pub lower_path: Vec<u8>,
    /// Bytes below this offset that the upper file does not hold come from
    /// the lower file; above it they are zeros.
    pub lower_size: u64,
}

pub struct UpperDir {
    dir: PathBuf,
    root: PathBuf,
    work: PathBuf,
    /// Filesystem block size: written ranges are whole blocks.
    block: u64,
    temp_counter: AtomicU64,
    _lock: File,
}

impl UpperDir {
    /// Opens (creating if needed) the writable layer in `dir` for `image`.
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
        // Clear what an interrupted operation left half made.
        if let Ok(entries) = fs::read_dir(&work) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
        let block = fs::metadata(&root).map_err(io(&root))?.blksize().max(512);
        let upper =
            Self { dir: dir.to_owned(), root, work, block, temp_counter: AtomicU64::new(0), _lock: lock };
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

    /// Chunk-level copy-on-write needs a filesystem that reports holes.
    fn probe_holes(&self) -> Result<(), MountError> {
        let path = self.temp_path();
        let io = |source| MountError::Io { path: path.clone(), source };
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(&path).map_err(io)?;
        let result = (|| {
            file.set_len(4 << 20)?;
            file.write_all_at(b"x", 2 << 20)?;
            sys::seek(&file, 0, libc::SEEK_DATA)
        })();
        let _ = fs::remove_file(&path);
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

    /// The upper path of merged path `rel` ("" is the root).
    pub fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }

    /// A fresh name in the work directory.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("t{}-{n}", std::process::id()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

pub fn make_whiteout(path: &Path) -> io::Result<()> {
    sys::mknod(path, libc::S_IFCHR, 0)
}

pub fn is_opaque(path: &Path) -> io::Result<bool> {
    Ok(sys::get_xattr(path, OPAQUE)?.is_some())
}

pub fn set_opaque(path: &Path) -> io::Result<()> {
    sys::set_xattr(path, OPAQUE, b"y", 0)
}

pub fn origin(path: &Path) -> io::Result<Option<Origin>> {
    let Some(lower_path) = sys::get_xattr(path, ORIGIN)? else { return Ok(None) };
    let lower_size = match sys::get_xattr(path, LOWER_SIZE)? {
        Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        None => 0,
    };
    Ok(Some(Origin { lower_path, lower_size }))
}

pub fn set_origin(path: &Path, origin: &Origin) -> io::Result<()> {
    set_lower_size(path, origin.lower_size)?;
    sys::set_xattr(path, ORIGIN, &origin.lower_path, 0)
}

pub fn set_lower_size(path: &Path, size: u64) -> io::Result<()> {
    sys::set_xattr(path, LOWER_SIZE, size.to_string().as_bytes(), 0)
}

pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_XATTR_PREFIX)
}
