use std::path::PathBuf;

use strata_chunk::ChunkError;
use strata_types::{ChunkId, ImageId, LayerId};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {} is in use by another process", path.display())]
    Busy { path: PathBuf },
    #[error("store at {}: {source}", path.display())]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("store was opened read-only")]
    ReadOnly,
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("chunk {0} is not in the store")]
    MissingChunk(ChunkId),
    #[error("chunk {0} is in no stored layer: refusing to store it")]
    Unreferenced(ChunkId),
    #[error("layer {0} is not in the store")]
    MissingLayer(LayerId),
    #[error("layer {id}: stored index hashes to {actual}, the store is corrupt")]
    CorruptIndex { id: LayerId, actual: LayerId },
    #[error("image {id}: stored record hashes to {actual}, the store is corrupt")]
    CorruptImage { id: ImageId, actual: ImageId },
    #[error("{what} {key}: stored record does not decode: {source}")]
    Decode { what: &'static str, key: String, source: prost::DecodeError },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// No image has this name, id or id prefix; `suggestions` are the
    /// closest names the store holds (at most three; may be empty).
    #[error("no image named {reference:?}{}", did_you_mean(suggestions))]
    NoSuchImage { reference: String, suggestions: Vec<String> },
    #[error("{reference:?} matches {count} images; give more of the id")]
    Ambiguous { reference: String, count: usize },
}

impl StoreError {
    /// [`StoreError::NoSuchImage`] without suggestions.
    pub fn no_such_image(reference: impl Into<String>) -> Self {
        Self::NoSuchImage { reference: reference.into(), suggestions: Vec::new() }
    }

    pub(crate) fn decode(what: &'static str, key: impl ToString, source: prost::DecodeError) -> Self {
        StoreError::Decode { what, key: key.to_string(), source }
    }
}

/// "; did you mean a, b or c?" for [`StoreError::NoSuchImage`].
fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [rest @ .., last] => format!("; did you mean {} or {last}?", rest.join(", ")),
    }
}
