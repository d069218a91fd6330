//! Where chunk bytes come from: the [`ChunkSource`] abstraction that mounts
//! read through (the local store, a node, a list of peers) and its
//! store-backed implementations. It lives here, below both the mount and
//! the node, so the read path runs strictly downward: mount → node → store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use strata_types::ChunkId;

use crate::{OpenMode, Store, StoreError};

/// Why a chunk could not be had from a [`ChunkSource`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    #[error("chunk {0} is not available")]
    Missing(ChunkId),
    #[error("chunk {id}: {reason}")]
    Failed { id: ChunkId, reason: String },
}

/// A provider of chunk bytes. Blocking: the mount calls it from worker
/// threads, never from the threads that read FUSE requests, so a slow source
/// delays only the reads that need its chunks.
pub trait ChunkSource: Send + Sync + 'static {
    /// The chunk's uncompressed bytes, verified: BLAKE3 of them is `id`.
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError>;

    /// [`fetch`](Self::fetch) for a read-ahead: no read waits for it yet,
    /// so sources that go to the network ask with prefetch priority (peers
    /// answer demand first). By default the same as `fetch`.
    fn fetch_ahead(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.fetch(id)
    }

    /// Whether a [`fetch`](Self::fetch) of a chunk that a
    /// [`fetch_ahead`](Self::fetch_ahead) is still fetching overtakes it
    /// without fetching it twice (a node: the two share one flight, whose
    /// priority the demand raises). A read then asks for the chunk again
    /// instead of waiting for the read-ahead. By default false.
    fn demand_overtakes_ahead(&self) -> bool {
        false
    }
}

/// Chunks from the local store, opened read-only beside the process that
/// imports and collects garbage.
///
/// A read-only view is a snapshot of the store's files; when the writer's
/// compaction removes a file the view still names, the read fails with an I/O
/// error, and the source reopens the store and tries once more. Chunks of a
/// mounted image stay referenced (its record cannot be removed while it is
/// mounted), so the reopened view still holds them.
pub struct StoreSource {
    dir: PathBuf,
    store: RwLock<Arc<Store>>,
}

impl StoreSource {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let store = Store::open(dir, OpenMode::ReadOnly)?;
        Ok(Self { dir: dir.to_owned(), store: RwLock::new(Arc::new(store)) })
    }

    /// The current view of the store.
    pub fn store(&self) -> Arc<Store> {
        self.store.read().clone()
    }

    /// Runs `read` on the current view; if it fails with an I/O error (a file
    /// the view named was removed by the writer's compaction), once more on a
    /// fresh view.
    pub fn with_store<T>(&self, read: impl Fn(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let store = self.store();
        match read(&store) {
            Err(StoreError::Db(e)) => {
                tracing::debug!(error = %e, "store read failed; retrying on a fresh view");
                read(&*self.reopen(&store)?)
            }
            other => other,
        }
    }

    fn reopen(&self, stale: &Arc<Store>) -> Result<Arc<Store>, StoreError> {
        let mut current = self.store.write();
        if Arc::ptr_eq(&current, stale) {
            tracing::info!(store = %self.dir.display(), "reopening the store view after a read error");
            *current = Arc::new(Store::open(&self.dir, OpenMode::ReadOnly)?);
        }
        Ok(current.clone())
    }
}

impl ChunkSource for StoreSource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        let failed = |e: StoreError| match e {
            StoreError::MissingChunk(id) => SourceError::Missing(id),
            other => SourceError::Failed { id: *id, reason: other.to_string() },
        };
        self.with_store(|store| store.get_chunk(id)).map_err(failed)
    }
}

/// A store this process holds open reads its own chunks.
impl ChunkSource for Store {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.get_chunk(id).map_err(|e| match e {
            StoreError::MissingChunk(id) => SourceError::Missing(id),
            other => SourceError::Failed { id: *id, reason: other.to_string() },
        })
    }
}
