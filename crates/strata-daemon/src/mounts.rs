//! Mount records: one JSON file per mount under `DATA_DIR/mounts/`, written by
//! the process that serves the mount once it is live and removed when it
//! ends. A record whose process is gone names a dead mount that `strata
//! umount` clears.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};

/// One mount, as its serving process recorded it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    pub mountpoint: PathBuf,
    /// The reference the mount was asked for.
    pub image: String,
    pub image_id: String,
    pub read_only: bool,
    /// The writable layer, for a writable mount.
    pub upper: Option<PathBuf>,
    pub pid: u32,
    pub started_unix: u64,
    /// Where the serving process logs.
    pub log: PathBuf,
}

/// Whether a recorded mount is still served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountState {
    /// Served: the process runs and the kernel has the mount.
    Live,
    /// The kernel has the mount but its process is gone: reads fail with
    /// ENOTCONN until `strata umount` clears it.
    Dead,
    /// Neither process nor mount remain; the record is left over.
    Gone,
}

pub fn records_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mounts")
}

/// The file stem of the record for `mountpoint`.
pub fn record_key(mountpoint: &Path) -> String {
    let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    hash.to_hex()[..16].to_owned()
}

pub fn record_path(data_dir: &Path, mountpoint: &Path) -> PathBuf {
    records_dir(data_dir).join(format!("{}.json", record_key(mountpoint)))
}

pub fn log_path(data_dir: &Path, mountpoint: &Path) -> PathBuf {
    records_dir(data_dir).join(format!("{}.log", record_key(mountpoint)))
}

/// Writes the record atomically (temporary file, then rename).
pub fn write(data_dir: &Path, record: &MountRecord) -> Result<()> {
    let path = record_path(data_dir, &record.mountpoint);
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(record)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

pub fn remove(data_dir: &Path, mountpoint: &Path) {
    let _ = fs::remove_file(record_path(data_dir, mountpoint));
}

pub fn find(data_dir: &Path, mountpoint: &Path) -> Option<MountRecord> {
    let bytes = fs::read(record_path(data_dir, mountpoint)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every record, with the state of its mount.
pub fn list(data_dir: &Path) -> Result<Vec<(MountRecord, MountState)>> {
    let dir = records_dir(data_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mounted = mounted_strata_paths();
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(record) = serde_json::from_slice::<MountRecord>(&bytes) else {
            tracing::warn!(record = %path.display(), "ignoring an unreadable mount record");
            continue;
        };
        let state = match (process_alive(record.pid), mounted.contains(&record.mountpoint)) {
            (true, true) => MountState::Live,
            (false, true) => MountState::Dead,
            (_, false) => MountState::Gone,
        };
        out.push((record, state));
    }
    out.sort_by(|a, b| a.0.mountpoint.cmp(&b.0.mountpoint));
    Ok(out)
}

pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {
            // A zombie has exited: it serves nothing.
            !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        }
        Err(_) => false,
    }
}

/// Mountpoints of Strata's FUSE mounts, from /proc/self/mountinfo.
pub fn mounted_strata_paths() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = right.split(' ');
            let (fstype, source) = (fields.next()?, fields.next()?);
            // Mounted directly the type is "fuse", through fusermount "fuse.strata";
            // the source is always ours.
            if !fstype.starts_with("fuse") || !source.starts_with("strata") {
                return None;
            }
            Some(PathBuf::from(unescape_mountinfo(left.split(' ').nth(4)?)))
        })
        .collect()
}

/// The `strata mount-serve` process serving `mountpoint`, found by its
/// command line in /proc: its pid and the data dir it was started for
/// (`--data-dir`). `None` when no such process runs.
pub fn serving_process(mountpoint: &Path) -> Option<(u32, PathBuf)> {
    let wanted = mountpoint.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serve = args.iter().position(|a| *a == b"mount-serve")?;
        // mount-serve IMAGE MOUNTPOINT …
        if args.get(serve + 2) != Some(&wanted) {
            return None;
        }
        let data_dir = args.iter().position(|a| *a == b"--data-dir").and_then(|i| args.get(i + 1))?;
        Some((pid, PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(data_dir))))
    })
}

/// The processes that keep `mountpoint` busy, as fuser(1) finds them: a
/// working directory, root, open file or mapped file under it. Each as
/// "NAME (pid N)", at most `limit` of them.
pub fn holders(mountpoint: &Path, limit: usize) -> Vec<String> {
    let under = |link: PathBuf| fs::read_link(link).is_ok_and(|target| target.starts_with(mountpoint));
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id();
    procs
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let held = pid != me
                && (under(dir.join("cwd"))
                    || under(dir.join("root"))
                    || fs::read_dir(dir.join("fd"))
                        .is_ok_and(|fds| fds.flatten().any(|fd| under(fd.path())))
                    || fs::read_to_string(dir.join("maps")).is_ok_and(|maps| {
                        maps.lines()
                            .filter_map(|l| l.split_whitespace().nth(5))
                            .any(|p| Path::new(p).starts_with(mountpoint))
                    }));
            held.then(|| {
                let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                format!("{} (pid {pid})", name.trim())
            })
        })
        .take(limit)
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape_mountinfo(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
