//! File bytes: reads through the lower tree or the upper file, copy-on-write writes, truncation.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::*;

impl Overlay {
    pub fn read_plan(&self, ino: u64) -> OpResult<ReadPlan> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        if !node.upper {
            return node.lower.map(ReadPlan::Lower).ok_or(libc::ENOENT);
        }
        let cow = node.cow_lower_size.and_then(|size| node.lower.map(|l| (l, size)));
        Ok(ReadPlan::Upper { cow })
    }

    /// Prepares an open of `ino`: a write or truncate copies the file up.
    /// Files are used by inode afterwards ([`Self::upper_file`]), so the
    /// kernel may skip opens altogether.
    pub fn open(&self, ino: u64, flags: i32) -> OpResult<()> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        if (write || truncate) && !self.writable() {
            return Err(libc::EROFS);
        }
        if write || truncate {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
        }
        if truncate {
            self.setattr(ino, &AttrChanges { size: Some(0), ..AttrChanges::default() })?;
        }
        Ok(())
    }

    /// The upper file of `ino`, open read-write, from a bounded cache of
    /// open files (the kernel sends no open or release to tie them to).
    pub(super) fn upper_file(&self, ino: u64) -> OpResult<Arc<File>> {
        self.files.get_or_insert_with(&ino, || {
            let nodes = self.nodes.lock();
            if !nodes.get(ino).ok_or(libc::ENOENT)?.upper {
                return Err(libc::EBADF);
            }
            open_upper(&self.upper_at(&nodes, ino)?, libc::O_RDWR).map(Arc::new)
        })
    }

    /// Keeps a file just made open for its first writes.
    pub fn keep_open(&self, ino: u64, file: File) {
        self.files.insert(ino, Arc::new(file));
    }

    pub fn read(&self, ino: u64, plan: &ReadPlan, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        match plan {
            ReadPlan::Lower(lower) => self.read_lower(*lower, offset, len),
            ReadPlan::Upper { cow, .. } => {
                let file = self.upper_file(ino)?;
                match cow {
                    None => read_plain(&file, offset, len),
                    Some((lower, lower_size)) => self.read_cow(&file, *lower, *lower_size, offset, len),
                }
            }
        }
    }

    /// fsync / fdatasync of `ino`'s upper file, if it has one.
    pub fn fsync(&self, ino: u64, data_only: bool) -> OpResult<()> {
        if !self.nodes.lock().get(ino).is_some_and(|n| n.upper) {
            return Ok(());
        }
        let file = self.upper_file(ino)?;
        if data_only { file.sync_data() } else { file.sync_all() }.map_err(ioe)
    }

    /// fallocate(2) on `ino`'s upper file, in any mode the upper
    /// filesystem has (plain, keep-size, punch-hole, zero-range, collapse,
    /// insert), as overlayfs passes it to its upper file. A copied-up file
    /// whose lower bytes still show through holes first takes them all
    /// into its upper file (what overlayfs copies up on open for writing),
    /// so that allocating, punching or moving blocks acts on the file's
    /// true bytes; it then no longer reads from below. May wait on a chunk
    /// source: call it on a worker.
    pub fn fallocate(&self, ino: u64, mode: i32, offset: u64, len: u64) -> OpResult<()> {
        {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
        }
        let file = self.upper_file(ino)?;
        self.take_lower_bytes(ino, &file)?;
        let _cow = self.cow_lock(ino);
        sys::fallocate(&file, mode, offset, len).map_err(ioe)
    }

    /// The lower file and lower size of a copied-up file whose lower bytes
    /// still show through holes.
    fn cow_of(&self, ino: u64) -> OpResult<Option<(Ino, u64)>> {
        let nodes = self.nodes.lock();
        let node = nodes.get(ino).ok_or(libc::ENOENT)?;
        Ok(node.cow_lower_size.filter(|s| *s > 0).and_then(|s| node.lower.map(|l| (l, s))))
    }

    /// Fills every hole of a copied-up file below its lower size with the
    /// lower file's bytes, then sets its lower size to 0 (it no longer
    /// reads from below). Each piece is fetched without the file's lock and
    /// written under it, where it is still a hole; zeros stay holes (with
    /// the lower size at 0 they read as zeros).
    fn take_lower_bytes(&self, ino: u64, file: &File) -> OpResult<()> {
        const PIECE: u64 = 1 << 20;
        let mut pos = 0;
        loop {
            let piece = {
                let _cow = self.cow_lock(ino);
                let Some((lower, lower_size)) = self.cow_of(ino)? else { return Ok(()) };
                let size = file.metadata().map_err(ioe)?.len();
                let end = lower_size.min(size);
                let hole = match sys::seek(file, pos, libc::SEEK_HOLE).map_err(ioe)? {
                    Some(hole) if hole < end => hole,
                    _ => {
                        // Every byte below the lower size is in the upper file.
                        file.sync_data().map_err(ioe)?;
                        upper::set_lower_size_of(file, 0).map_err(ioe)?;
                        if let Some(node) = self.nodes.lock().get_mut(ino) {
                            node.cow_lower_size = Some(0);
                        }
                        return Ok(());
                    }
                };
                let data = sys::seek(file, hole, libc::SEEK_DATA).map_err(ioe)?.unwrap_or(u64::MAX);
                (lower, hole, (data.min(end) - hole).min(PIECE))
            };
            let (lower, at, n) = piece;
            let bytes = self.read_lower(lower, at, n as u32)?;
            let _cow = self.cow_lock(ino);
            // Meanwhile a write may have filled part of the piece, a
            // truncation cut the lower size: only what is still a hole
            // below the lower size takes the lower bytes.
            let lower_size = self.cow_of(ino)?.map_or(0, |(_, s)| s);
            let end = (at + n).min(lower_size);
            let mut from = at;
            while from < end {
                let Some(hole) = sys::seek(file, from, libc::SEEK_HOLE).map_err(ioe)?.filter(|h| *h < end)
                else {
                    break;
                };
                let hole_end =
                    sys::seek(file, hole, libc::SEEK_DATA).map_err(ioe)?.unwrap_or(u64::MAX).min(end);
                let slice = &bytes[(hole - at) as usize..(hole_end - at) as usize];
                if slice.iter().any(|b| *b != 0) {
                    file.write_all_at(slice, hole).map_err(ioe)?;
                }
                from = hole_end;
            }
            pos = at + n;
        }
    }

    /// A read of a lower-only file answered from decoded chunks in memory,
    /// if they are all there.
    pub fn read_cached(&self, plan: &ReadPlan, offset: u64, len: u32) -> Option<Vec<u8>> {
        let ReadPlan::Lower(lower) = plan else { return None };
        let inode = self.tree.get(*lower)?;
        self.reader.read_cached(&inode.chunks, inode.size, offset, len)
    }

    pub(super) fn read_lower(&self, lower: Ino, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        let inode = self.tree.get(lower).ok_or(libc::ENOENT)?;
        self.reader
            .read(&inode.chunks, inode.size, offset, len)
            .map_err(|e| self.source_failed(lower, offset, &e))
    }

    /// A chunk no source could give: logged with the file it belongs to; EIO.
    pub(super) fn source_failed(&self, lower: Ino, offset: u64, error: &crate::SourceError) -> Errno {
        tracing::warn!(
            file = %String::from_utf8_lossy(&self.tree.path_of(lower)),
            offset,
            %error,
            "read failed"
        );
        libc::EIO
    }

    pub(super) fn read_cow(
        &self,
        file: &File,
        lower: Ino,
        lower_size: u64,
        offset: u64,
        len: u32,
    ) -> OpResult<Vec<u8>> {
        let inode = self.tree.get(lower).ok_or(libc::ENOENT)?;
        read_merged(file, inode, lower_size, &self.reader, offset, len).map_err(|e| match e {
            MergedReadError::Io(e) => ioe(e),
            MergedReadError::Source(e) => self.source_failed(lower, offset, &e),
        })
    }

    /// Writes `data` at `offset` of the upper file of `ino`. In a copied-up
    /// file the blocks a write only partly covers are first filled from
    /// below, so that every upper block holds the file's true bytes. The
    /// lower bytes they need are fetched before the file's lock is taken
    /// and kept (the lower file never changes); under the lock the fill is
    /// worked out again from the upper file as it is then, and if it needs
    /// lower bytes not fetched yet (a hole punched meanwhile), the lock is
    /// let go, they are fetched, and the write starts over.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        {
            let mut nodes = self.nodes.lock();
            self.copy_up(&mut nodes, ino)?;
        }
        let file = self.upper_file(ino)?;
        let file = &*file;
        let block = self.upper()?.block_size();
        let end = offset + data.len() as u64;
        let head_start = offset / block * block;
        // Lower byte ranges fetched so far: (offset, bytes).
        let mut fetched: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some((lower, lower_size)) = self.cow_of(ino)? {
            // Blocks the upper file holds already need nothing from below.
            let held = |from: u64, to: u64| -> OpResult<bool> {
                Ok(sys::seek(file, from, libc::SEEK_HOLE).map_err(ioe)?.is_some_and(|hole| hole >= to))
            };
            let head_end = offset.min(lower_size);
            if head_start < head_end && !held(head_start, head_end)? {
                fetched
                    .push((head_start, self.read_lower(lower, head_start, (head_end - head_start) as u32)?));
            }
            let tail_end = end.div_ceil(block).saturating_mul(block).min(lower_size);
            if end < tail_end && !held(end, tail_end)? {
                fetched.push((end, self.read_lower(lower, end, (tail_end - end) as u32)?));
            }
        }
        loop {
            let guard = self.cow_lock(ino);
            let cow = {
                let nodes = self.nodes.lock();
                nodes.get(ino).and_then(|n| n.cow_lower_size.and_then(|s| n.lower.map(|l| (l, s))))
            };
            let Some((lower, lower_size)) = cow else {
                file.write_all_at(data, offset).map_err(ioe)?;
                return Ok(data.len() as u32);
            };
            // Lower bytes from what was fetched; a range not among them is
            // noted, and the write starts over once it is fetched.
            let from_fetched = |at: u64, len: u32| -> Result<Vec<u8>, Fill> {
                let stop = at + u64::from(len);
                fetched
                    .iter()
                    .find(|(start, bytes)| *start <= at && stop <= start + bytes.len() as u64)
                    .map(|(start, bytes)| bytes[(at - start) as usize..(stop - start) as usize].to_vec())
                    .ok_or(Fill::Need(at, len))
            };
            let size = file.metadata().map_err(ioe)?.len();
            let mut start = offset;
            let mut buf = Vec::with_capacity(data.len() + 2 * block as usize);
            let filled = (|| -> Result<(), Fill> {
                if head_start < offset && head_start < lower_size {
                    let len = (offset - head_start) as u32;
                    buf = read_merged_with(file, lower_size, head_start, len, from_fetched)?;
                    buf.resize(len as usize, 0);
                    start = head_start;
                }
                buf.extend_from_slice(data);
                let tail_end = end.div_ceil(block).saturating_mul(block).min(size);
                if end < tail_end && end < lower_size {
                    buf.extend(read_merged_with(
                        file,
                        lower_size,
                        end,
                        (tail_end - end) as u32,
                        from_fetched,
                    )?);
                }
                Ok(())
            })();
            match filled {
                Ok(()) => {
                    file.write_all_at(&buf, start).map_err(ioe)?;
                    return Ok(data.len() as u32);
                }
                Err(Fill::Io(e)) => return Err(ioe(e)),
                Err(Fill::Need(at, len)) => {
                    drop(guard);
                    fetched.push((at, self.read_lower(lower, at, len)?));
                }
            }
        }
    }

    /// Sets the size of the upper file of `ino`; a copied-up file forgets
    /// the lower bytes at and above the new size.
    pub(super) fn truncate(&self, ino: u64, file: &File, size: u64) -> OpResult<()> {
        let _cow = self.cow_lock(ino);
        {
            let mut nodes = self.nodes.lock();
            if let Some(node) = nodes.get_mut(ino) {
                if node.cow_lower_size.is_some_and(|lower_size| size < lower_size) {
                    upper::set_lower_size_of(file, size).map_err(ioe)?;
                    node.cow_lower_size = Some(size);
                }
            }
        }
        file.set_len(size).map_err(ioe)
    }
}

/// Why the fill of a write's partly covered blocks stopped.
enum Fill {
    Io(io::Error),
    /// Lower bytes not fetched yet: (offset, length).
    Need(u64, u32),
}

impl From<io::Error> for Fill {
    fn from(e: io::Error) -> Self {
        Fill::Io(e)
    }
}
