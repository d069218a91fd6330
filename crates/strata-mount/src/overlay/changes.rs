//! Changes of names: new entries, removal (whiteouts), rename, link.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use super::*;

impl Overlay {
    /// Creates `name` in `parent`; for a file also returns it opened read-write.
    pub fn make(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        entry: NewEntry<'_>,
    ) -> OpResult<(u64, FileAttr, Option<File>)> {
        let mut nodes = self.nodes.lock();
        if self.resolve(&mut nodes, parent, name)?.is_some() {
            return Err(libc::EEXIST);
        }
        let parent_attr = self.attr_locked(&nodes, parent)?;
        if parent_attr.kind != fuser::FileType::Directory {
            return Err(libc::ENOTDIR);
        }
        self.copy_up(&mut nodes, parent)?;
        let upper = self.upper()?;
        let dest = upper.path(&join(&nodes.path(parent), name));
        let over_whiteout = fs::symlink_metadata(&dest).is_ok_and(|m| upper::is_whiteout(&m));
        let hides_lower = over_whiteout || self.lower_has(&nodes, parent, name);
        // New entries take the directory's group where it is setgid.
        let setgid_dir = u32::from(parent_attr.perm) & libc::S_ISGID != 0;
        let gid = if setgid_dir { parent_attr.gid } else { caller.gid };
        let tmp = upper.temp_path();
        let is_dir = matches!(entry, NewEntry::Dir { .. });
        let (mut file, mut mode) = (None, 0);
        let made = match entry {
            NewEntry::File { mode: m } => {
                mode = m;
                OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&tmp).map(|f| {
                    file = Some(f);
                })
            }
            NewEntry::Dir { mode: m } => {
                mode = m | if setgid_dir { libc::S_ISGID } else { 0 };
                fs::create_dir(&tmp).and_then(|()| if hides_lower { upper::set_opaque(&tmp) } else { Ok(()) })
            }
            NewEntry::Special { mode: m, rdev } => {
                if m & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                    // A character device 0/0 is how the upper layer records a deletion.
                    return Err(libc::EPERM);
                }
                mode = m;
                sys::mknod(&tmp, m & libc::S_IFMT | 0o600, rdev)
            }
            NewEntry::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            std::os::unix::fs::lchown(&tmp, Some(caller.uid), Some(gid))?;
            if !matches!(entry, NewEntry::Symlink { .. }) {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            place(&tmp, &dest, over_whiteout)
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir(&tmp).or_else(|_| fs::remove_file(&tmp));
            return Err(ioe(e));
        }
        let node = Node {
            parent,
            name: name.into(),
            lower: None,
            upper: true,
            opaque: is_dir && hides_lower,
            cow_lower_size: None,
        };
        let ino = nodes.insert(None, node);
        self.names_changed();
        Ok((ino, self.attr_locked(&nodes, ino)?, file))
    }

    /// unlink (`dir` false) or rmdir (`dir` true).
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> OpResult<()> {
        let mut nodes = self.nodes.lock();
        self.upper()?;
        let ino = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let is_dir = self.check_kind(&mut nodes, ino, dir)?;
        self.copy_up(&mut nodes, parent)?;
        if !is_dir && nodes.get(ino).is_some_and(|n| !n.upper) {
            // A lower file with other names: copy it up (its names become
            // upper links) so that the names left count right.
            let hardlinked = nodes
                .get(ino)
                .and_then(|n| n.lower)
                .and_then(|l| self.tree.get(l))
                .is_some_and(|i| i.nlink > 1);
            if hardlinked {
                self.copy_up(&mut nodes, ino)?;
            }
        }
        let dest = self.upper()?.path(&join(&nodes.path(parent), name));
        let whiteout = self.lower_has(&nodes, parent, name);
        self.replace_upper_entry(&dest, whiteout)?;
        nodes.remove_name(parent, name);
        self.names_changed();
        Ok(())
    }

    /// Whether `target` may be removed as (or replaced by) a directory if
    /// `dir`, else a non-directory: the kinds must match and a directory must
    /// be empty. Returns whether `target` is a directory.
    pub(super) fn check_kind(&self, nodes: &mut Nodes, target: u64, dir: bool) -> OpResult<bool> {
        let is_dir = self.kind(nodes, target)? == fuser::FileType::Directory;
        match (dir, is_dir) {
            (true, false) => Err(libc::ENOTDIR),
            (false, true) => Err(libc::EISDIR),
            (true, true) if self.has_children(nodes, target)? => Err(libc::ENOTEMPTY),
            _ => Ok(is_dir),
        }
    }

    /// Removes the upper entry at `dest` (if any), leaving a whiteout there
    /// if `whiteout`, in one rename so that a crash leaves one or the other.
    pub(super) fn replace_upper_entry(&self, dest: &std::path::Path, whiteout: bool) -> OpResult<()> {
        let upper = self.upper()?;
        let exists = fs::symlink_metadata(dest).is_ok();
        if !whiteout {
            if exists {
                remove_any(dest).map_err(ioe)?;
            }
            return Ok(());
        }
        let tmp = upper.temp_path();
        upper::make_whiteout(&tmp).map_err(ioe)?;
        if exists {
            sys::rename(&tmp, dest, libc::RENAME_EXCHANGE).map_err(ioe)?;
            remove_any(&tmp).map_err(ioe)
        } else {
            sys::rename(&tmp, dest, 0).map_err(ioe)
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
            || flags == libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
        {
            return Err(libc::EINVAL);
        }
        let mut nodes = self.nodes.lock();
        self.upper()?;
        let src = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let dst = self.resolve(&mut nodes, new_parent, new_name)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        match dst {
            Some(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
            None if exchange => return Err(libc::ENOENT),
            Some(d) if d == src => return Ok(()),
            _ => {}
        }
        let src_dir = self.kind(&nodes, src)? == fuser::FileType::Directory;
        if let (Some(d), false) = (dst, exchange) {
            self.check_kind(&mut nodes, d, src_dir)?;
        }
        self.copy_up_tree(&mut nodes, src)?;
        self.copy_up(&mut nodes, new_parent)?;
        let upper = self.upper()?;
        let src_path = upper.path(&join(&nodes.path(parent), name));
        let dst_path = upper.path(&join(&nodes.path(new_parent), new_name));
        if exchange {
            let dst = dst.ok_or(libc::ENOENT)?;
            self.copy_up_tree(&mut nodes, dst)?;
            sys::rename(&src_path, &dst_path, libc::RENAME_EXCHANGE).map_err(ioe)?;
            nodes.rename(src, parent, name, new_parent, new_name);
            nodes.rename(dst, new_parent, new_name, parent, name);
            self.names_changed();
            return Ok(());
        }
        // What the destination holds in the upper layer goes: a whiteout, or
        // a directory that is empty in the merged view (only whiteouts).
        if fs::symlink_metadata(&dst_path).is_ok() {
            remove_any(&dst_path).map_err(ioe)?;
        }
        let leave_whiteout = self.lower_has(&nodes, parent, name);
        if leave_whiteout {
            // The whiteout appears in the same step as the move where the
            // filesystem can; otherwise just after it.
            if let Err(e) = sys::rename(&src_path, &dst_path, libc::RENAME_WHITEOUT) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(ioe(e));
                }
                sys::rename(&src_path, &dst_path, 0).map_err(ioe)?;
                upper::make_whiteout(&src_path).map_err(ioe)?;
            }
        } else {
            sys::rename(&src_path, &dst_path, 0).map_err(ioe)?;
        }
        if dst.is_some() {
            nodes.remove_name(new_parent, new_name);
        }
        nodes.rename(src, parent, name, new_parent, new_name);
        self.names_changed();
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> OpResult<FileAttr> {
        let mut nodes = self.nodes.lock();
        self.upper()?;
        if self.resolve(&mut nodes, new_parent, new_name)?.is_some() {
            return Err(libc::EEXIST);
        }
        if self.kind(&nodes, ino)? == fuser::FileType::Directory {
            return Err(libc::EPERM);
        }
        self.copy_up(&mut nodes, ino)?;
        self.copy_up(&mut nodes, new_parent)?;
        let upper = self.upper()?;
        let src = upper.path(&nodes.path(ino));
        let dest = upper.path(&join(&nodes.path(new_parent), new_name));
        let tmp = upper.temp_path();
        fs::hard_link(&src, &tmp).map_err(ioe)?;
        if let Err(e) = sys::rename(&tmp, &dest, 0) {
            let _ = fs::remove_file(&tmp);
            return Err(ioe(e));
        }
        nodes.add_name(new_parent, new_name, ino);
        self.names_changed();
        self.attr_locked(&nodes, ino)
    }
}
