//! Reading a copied-up file: written blocks from the upper file, holes below
//! the lower size from the lower file's chunks, zeros above it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::lower::Inode;
use crate::reader::ChunkReader;
use crate::sys;
use crate::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum MergedReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Up to `len` bytes at `offset` of a copied-up file.
pub fn read_merged(
    file: &File,
    lower: &Inode,
    lower_size: u64,
    reader: &Arc<ChunkReader>,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, MergedReadError> {
    read_merged_with(file, lower_size, offset, len, |pos, n| {
        reader.read(&lower.chunks, lower.size, pos, n).map_err(MergedReadError::from)
    })
}

/// [`read_merged`] with the lower file's bytes from `lower(offset, len)`.
pub fn read_merged_with<E: From<io::Error>>(
    file: &File,
    lower_size: u64,
    offset: u64,
    len: u32,
    mut lower: impl FnMut(u64, u32) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let size = file.metadata()?.len();
    let end = size.min(offset.saturating_add(u64::from(len)));
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut pos = offset;
    while pos < end {
        let data_at = sys::seek(file, pos, libc::SEEK_DATA)?.unwrap_or(u64::MAX);
        if data_at > pos {
            let hole_end = data_at.min(end);
            let lower_end = hole_end.min(lower_size).max(pos);
            if lower_end > pos {
                out.extend(lower(pos, (lower_end - pos) as u32)?);
            }
            out.resize(out.len() + (hole_end - lower_end) as usize, 0);
            pos = hole_end;
        } else {
            let hole_at = sys::seek(file, pos, libc::SEEK_HOLE)?.unwrap_or(size);
            let data_end = hole_at.min(end).max(pos + 1);
            out.extend(read_plain(file, pos, (data_end - pos) as u32)?);
            pos = data_end;
        }
    }
    Ok(out)
}

/// Up to `len` bytes at `offset`, fewer only at the end of the file.
pub fn read_plain(file: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
