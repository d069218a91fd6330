use std::io;
use std::path::PathBuf;

use strata_layer::LayerError;
use strata_store::StoreError;
use strata_types::OciDigest;

use crate::NameError;

/// Why an import was refused. The store is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: neither a docker-save archive nor an OCI image layout (no manifest.json or index.json)", path.display())]
    UnknownFormat { path: PathBuf },
    /// The file is not a tar (nor a compressed one): it is described,
    /// never quoted.
    #[error("{}: not an image archive (a tar, plain, gzip or zstd); it looks like {looks_like}", path.display())]
    NotAnArchive { path: PathBuf, looks_like: String },
    #[error("archive member {member:?}: {reason}")]
    Member { member: String, reason: String },
    /// A layer blob could not be had from where [`crate::LayerBlobs`]
    /// reads it (a registry's refusal, a transfer that failed); the source
    /// says why.
    #[error("layer blob {digest}")]
    Blob {
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("archive member {member:?}: missing from the archive")]
    MissingMember { member: String },
    #[error("archive member {member:?}: digest is {actual}, the manifest says {expected}")]
    DigestMismatch { member: String, expected: OciDigest, actual: OciDigest },
    #[error("archive member {member:?}: {actual} bytes, the manifest says {expected}")]
    SizeMismatch { member: String, expected: u64, actual: u64 },
    #[error("archive member {member:?}: {source}")]
    Layer { member: String, source: LayerError },
    /// A layer whose media type says its bytes are not to be had from
    /// where the image is (foreign / non-distributable: the OCI image spec
    /// `layer.md` and docker's foreign layers, fetched from other URLs) or
    /// cannot be read (encrypted).
    #[error("layer {index} ({digest}) has media type {media_type}: {why}")]
    RefusedLayer { index: usize, digest: String, media_type: String, why: &'static str },
    #[error("{0}")]
    Format(String),
    #[error("--name applies to an archive with one image; this one has {0}")]
    NameNeedsOneImage(usize),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("import setup: {0}")]
    Setup(String),
    /// The caller cancelled (`ImportProgress::cancelled`); nothing was stored.
    #[error("import cancelled")]
    Cancelled,
}

impl ImportError {
    /// An error about one archive member or blob, with the reason.
    pub fn member(member: &str, reason: impl ToString) -> Self {
        ImportError::Member { member: member.to_owned(), reason: reason.to_string() }
    }
}

/// Why an export failed. No partial output file is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {layer}: {source}")]
    Layer { layer: String, source: LayerError },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("image config is not valid JSON: {0}")]
    Config(serde_json::Error),
}
