//! Copy-up: a lower entry made to exist in the upper directory, with its metadata.

use super::*;

impl Overlay {
    /// Makes `ino` exist in the upper directory, with the lower entry's
    /// metadata; a file's data stays below until written. A nameless inode
    /// (unlinked while open) is copied up to its orphan.
    ///
    /// Metadata is applied in the order the kernel does not undo: owner
    /// first (chown clears setuid/setgid bits and `security.capability`),
    /// then mode, then xattrs (capabilities included), then times.
    pub(super) fn copy_up(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?.clone();
        if node.upper {
            return Ok(());
        }
        let upper = self.upper()?;
        if !node.detached {
            self.copy_up(nodes, node.parent)?;
        }
        let lower_ino = node.lower.ok_or(libc::EIO)?;
        let lower = self.tree.get(lower_ino).ok_or(libc::EIO)?;
        let rel = nodes.path(ino);
        let dest = self.upper_at(nodes, ino)?;
        let tmp = upper.temp();
        let made = match lower.kind {
            Kind::Dir => tmp.mkdir(0o700),
            Kind::File => tmp.create_file(0o600).and_then(|f| f.set_len(lower.size)),
            Kind::Symlink => tmp.symlink(&lower.target),
            Kind::CharDevice => tmp.mknod(libc::S_IFCHR | 0o600, lower.rdev),
            Kind::BlockDevice => tmp.mknod(libc::S_IFBLK | 0o600, lower.rdev),
            Kind::Fifo => tmp.mknod(libc::S_IFIFO | 0o600, 0),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            let xattr_path = tmp.xattr_path()?;
            if lower.kind != Kind::Dir {
                let lower_size = if lower.kind == Kind::File { lower.size } else { 0 };
                upper::set_origin(
                    &xattr_path,
                    &Origin { lower_path: self.tree.path_of(lower_ino), lower_size },
                )?;
            }
            tmp.chown(Some(lower.uid), Some(lower.gid))?;
            if lower.kind != Kind::Symlink {
                tmp.chmod(u32::from(lower.perm))?;
            }
            // An image's own `trusted.strata.*` would pose as the layer's
            // bookkeeping (origin, lower size, opaque): never copied.
            for (name, value) in lower.xattrs.iter().filter(|(n, _)| !upper::is_private_xattr(n)) {
                sys::set_xattr(&xattr_path, name, value, 0)?;
            }
            tmp.set_times(Time::from_ns(lower.mtime_ns), Time::from_ns(lower.mtime_ns))?;
            tmp.rename_to(&dest, libc::RENAME_NOREPLACE)
        };
        if let Err(e) = finish() {
            let _ = tmp.remove_all();
            return Err(ioe(e));
        }
        if let Some(n) = nodes.get_mut(ino) {
            n.upper = true;
            if lower.kind == Kind::File {
                n.cow_lower_size = Some(lower.size);
            }
        }
        if lower.kind != Kind::Dir && lower.nlink > 1 && !node.detached {
            self.link_other_names(nodes, ino, lower_ino, &rel)?;
        }
        Ok(())
    }

    /// A copied-up hardlinked file keeps its other names: each that still
    /// shows this inode becomes a link to the upper file.
    pub(super) fn link_other_names(
        &self,
        nodes: &mut Nodes,
        ino: u64,
        lower: Ino,
        done: &[u8],
    ) -> OpResult<()> {
        let upper = self.upper()?;
        for other in self.tree.paths_of(lower) {
            if other == done || self.resolve_path(nodes, &other)? != Some(ino) {
                continue;
            }
            let (parent_path, _) = match other.iter().rposition(|b| *b == b'/') {
                Some(i) => (&other[..i], &other[i + 1..]),
                None => (&b""[..], &other[..]),
            };
            let parent = self.resolve_path(nodes, parent_path)?.ok_or(libc::ENOENT)?;
            self.copy_up(nodes, parent)?;
            let target = upper.at(&other).map_err(ioe)?;
            if target.try_stat().map_err(ioe)?.is_none() {
                upper.at(done).map_err(ioe)?.link_to(&target).map_err(ioe)?;
            }
        }
        Ok(())
    }

    /// Copies up a whole subtree and makes each directory of it opaque: the
    /// subtree no longer needs the lower tree, so it can move.
    pub(super) fn copy_up_tree(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        self.copy_up(nodes, ino)?;
        if self.kind(nodes, ino)? != fuser::FileType::Directory {
            return Ok(());
        }
        for name in self.child_names(nodes, ino)? {
            if let Some(child) = self.resolve(nodes, ino, &name)? {
                self.copy_up_tree(nodes, child)?;
            }
        }
        let at = self.upper_at(nodes, ino)?;
        upper::set_opaque(&at.xattr_path().map_err(ioe)?).map_err(ioe)?;
        if let Some(node) = nodes.get_mut(ino) {
            node.opaque = true;
            node.lower = None;
        }
        Ok(())
    }
}
