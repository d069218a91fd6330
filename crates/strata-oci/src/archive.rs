//! Reading members of an image archive in place: a directory (OCI layout) or
//! a tar file, whose members are indexed once and then read by offset.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_layer::normalize_member_path;

use crate::ImportError;

/// Largest JSON document (manifest, index, config) read into memory.
pub(crate) const MAX_JSON_LEN: u64 = 16 << 20;
/// Symlinks followed inside a tar archive before giving up.
const MAX_LINK_HOPS: usize = 16;

pub(crate) enum Archive {
    Dir(PathBuf),
    Tar(TarArchive),
}

pub(crate) struct TarArchive {
    file: Arc<File>,
    members: HashMap<String, Member>,
}

enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// Symlink or hardlink: the member path it points at.
    Link(String),
}

/// An archive compressed as a whole (`docker save | gzip`, or zstd, which
/// `docker load` accepts too) decompressed into an unnamed temporary file
/// in `scratch` (the store's directory: on disk, beside what the import
/// writes anyway, never a RAM-backed /tmp; gone when closed), so that its
/// members can be read in place like a plain tar's. A plain archive is
/// returned as it is.
fn decompressed(mut file: File, scratch: &Path, cancelled: &(dyn Fn() -> bool + Sync)) -> io::Result<File> {
    use std::io::{BufReader, Seek};
    let compression = {
        let mut head = BufReader::new(&file);
        crate::blob::Compression::sniff(&mut head)?
    };
    file.rewind()?;
    if compression == crate::blob::Compression::None {
        return Ok(file);
    }
    let mut plain = tempfile::tempfile_in(scratch)?;
    let file = crate::import::Cancellable { inner: file, cancelled };
    let mut decoder = compression.decoder(BufReader::new(file))?;
    io::copy(&mut decoder, &mut plain)
        .map_err(|e| io::Error::new(e.kind(), format!("decompressing the archive: {e}")))?;
    plain.rewind()?;
    Ok(plain)
}

/// The first 512 bytes of `file` (fewer if it is shorter), read from its
/// start; the file is left at its start.
fn head(file: &mut File) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut head = Vec::with_capacity(512);
    file.by_ref().take(512).read_to_end(&mut head)?;
    file.rewind()?;
    Ok(head)
}

/// Whether `block` is a tar header block: its checksum (the sum of its
/// bytes, the checksum field counted as spaces; POSIX.1 `ustar`) is the
/// octal number its checksum field holds.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let text: String =
        field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect::<String>().trim().to_owned();
    let Ok(recorded) = u32::from_str_radix(&text, 8) else { return false };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| if (148..156).contains(&i) { u32::from(b' ') } else { u32::from(*b) })
        .sum();
    sum == recorded
}

/// What a file that is not a tar looks like, from its first bytes as
/// stored (`outer`) and after decompression (`inner`): "gzip-compressed
/// text", "an ELF executable", "a ZIP archive", "JSON", "data", …
pub(crate) fn describe(outer: &[u8], inner: &[u8]) -> String {
    let kind = |b: &[u8]| -> Option<&'static str> {
        Some(match b {
            [0x1f, 0x8b, ..] => "gzip",
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
            [b'B', b'Z', b'h', ..] => "bzip2",
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
            _ => return None,
        })
    };
    let content = |b: &[u8]| -> &'static str {
        match b {
            [] => "an empty file",
            [b'P', b'K', 3, 4, ..] => "a ZIP archive",
            [0x7f, b'E', b'L', b'F', ..] => "an ELF executable",
            [b'%', b'P', b'D', b'F', ..] => "a PDF document",
            _ if kind(b).is_some() => "compressed data",
            _ if is_text(b) => match b.iter().find(|c| !c.is_ascii_whitespace()) {
                Some(b'{' | b'[') => "JSON or other text",
                _ => "text",
            },
            _ => "data (no known format)",
        }
    };
    match kind(outer) {
        // Not one `decompressed` undoes.
        Some(compression) if inner == outer => {
            format!("{compression}-compressed data, which strata does not decompress")
        }
        Some(compression) if inner.is_empty() => format!("{compression}-compressed, empty inside"),
        Some(compression) => format!(
            "{compression}-compressed {}",
            content(inner).trim_start_matches("an ").trim_start_matches("a ")
        ),
        None => content(outer).to_owned(),
    }
}

