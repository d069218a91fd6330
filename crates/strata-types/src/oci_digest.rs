use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Why a string is not an OCI digest Strata can check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciDigestError {
    #[error("digest {0:?} has no `algorithm:` prefix")]
    NoAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    Algorithm(String),
    #[error("digest {0:?} does not have 64 lower-case hex digits")]
    Encoding(String),
}

/// An OCI content digest, `sha256:<64 hex>`: the address of a blob in an image
/// layout and the diff_id of a layer. Only sha256 is accepted, since it is the
/// only algorithm registries and runtimes emit in practice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OciDigest([u8; 32]);

impl OciDigest {
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub const fn from_sha256(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The ChainID of each prefix of a layer stack given by its diff_ids,
    /// base first (OCI image-spec, config.md "Layer ChainID"):
    /// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) =
    /// sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`. containerd names a
    /// layer's committed snapshot by it; `chain_ids(d)[i]` is layer i's.
    pub fn chain_ids(diff_ids: &[OciDigest]) -> Vec<OciDigest> {
        let mut out: Vec<OciDigest> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = match out.last() {
                None => *diff_id,
                Some(below) => Self::sha256_of(format!("{below} {diff_id}").as_bytes()),
            };
            out.push(next);
        }
        out
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OciDigest(sha256:{})", &self.hex()[..12])
    }
}

impl FromStr for OciDigest {
    type Err = OciDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) =
            s.split_once(':').ok_or_else(|| OciDigestError::NoAlgorithm(s.to_owned()))?;
        if algorithm != "sha256" {
            return Err(OciDigestError::Algorithm(algorithm.to_owned()));
        }
        let lower_hex = encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut out = [0u8; 32];
        if encoded.len() != 64 || !lower_hex || hex::decode_to_slice(encoded, &mut out).is_err() {
            return Err(OciDigestError::Encoding(s.to_owned()));
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for OciDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OciDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes what passes through it with SHA-256 and counts it;
/// the tool for checking a streamed blob against its OCI digest.
#[derive(Default)]
pub struct Sha256Writer {
    hasher: Sha256,
    len: u64,
}

impl Sha256Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (OciDigest, u64) {
        (OciDigest(self.hasher.finalize().into()), self.len)
    }
}

impl Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = OciDigest::sha256_of(b"");
        let s = d.to_string();
        assert_eq!(s, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(s.parse::<OciDigest>(), Ok(d));
    }

    #[test]
    fn rejects_foreign_or_malformed() {
        assert!(matches!("sha512:00".parse::<OciDigest>(), Err(OciDigestError::Algorithm(_))));
        assert!(matches!("abc".parse::<OciDigest>(), Err(OciDigestError::NoAlgorithm(_))));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(matches!(upper.parse::<OciDigest>(), Err(OciDigestError::Encoding(_))));
    }

    /// containerd's `identity.ChainID` of the diff_ids sha256("a"),
    /// sha256("b"), sha256("c"), worked by hand with Python's hashlib.
    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = |s: &[u8]| OciDigest::sha256_of(s);
        let chain = OciDigest::chain_ids(&[d(b"a"), d(b"b"), d(b"c")]);
        assert_eq!(chain[0], d(b"a"));
        assert_eq!(
            chain[1].to_string(),
            "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676"
        );
        assert_eq!(
            chain[2].to_string(),
            "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106"
        );
        assert!(OciDigest::chain_ids(&[]).is_empty());
    }

    #[test]
    fn writer_matches_one_shot() {
        let mut w = Sha256Writer::new();
        w.update(b"hello ");
        w.update(b"world");
        assert_eq!(w.finish(), (OciDigest::sha256_of(b"hello world"), 11));
    }
}
