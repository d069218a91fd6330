//! A data dir: where a store, its mounts' records and a node's socket live,
//! with the settings in force and, for work the node runs, the node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_store::{OpenMode, Store, StoreError};

use crate::cancel::Cancel;
use crate::error::{Context, Error, Result};
use crate::settings::Settings;

/// What every operation needs: where the store is, the settings, and the
/// node when the work runs inside `strata serve`.
#[derive(Clone)]
pub struct DataDir {
    /// Absolute path of the data dir (`DATA_DIR/store`, `mounts/`, `node.sock`, …).
    pub path: PathBuf,
    pub settings: Settings,
    /// The settings file given on the command line, handed on to the
    /// processes this one starts (mount serving).
    pub config_file: Option<PathBuf>,
    /// How long to wait for another process to release the store.
    pub lock_wait: Duration,
    /// The node, when this work runs inside it: its store is the one used.
    pub node: Option<Arc<strata_node::Node>>,
}

impl DataDir {
    /// `path` made absolute, with `settings`.
    pub fn new(path: &Path, settings: Settings) -> Self {
        Self {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
            settings,
            config_file: None,
            lock_wait: Duration::from_secs(300),
            node: None,
        }
    }

    /// This data dir as seen by work the node runs for a caller.
    pub fn in_node(&self, node: Arc<strata_node::Node>) -> Self {
        Self { node: Some(node), ..self.clone() }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.path.join("store")
    }

    /// The store for reading: a consistent view beside a running writer,
    /// or, inside a node, its own store (what it fetched is there before it
    /// reaches the store's files).
    pub fn read_store(&self) -> Result<Arc<Store>> {
        if let Some(node) = &self.node {
            return Ok(node.store().clone());
        }
        std::fs::create_dir_all(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        Ok(Arc::new(Store::open(&self.store_dir(), OpenMode::ReadOnly).context("opening the store")?))
    }

    /// The store for changing (the node's, inside a node), waiting up to
    /// `lock_wait` while another process holds it.
    pub fn write_store(&self) -> Result<Arc<Store>> {
        self.write_store_unless(&Cancel::new())
    }

    /// [`write_store`](Self::write_store), giving up with
    /// [`Error::Cancelled`] when `cancel` is while it waits.
    pub fn write_store_unless(&self, cancel: &Cancel) -> Result<Arc<Store>> {
        if let Some(node) = &self.node {
            return Ok(node.store().clone());
        }
        self.open_write_store_unless(cancel).map(Arc::new)
    }

    /// Opens the store for changing, waiting up to `lock_wait` while
    /// another process holds it (said once on stderr's log).
    pub fn open_write_store(&self) -> Result<Store> {
        self.open_write_store_unless(&Cancel::new())
    }

    fn open_write_store_unless(&self, cancel: &Cancel) -> Result<Store> {
        std::fs::create_dir_all(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match Store::open(&self.store_dir(), OpenMode::ReadWrite) {
                Err(StoreError::Busy { .. }) if cancel.is_cancelled() => return Err(Error::Cancelled),
                Err(StoreError::Busy { path }) if started.elapsed() < self.lock_wait => {
                    if !told {
                        tracing::warn!(path = %path.display(), "waiting for another strata process to release the store");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other.context("opening the store"),
            }
        }
    }
}
