//! Where whole-image work (export, commit) gets chunk bytes: the local
//! store, then, for the chunks an image pulled lazily through a node lacks,
//! the node — its own fetch path when the work runs inside `strata serve`,
//! its control socket otherwise. Every chunk is verified against its id
//! whichever way it came. Without a node, the error says which image lacks
//! how much, and how to get it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_mount::{ChunkSource, SourceError, StoreSource};
use strata_oci::MissingChunks;
use strata_store::{Store, StoreError};
use strata_types::ChunkId;

use crate::control::{self, NodeChunkSource};
use crate::output::bytes;

/// How long one chunk fetched through a node's control socket may take
/// (the node's own fetch deadline ends it sooner).
const NODE_CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

pub enum ImageChunks {
    /// Inside the node: its store, then its fetch path (peers).
    InNode(Arc<strata_node::Node>),
    /// A command beside a running node: the local store, then the node.
    ViaNode(NodeChunkSource),
    /// No node: the local store alone.
    Local { store: Arc<Store>, image: String, data_dir: PathBuf },
}

impl ImageChunks {
    /// The source for work on `image` in `data_dir`: through the node if
    /// this runs inside one (`node`) or one runs on the data dir.
    pub fn new(
        node: Option<&Arc<strata_node::Node>>,
        store: Arc<Store>,
        store_dir: &Path,
        data_dir: &Path,
        image: &str,
    ) -> Result<Self, StoreError> {
        if let Some(node) = node {
            return Ok(Self::InNode(node.clone()));
        }
        if control::connect(data_dir).is_some() {
            let local = Arc::new(StoreSource::open(store_dir)?);
            return Ok(Self::ViaNode(NodeChunkSource::new(local, data_dir, NODE_CHUNK_TIMEOUT)));
        }
        Ok(Self::Local { store, image: image.to_owned(), data_dir: data_dir.to_owned() })
    }

    /// Whether chunks missing here can be fetched.
    pub fn fetches(&self) -> bool {
        !matches!(self, Self::Local { .. })
    }
}

/// The error for an image whose chunks are partly missing, with no node to
/// fetch them.
pub fn missing_error(image: &str, missing: MissingChunks, data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "image {image} lacks {} chunks ({}) in {} of its layers here: it was pulled lazily through a node, \
         and only what was read came. Start the node on this data dir (`strata --data-dir {} serve ...`) \
         so the rest is fetched from peers, then run this again",
        missing.chunks,
        bytes(missing.bytes),
        missing.layers,
        data_dir.display()
    )
}

impl ChunkSource for ImageChunks {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        match self {
            Self::InNode(node) => match node.store().get_chunk(id) {
                Ok(bytes) => Ok(bytes),
                Err(StoreError::MissingChunk(_)) => {
                    let failed = |reason: String| SourceError::Failed { id: *id, reason };
                    // Whole-image work runs on a blocking thread, never on
                    // the node's async workers.
                    let stored =
                        node.runtime().block_on(node.fetch_chunk(*id)).map_err(|e| failed(e.to_string()))?;
                    let mut decoder = strata_chunk::ChunkDecoder::new().map_err(|e| failed(e.to_string()))?;
                    decoder.decode(id, &stored).map_err(|e| failed(format!("bad bytes: {e}")))
                }
                Err(other) => Err(SourceError::Failed { id: *id, reason: other.to_string() }),
            },
            Self::ViaNode(source) => source.fetch(id),
            Self::Local { store, image, data_dir } => store.get_chunk(id).map_err(|e| match e {
                StoreError::MissingChunk(id) => SourceError::Failed {
                    id,
                    reason: format!(
                        "not here: image {image} was pulled lazily through a node; start the node on {} to \
                         fetch the rest from peers",
                        data_dir.display()
                    ),
                },
                other => SourceError::Failed { id: *id, reason: other.to_string() },
            }),
        }
    }
}

/// [`ImageChunks`] as the layer writer reads chunks.
pub struct LayerChunks<'a>(pub &'a ImageChunks);

impl strata_layer::ChunkSource for LayerChunks<'_> {
    type Error = SourceError;
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.0.fetch(id)
    }
}
