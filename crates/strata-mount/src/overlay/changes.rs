//! Changes of names: new entries, removal (whiteouts), rename, link.

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
        if nodes.get(parent).is_some_and(|p| p.detached) {
            return Err(libc::ENOENT);
        }
        self.copy_up(&mut nodes, parent)?;
        let upper = self.upper()?;
        let dest = self.child_at(&nodes, parent, name)?;
        let over_whiteout = dest.try_stat().map_err(ioe)?.is_some_and(|st| upper::is_whiteout(&st));
        let hides_lower = over_whiteout || self.lower_has(&nodes, parent, name);
        // New entries take the directory's group where it is setgid.
        let setgid_dir = u32::from(parent_attr.perm) & libc::S_ISGID != 0;
        let gid = if setgid_dir { parent_attr.gid } else { caller.gid };
        let tmp = upper.temp();
        let is_dir = matches!(entry, NewEntry::Dir { .. });
        let (mut file, mut mode) = (None, 0);
        let made = match entry {
            NewEntry::File { mode: m } => {
                mode = m;
                tmp.create_file(0o600).map(|f| {
                    file = Some(f);
                })
            }
            NewEntry::Dir { mode: m } => {
                mode = m | if setgid_dir { libc::S_ISGID } else { 0 };
                tmp.mkdir(0o700).and_then(|()| {
                    if hides_lower {
                        upper::set_opaque(&tmp.xattr_path()?)
                    } else {
                        Ok(())
                    }
                })
            }
            NewEntry::Special { mode: m, rdev } => {
                if m & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                    // A character device 0/0 is how the upper layer records a deletion.
                    return Err(libc::EPERM);
                }
                mode = m;
                tmp.mknod(m & libc::S_IFMT | 0o600, rdev)
            }
            NewEntry::Symlink { target } => tmp.symlink(target),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            tmp.chown(Some(caller.uid), Some(gid))?;
            if !matches!(entry, NewEntry::Symlink { .. }) {
                tmp.chmod(mode & 0o7777)?;
            }
            place(&tmp, &dest, over_whiteout)
        };
        if let Err(e) = finish() {
            let _ = tmp.remove_all();
            return Err(ioe(e));
        }
        let mut node = Node::new(parent, name, None, true);
        node.opaque = is_dir && hides_lower;
        let ino = nodes.insert(None, node);
        self.names_changed();
        let attr = self.attr_locked(&nodes, ino)?;
        nodes.remember(ino);
        Ok((ino, attr, file))
    }

    /// unlink (`dir` false) or rmdir (`dir` true). An inode the kernel
    /// still holds (an open file, a working directory) and that this was
    /// the last name of stays usable: its upper entry moves to its orphan
    /// until the kernel forgets it.
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> OpResult<()> {
        let mut nodes = self.nodes.lock();
        self.upper()?;
        let ino = self.resolve(&mut nodes, parent, name)?.ok_or(libc::ENOENT)?;
        let is_dir = self.check_kind(&mut nodes, ino, dir)?;
        self.copy_up(&mut nodes, parent)?;
        if !is_dir {
            self.copy_up_if_hardlinked(&mut nodes, ino)?;
        }
        let dest = self.child_at(&nodes, parent, name)?;
        let whiteout = self.lower_has(&nodes, parent, name);
        let keep = self.keeps_inode(&nodes, ino);
        if keep && !is_dir {
            self.link_orphan(&nodes, ino, &dest)?;
        }
        let old = self.replace_upper_entry(&dest, whiteout, keep && is_dir)?;
        if let Some(old) = old {
            old.rename_to(&self.upper()?.orphan(ino), 0).map_err(ioe)?;
        }
        nodes.remove_name(parent, name);
        self.after_name_gone(&mut nodes, ino);
        self.names_changed();
        Ok(())
    }

    /// A lower non-directory with several names is copied up before one of
    /// its names goes (its names become upper links), so the names left
    /// count right and keep showing one inode.
    fn copy_up_if_hardlinked(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        let hardlinked = nodes
            .get(ino)
            .filter(|n| !n.upper)
            .and_then(|n| n.lower)
            .and_then(|l| self.tree.get(l))
            .is_some_and(|i| i.nlink > 1);
        if hardlinked {
            self.copy_up(nodes, ino)?;
        }
        Ok(())
    }

    /// Whether removing a name of `ino` must keep the inode: the kernel
    /// holds it and this is the last name known here.
    fn keeps_inode(&self, nodes: &Nodes, ino: u64) -> bool {
        nodes.get(ino).is_some_and(|n| n.lookups > 0) && !nodes.has_other_names(ino)
    }

    /// Gives the upper entry at `dest` (the name about to go) the orphan
    /// name of `ino` as a further link, so its data outlives the name.
    fn link_orphan(&self, nodes: &Nodes, ino: u64, dest: &At<'_>) -> OpResult<()> {
        if !nodes.get(ino).is_some_and(|n| n.upper) {
            return Ok(());
        }
        let orphan = self.upper()?.orphan(ino);
        match dest.link_to(&orphan) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A stale orphan of an earlier life of this number: replace it.
                orphan.remove_all().map_err(ioe)?;
                dest.link_to(&orphan).map_err(ioe)
            }
            Err(e) => Err(ioe(e)),
        }
    }

    /// After a name of `ino` went: an inode left with no name that the
    /// kernel does not hold goes at once.
    /// A kept inode's cached descriptor stays valid: it follows the inode.
    fn after_name_gone(&self, nodes: &mut Nodes, ino: u64) {
        if let Some(node) = nodes.drop_detached(ino) {
            self.drop_orphan(ino, &node);
        }
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
    /// With `keep`, the old entry is not deleted but returned, in the work
    /// directory, for the caller to keep.
    pub(super) fn replace_upper_entry(
        &self,
        dest: &At<'_>,
        whiteout: bool,
        keep: bool,
    ) -> OpResult<Option<At<'_>>> {
        let upper = self.upper()?;
        let exists = dest.try_stat().map_err(ioe)?.is_some();
        if !whiteout {
            if !exists {
                return Ok(None);
            }
            if keep {
                let tmp = upper.temp();
                dest.rename_to(&tmp, 0).map_err(ioe)?;
                return Ok(Some(tmp));
            }
            dest.remove_all().map_err(ioe)?;
            return Ok(None);
        }
        let tmp = upper.temp();
        upper::make_whiteout(&tmp).map_err(ioe)?;
        if exists {
            tmp.rename_to(dest, libc::RENAME_EXCHANGE).map_err(ioe)?;
            if keep {
                return Ok(Some(tmp));
            }
            tmp.remove_all().map_err(ioe)?;
        } else {
            tmp.rename_to(dest, 0).map_err(ioe)?;
        }
        Ok(None)
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
        let src_path = self.child_at(&nodes, parent, name)?;
        let dst_path = self.child_at(&nodes, new_parent, new_name)?;
        if exchange {
            let dst = dst.ok_or(libc::ENOENT)?;
            self.copy_up_tree(&mut nodes, dst)?;
            src_path.rename_to(&dst_path, libc::RENAME_EXCHANGE).map_err(ioe)?;
            nodes.rename(src, parent, name, new_parent, new_name);
            nodes.rename(dst, new_parent, new_name, parent, name);
            self.names_changed();
            return Ok(());
        }
        // What the destination holds in the upper layer goes: a whiteout, or
        // a directory that is empty in the merged view (only whiteouts), or
        // the entry renamed over. An inode the kernel still holds keeps its
        // upper entry as its orphan.
        if let Some(d) = dst {
            // First, so that its other names are known when deciding.
            self.copy_up_if_hardlinked(&mut nodes, d)?;
        }
        let kept = dst.filter(|d| self.keeps_inode(&nodes, *d));
        if let Some(d) = kept {
            let orphan = self.upper()?.orphan(d);
            if nodes.get(d).is_some_and(|n| n.upper) {
                dst_path.rename_to(&orphan, 0).map_err(ioe)?;
            }
        } else if dst_path.try_stat().map_err(ioe)?.is_some() {
            dst_path.remove_all().map_err(ioe)?;
        }
        let leave_whiteout = self.lower_has(&nodes, parent, name);
        if leave_whiteout {
            // The whiteout appears in the same step as the move where the
            // filesystem can; otherwise just after it.
            if let Err(e) = src_path.rename_to(&dst_path, libc::RENAME_WHITEOUT) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(ioe(e));
                }
                src_path.rename_to(&dst_path, 0).map_err(ioe)?;
                upper::make_whiteout(&src_path).map_err(ioe)?;
            }
        } else {
            src_path.rename_to(&dst_path, 0).map_err(ioe)?;
        }
        if let Some(d) = dst {
            nodes.remove_name(new_parent, new_name);
            self.after_name_gone(&mut nodes, d);
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
        let src = self.upper_at(&nodes, ino)?;
        let dest = self.child_at(&nodes, new_parent, new_name)?;
        let tmp = upper.temp();
        src.link_to(&tmp).map_err(ioe)?;
        if let Err(e) = tmp.rename_to(&dest, 0) {
            let _ = tmp.unlink();
            return Err(ioe(e));
        }
        if nodes.add_name(new_parent, new_name, ino) {
            // linkat of an unlinked file: it has a name again.
            let _ = upper.orphan(ino).unlink();
        }
        self.names_changed();
        let attr = self.attr_locked(&nodes, ino)?;
        nodes.remember(ino);
        Ok(attr)
    }
}
