//! Copy-up: a lower entry made to exist in the upper directory, with its metadata.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use super::*;

impl Overlay {
    /// Makes `ino` exist in the upper directory, with the lower entry's
    /// metadata; a file's data stays below until written.
    pub(super) fn copy_up(&self, nodes: &mut Nodes, ino: u64) -> OpResult<()> {
        let node = nodes.get(ino).ok_or(libc::ENOENT)?.clone();
        if node.upper {
            return Ok(());
        }
        let upper = self.upper()?;
        self.copy_up(nodes, node.parent)?;
        let lower_ino = node.lower.ok_or(libc::EIO)?;
        let lower = self.tree.get(lower_ino).ok_or(libc::EIO)?;
        let rel = nodes.path(ino);
        let dest = upper.path(&rel);
        let tmp = upper.temp_path();
        let made = match lower.kind {
            Kind::Dir => fs::create_dir(&tmp),
            Kind::File => {
                OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|f| f.set_len(lower.size))
            }
            Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&lower.target), &tmp),
            Kind::CharDevice => sys::mknod(&tmp, libc::S_IFCHR | 0o600, lower.rdev),
            Kind::BlockDevice => sys::mknod(&tmp, libc::S_IFBLK | 0o600, lower.rdev),
            Kind::Fifo => sys::mknod(&tmp, libc::S_IFIFO | 0o600, 0),
        };
        made.map_err(ioe)?;
        let finish = || -> io::Result<()> {
            if lower.kind != Kind::Dir {
                let lower_size = if lower.kind == Kind::File { lower.size } else { 0 };
                upper::set_origin(&tmp, &Origin { lower_path: self.tree.path_of(lower_ino), lower_size })?;
            }
            for (name, value) in lower.xattrs.iter() {
                sys::set_xattr(&tmp, name, value, 0)?;
            }
            std::os::unix::fs::lchown(&tmp, Some(lower.uid), Some(lower.gid))?;
            if lower.kind != Kind::Symlink {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(u32::from(lower.perm)))?;
            }
            sys::set_times(&tmp, Time::from_ns(lower.mtime_ns), Time::from_ns(lower.mtime_ns))?;
            sys::rename(&tmp, &dest, libc::RENAME_NOREPLACE)
        };
        if let Err(e) = finish() {
            let _ = fs::remove_dir(&tmp).or_else(|_| fs::remove_file(&tmp));
            return Err(ioe(e));
        }
        if let Some(n) = nodes.get_mut(ino) {
            n.upper = true;
            if lower.kind == Kind::File {
                n.cow_lower_size = Some(lower.size);
            }
        }
        if lower.kind == Kind::File && lower.nlink > 1 {
            self.link_other_names(nodes, ino, lower_ino, &rel, &dest)?;
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
        dest: &std::path::Path,
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
            let target = upper.path(&other);
            if fs::symlink_metadata(&target).is_err() {
                fs::hard_link(dest, &target).map_err(ioe)?;
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
        let path = self.upper_path(nodes, ino)?;
        upper::set_opaque(&path).map_err(ioe)?;
        if let Some(node) = nodes.get_mut(ino) {
            node.opaque = true;
            node.lower = None;
        }
        Ok(())
    }
}
