//! `strata uppers`: the writable layers under DATA_DIR/uppers (those
//! `strata mount` and `strata run` make when no `--upper` is given, and
//! any other a mount record names), what they belong to, what they take on
//! disk, and removing those no mount holds.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_mount::upper::UpperDir;

use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Result};

/// One writable layer.
#[derive(Clone, Debug, Serialize)]
pub struct UpperInfo {
    /// Its directory.
    pub path: PathBuf,
    /// Its name under DATA_DIR/uppers (what `strata uppers rm` takes), or
    /// its path for one elsewhere.
    pub name: String,
    /// The image it was made for (hex id), if its marker says.
    pub image_id: Option<String>,
    /// That image's names in the store (empty: the image is gone).
    pub image_names: Vec<String>,
    /// Bytes its files take on disk (allocated blocks: copied-up files
    /// hold only the blocks written).
    pub disk_bytes: u64,
    /// Whether a mount holds it now.
    pub in_use: bool,
    /// The mountpoint of the mount a record says uses it.
    pub mountpoint: Option<PathBuf>,
    /// Last change to its tree, seconds since the epoch.
    pub modified_unix: u64,
}

/// The writable layers of this data dir: every directory under
/// DATA_DIR/uppers, and the `--upper` directories of recorded mounts.
///
/// Errors: the uppers directory cannot be read.
pub fn list(dir: &DataDir) -> Result<Vec<UpperInfo>> {
    let parent = dir.path.join("uppers");
    let records = crate::mounts::list(&dir.path)?;
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&parent) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", parent.display())),
    };
    for (record, _) in &records {
        if let Some(upper) = record.upper.as_ref().filter(|u| !paths.contains(u)) {
            paths.push(upper.clone());
        }
    }
    let store = if dir.store_dir().exists() { dir.read_store().ok() } else { None };
    let mut out = Vec::new();
    for path in paths {
        let image = UpperDir::image_of(&path).ok();
        let image_names = match (&store, &image) {
            (Some(store), Some(id)) => {
                store.image_names(id).map(|n| n.into_iter().collect()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mountpoint =
            records.iter().find(|(r, _)| r.upper.as_ref() == Some(&path)).map(|(r, _)| r.mountpoint.clone());
        let (disk_bytes, modified_unix) = usage(&path);
        out.push(UpperInfo {
            name: name_of(&parent, &path),
            in_use: image.is_some() && UpperDir::in_use(&path).unwrap_or(false),
            image_id: image.map(|id| id.to_hex()),
            image_names,
            disk_bytes,
            mountpoint,
            modified_unix,
            path,
        });
    }
    out.sort_by(|a, b| b.modified_unix.cmp(&a.modified_unix).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// Removes writable layers: each of `names` (a name under DATA_DIR/uppers
/// or a path), or with `unused` every one under DATA_DIR/uppers no mount
/// holds. Returns those removed.
///
/// Errors: a name that is no writable layer of this data dir, or one a
/// mount holds (checked for all before any is removed); I/O.
pub fn remove(dir: &DataDir, names: &[String], unused: bool) -> Result<Vec<UpperInfo>> {
    let all = list(dir)?;
    let parent = dir.path.join("uppers");
    let mut chosen = Vec::new();
    for name in names {
        let Some(upper) = all.iter().find(|u| u.name == *name || u.path == Path::new(name)) else {
            refuse!("{name} is not a writable layer of {} (see `strata uppers`)", dir.path.display());
        };
        if upper.in_use {
            let at = upper.mountpoint.as_ref().map(|m| format!(" at {}", m.display())).unwrap_or_default();
            refuse!("{name} is in use by a mount{at}: unmount it first");
        }
        chosen.push(upper.clone());
    }
    if unused {
        // A directory with no marker yet may be a mount's that is still
        // starting (its image being fetched): only old ones go.
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let settled =
            |u: &UpperInfo| u.image_id.is_some() || now.saturating_sub(u.modified_unix) > UNMARKED_GRACE_SECS;
        chosen.extend(all.iter().filter(|u| !u.in_use && u.path.starts_with(&parent) && settled(u)).cloned());
    }
    let mut seen = std::collections::HashSet::new();
    chosen.retain(|u| seen.insert(u.path.clone()));
    for upper in &chosen {
        match upper.image_id {
            Some(_) => UpperDir::remove(&upper.path)?,
            // Under DATA_DIR/uppers without a marker: made for a mount that
            // never started.
            None => std::fs::remove_dir_all(&upper.path)
                .with_context(|| format!("removing {}", upper.path.display()))?,
        }
        // A dead mount's record that named it goes with it.
        if let Some(mountpoint) = &upper.mountpoint {
            if !crate::mounts::mounted_strata_paths().contains(mountpoint) {
                crate::mounts::remove(&dir.path, mountpoint);
            }
        }
    }
    Ok(chosen)
}

/// How old a writable layer directory with no marker must be before
/// `prune` takes it for one a failed mount left.
const UNMARKED_GRACE_SECS: u64 = 3600;

fn name_of(parent: &Path, path: &Path) -> String {
    match path.strip_prefix(parent) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// Allocated bytes under `dir` and its latest mtime (seconds).
fn usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut newest) = (0u64, 0u64);
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        bytes += meta.blocks() * 512;
        newest = newest.max(meta.mtime().max(0) as u64);
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, newest)
}
