//! Attributes and extended attributes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

impl Overlay {
    pub fn setattr(&self, ino: u64, changes: &AttrChanges) -> OpResult<FileAttr> {
        let path = {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
            self.upper_path(&nodes, ino)?
        };
        if changes.uid.is_some() || changes.gid.is_some() {
            std::os::unix::fs::lchown(&path, changes.uid, changes.gid).map_err(ioe)?;
        }
        if let Some(mode) = changes.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(ioe)?;
        }
        if let Some(size) = changes.size {
            self.truncate(ino, &*self.upper_file(ino)?, &path, size)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let (a, m) = (changes.atime.unwrap_or(Time::Omit), changes.mtime.unwrap_or(Time::Omit));
            sys::set_times(&path, a, m).map_err(ioe)?;
        }
        self.attr(ino)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if node.upper {
            return sys::get_xattr(&self.upper_path(&nodes, ino)?, name).map_err(ioe)?.ok_or(libc::ENODATA);
        }
        let lower = node.lower.and_then(|l| self.tree.get(l)).ok_or(libc::ENOENT)?;
        lower.xattrs.iter().find(|(n, _)| **n == *name).map(|(_, v)| v.to_vec()).ok_or(libc::ENODATA)
    }

    /// Xattr names, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        let names: Vec<Vec<u8>> = if node.upper {
            sys::list_xattrs(&self.upper_path(&nodes, ino)?).map_err(ioe)?
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
        sys::set_xattr(&self.upper_path(&nodes, ino)?, name, value, flags).map_err(ioe)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> OpResult<()> {
        if upper::is_private_xattr(name) {
            return Err(libc::ENODATA);
        }
        drop(self.getxattr(ino, name)?);
        let mut nodes = self.nodes.lock();
        self.copy_up(&mut nodes, ino)?;
        sys::remove_xattr(&self.upper_path(&nodes, ino)?, name).map_err(ioe)
    }
}
