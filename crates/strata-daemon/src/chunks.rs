//! Where chunk bytes come from outside the node's own fetch path:
//! - [`NodeChunkSource`]: a mount's chunks when a node runs on its data
//!   dir: the local store, then the node over its control socket.
//! - [`ImageChunks`]: whole-image work (export, commit): the local store,
//!   then, for the chunks an image pulled lazily through a node lacks, the
//!   node: its own fetch path when the work runs inside `strata serve`, its
//!   control socket otherwise. Without a node, the error says which image
//!   lacks how much, and how to get it.
//!
//! Every chunk is decoded and verified against its id whichever way it came.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_oci::MissingChunks;
use strata_store::{ChunkSource, SourceError, Store, StoreError, StoreSource};
use strata_types::ChunkId;

use crate::error::Error;
use crate::format::bytes;

/// How long one chunk fetched through a node's control socket may take
/// for whole-image work (the node's own fetch deadline ends it sooner).
const NODE_CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

/// Idle control connections a mount keeps.
const IDLE_CONNECTIONS: usize = 16;

/// A mount's chunks when a node runs on the data dir: the local store
/// first; chunks missing here are asked of the node, which fetches them
/// from peers (once, however many mounts wait), stores them, and sends
/// them on. Each is decoded and checked against its id here too.
pub struct NodeChunkSource {
    local: Arc<StoreSource>,
    data_dir: PathBuf,
    /// The node answers within its fetch deadline; this is a backstop.
    timeout: Duration,
    idle: parking_lot::Mutex<Vec<UnixStream>>,
}

impl NodeChunkSource {
    pub fn new(local: Arc<StoreSource>, data_dir: &Path, timeout: Duration) -> Self {
        Self { local, data_dir: data_dir.to_owned(), timeout, idle: Default::default() }
    }

    fn ask_node(&self, id: &ChunkId, ahead: bool) -> Result<Vec<u8>, String> {
        let idle = self.idle.lock().pop();
        // An idle connection may be to a node that has since restarted:
        // when it fails, once more on a fresh one.
        let pooled = idle
            .and_then(|mut s| crate::client::ask_chunk(&mut s, id, ahead, self.timeout).ok().map(|r| (s, r)));
        let (stream, answer) = match pooled {
            Some(done) => done,
            None => {
                let Some(mut stream) = strata_control::connect(&self.data_dir) else {
                    return Err(format!(
                        "not in the local store, and no node runs on {} to fetch it from peers",
                        self.data_dir.display()
                    ));
                };
                let answer = crate::client::ask_chunk(&mut stream, id, ahead, self.timeout)
                    .map_err(|e| e.to_string())?;
                (stream, answer)
            }
        };
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(stream);
        }
        drop(idle);
        let stored = answer?;
        let mut decoder = strata_chunk::ChunkDecoder::new().map_err(|e| e.to_string())?;
        decoder.decode(id, &stored).map_err(|e| format!("the node sent bad bytes: {e}"))
    }
}

impl NodeChunkSource {
    fn fetch_as(&self, id: &ChunkId, ahead: bool) -> Result<Vec<u8>, SourceError> {
        match self.local.fetch(id) {
            Err(SourceError::Missing(_)) => {}
            other => return other,
        }
        self.ask_node(id, ahead).map_err(|reason| SourceError::Failed { id: *id, reason })
    }
}

impl ChunkSource for NodeChunkSource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.fetch_as(id, false)
    }

    fn fetch_ahead(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.fetch_as(id, true)
    }

    /// The node shares one flight between a read-ahead and a read of a
    /// chunk, and the read raises its priority.
    fn demand_overtakes_ahead(&self) -> bool {
        true
    }
}

/// The chunks of whole-image work; see the module docs.
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
        if strata_control::connect(data_dir).is_some() {
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
pub fn missing_error(image: &str, missing: MissingChunks, data_dir: &Path) -> Error {
    Error::Refused(format!(
        "image {image} lacks {} ({}) in {} here: it was pulled lazily through a node, \
         and only what was read came. Start the node on this data dir (`strata --data-dir {} serve ...`) \
         so the rest is fetched from peers, then run this again",
        crate::format::plural(missing.chunks, "chunk"),
        bytes(missing.bytes),
        crate::format::plural_as(missing.layers, "of its layers", "of its layers"),
        data_dir.display()
    ))
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
