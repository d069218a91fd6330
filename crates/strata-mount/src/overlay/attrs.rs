//! Attributes and extended attributes.

use super::*;

impl Overlay {
    pub fn setattr(&self, ino: u64, changes: &AttrChanges) -> OpResult<FileAttr> {
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        let at = self.upper_at(&nodes, ino)?;
        // Owner before mode: chown clears setuid/setgid (and file
        // capabilities), a mode set with it must survive.
        // A SETATTR that changes nothing is chown(-1, -1) (the kernel sends
        // the ctime only with a writeback cache): it changes the ctime.
        let only_ctime = changes.mode.is_none()
            && changes.size.is_none()
            && changes.atime.is_none()
            && changes.mtime.is_none()
            && changes.uid.is_none()
            && changes.gid.is_none();
        if changes.uid.is_some() || changes.gid.is_some() {
            at.chown(changes.uid, changes.gid).map_err(ioe)?;
        } else if only_ctime || changes.ctime {
            // The ctime alone moves, as on the kernel's own filesystems: a
            // chmod to the same mode (a chown would clear setuid bits).
            let st = at.stat().map_err(ioe)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                at.chown(None, None).map_err(ioe)?;
            } else if changes.mode.is_none() {
                at.chmod(st.st_mode & 0o7777).map_err(ioe)?;
            }
        }
        if let Some(mode) = changes.mode {
            at.chmod(mode & 0o7777).map_err(ioe)?;
        }
        if let Some(size) = changes.size {
            // A stripe lock is taken before `nodes`, never after; the
            // truncate acts on the open file, whatever its names become.
            drop(at);
            drop(nodes);
            self.truncate(ino, &*self.upper_file(ino)?, size)?;
            nodes = self.nodes.lock();
            if changes.atime.is_some() || changes.mtime.is_some() {
                let (a, m) = (changes.atime.unwrap_or(Time::Omit), changes.mtime.unwrap_or(Time::Omit));
                self.upper_at(&nodes, ino)?.set_times(a, m).map_err(ioe)?;
            }
        } else if changes.atime.is_some() || changes.mtime.is_some() {
            let (a, m) = (changes.atime.unwrap_or(Time::Omit), changes.mtime.unwrap_or(Time::Omit));
            at.set_times(a, m).map_err(ioe)?;
        }
        self.attr_locked(&nodes, ino)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            return self.upper_at(&nodes, ino)?.get_xattr(name).map_err(ioe)?.ok_or(libc::ENODATA);
        }
        let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
        lower.xattrs.iter().find(|(n, _)| **n == *name).map(|(_, v)| v.to_vec()).ok_or(libc::ENODATA)
    }

    /// Xattr names, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        let names: Vec<Vec<u8>> = if node.upper {
            self.upper_at(&nodes, ino)?.list_xattrs().map_err(ioe)?
        } else {
            let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
            lower.xattrs.iter().map(|(n, _)| n.to_vec()).collect()
        };
        let mut out = Vec::new();
        for name in names.iter().filter(|n| !upper::is_private_xattr(n)) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        if upper::is_private_xattr(name) {
            return Err(libc::EPERM);
        }
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        self.upper_at(&nodes, ino)?.set_xattr(name, value, flags).map_err(ioe)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> OpResult<()> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        drop(self.getxattr(ino, name)?);
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        self.upper_at(&nodes, ino)?.remove_xattr(name).map_err(ioe)
    }
}
