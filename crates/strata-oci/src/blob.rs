//! Blob streams: digest checking while reading, and layer decompression
//! chosen by the bytes themselves (media types are often wrong in the wild).

use std::io::{self, BufRead, Read};

use strata_types::{OciDigest, Sha256Writer};

/// Hashes (SHA-256) everything read through it.
pub(crate) struct Hashing<'a, R> {
    inner: R,
    sha: Sha256Writer,
    on_read: Option<Box<dyn FnMut(u64) + 'a>>,
}

impl<'a, R: Read> Hashing<'a, R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, sha: Sha256Writer::new(), on_read: None }
    }

    pub(crate) fn with_progress(inner: R, on_read: Box<dyn FnMut(u64) + 'a>) -> Self {
        Self { inner, sha: Sha256Writer::new(), on_read: Some(on_read) }
    }

    /// Reads what is left, then returns the digest and length of the whole.
    pub(crate) fn finish(mut self) -> io::Result<(OciDigest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.sha.finish())
    }
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        if let Some(f) = self.on_read.as_mut() {
            f(n as u64);
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Looks at the first bytes without consuming them.
    pub(crate) fn sniff(reader: &mut impl BufRead) -> io::Result<Self> {
        let head = reader.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        })
    }

    pub(crate) fn decoder<'a, R: BufRead + 'a>(self, reader: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}