/// Whether `b` reads as UTF-8 text (a character cut at its end allowed).
fn is_text(b: &[u8]) -> bool {
    let valid = match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&b[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    !valid.is_empty() && valid.chars().all(|c| !c.is_control() || c.is_whitespace())
}

impl Archive {
    /// Opens the archive at `path`; `scratch` takes a decompressed copy of
    /// an archive compressed as a whole.
    pub(crate) fn open(path: &Path, scratch: &Path) -> Result<Self, ImportError> {
        Self::open_cancellable(path, scratch, &|| false)
    }

    /// [`open`](Self::open), whose decompression stops (with an error)
    /// once `cancelled` says so.
    pub(crate) fn open_cancellable(
        path: &Path,
        scratch: &Path,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, ImportError> {
        let open_err = |source| ImportError::Open { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if meta.is_dir() {
            return Ok(Archive::Dir(path.to_owned()));
        }
        let mut original = File::open(path).map_err(open_err)?;
        let outer = head(&mut original).map_err(open_err)?;
        let mut file = decompressed(original, scratch, cancelled).map_err(open_err)?;
        let inner = head(&mut file).map_err(open_err)?;
        if !is_tar_header(&inner) {
            // Never the bytes themselves (they may be anything, secrets
            // included): what they look like.
            return Err(ImportError::NotAnArchive {
                path: path.to_owned(),
                looks_like: describe(&outer, &inner),
            });
        }
        let len = file.metadata().map_err(open_err)?.len();
        let mut members = HashMap::new();
        let mut tar = tar::Archive::new(&file);
        let entries = tar.entries_with_seek().map_err(open_err)?;
        let mut last = String::from("(start of archive)");
        for entry in entries {
            let entry = entry.map_err(|e| {
                if members.is_empty() {
                    let source = io::Error::other(format!("not a tar archive: {e}"));
                    ImportError::Open { path: path.to_owned(), source }
                } else {
                    ImportError::member(&last, format!("the member after it is unreadable: {e}"))
                }
            })?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            let Ok(key) = normalize_member_path(&raw) else {
                // Image archives address members by plain relative names; an
                // escaping one can never be addressed, so it is ignored.
                tracing::warn!(member = %name, "ignoring archive member with an unsafe path");
                continue;
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let kind = entry.header().entry_type();
            let member = if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name_bytes().unwrap_or_default();
                let target = if kind.is_symlink() {
                    // Relative to the link's directory, as docker save writes them.
                    let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                    resolve_relative(dir, &String::from_utf8_lossy(&target))
                } else {
                    normalize_member_path(&target).ok().map(|t| String::from_utf8_lossy(&t).into_owned())
                };
                match target {
                    Some(t) => Member::Link(t),
                    None => continue,
                }
            } else {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset.saturating_add(size) > len {
                    return Err(ImportError::member(
                        &name,
                        format!(
                            "archive is truncated: member needs bytes up to {}, file has {len}",
                            offset + size
                        ),
                    ));
                }
                Member::Data { offset, size }
            };
            members.insert(key, member);
            last = name;
        }
        Ok(Archive::Tar(TarArchive { file: Arc::new(file), members }))
    }

    pub(crate) fn contains(&self, member: &str) -> bool {
        match self {
            Archive::Dir(root) => root.join(member).is_file(),
            Archive::Tar(t) => t.resolve(member).is_ok(),
        }
    }

    /// Opens a member for streaming; returns the reader and its size.
    pub(crate) fn open_member(&self, member: &str) -> Result<(Box<dyn Read + Send>, u64), ImportError> {
        let missing = || ImportError::MissingMember { member: member.to_owned() };
        let key = normalize_member_path(member.as_bytes()).map_err(|e| ImportError::member(member, e))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        match self {
            Archive::Dir(root) => {
                let path = root.join(&key);
                let meta = std::fs::symlink_metadata(&path).map_err(|_| missing())?;
                if !meta.is_file() {
                    return Err(ImportError::member(member, "not a regular file"));
                }
                // A symlinked directory inside the layout must not lead out of it.
                let inside = match (path.canonicalize(), root.canonicalize()) {
                    (Ok(p), Ok(r)) => p.starts_with(r),
                    _ => false,
                };
                if !inside {
                    return Err(ImportError::member(member, "resolves outside the image layout"));
                }
                let file = File::open(&path).map_err(|e| ImportError::member(member, e))?;
                Ok((Box::new(file), meta.len()))
            }
            Archive::Tar(t) => {
                let (offset, size) = t.resolve(&key).map_err(|_| missing())?;
                Ok((Box::new(AtReader { file: t.file.clone(), pos: offset, end: offset + size }), size))
            }
        }
    }

    /// Reads a small member (JSON) whole, refusing absurd sizes.
    pub(crate) fn read_small(&self, member: &str) -> Result<Vec<u8>, ImportError> {
        let (reader, size) = self.open_member(member)?;
        if size > MAX_JSON_LEN {
            return Err(ImportError::member(
                member,
                format!("{size} bytes, more than {MAX_JSON_LEN} allowed"),
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        reader.take(MAX_JSON_LEN).read_to_end(&mut out).map_err(|e| ImportError::member(member, e))?;
        if out.len() as u64 != size {
            return Err(ImportError::member(member, format!("truncated: {} of {size} bytes", out.len())));
        }
        Ok(out)
    }
}

impl TarArchive {
    fn resolve(&self, key: &str) -> Result<(u64, u64), ()> {
        let mut key = key.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&key) {
                Some(Member::Data { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link(target)) => key = target.clone(),
                None => return Err(()),
            }
        }
        Err(())
    }
}

/// `target` taken relative to `dir`, inside the archive, or None if it
/// leaves the archive root.
fn resolve_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> =
        if target.starts_with('/') { Vec::new() } else { dir.split('/').filter(|p| !p.is_empty()).collect() };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Reads `[pos, end)` of a shared file with positioned reads.
struct AtReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for AtReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive file shrank while being read"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_relative;

    #[test]
    fn relative_links_stay_inside() {
        assert_eq!(resolve_relative("abc", "../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(resolve_relative("", "x").as_deref(), Some("x"));
        assert_eq!(resolve_relative("abc", "../../etc/passwd"), None);
    }
}
