//! Setting a mount up: an image's lower tree from the store, the FUSE session.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use strata_store::{ImageRecord, Store};
use strata_types::LayerId;

use crate::error::MountError;
use crate::fs::MountFs;
use crate::lower::LowerTree;
use crate::overlay::Overlay;
use crate::reader::ChunkReader;
use crate::trace::ReadTrace;
use crate::upper::UpperDir;
use crate::ChunkSource;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Bytes of decoded chunks kept in memory.
    pub cache_bytes: u64,
    /// Reads that may wait on the chunk source at once.
    pub read_workers: usize,
    /// Threads reading FUSE requests.
    pub fuse_threads: usize,
    /// Shown as the mount's source in the mount table.
    pub fs_name: String,
    /// Kernel readahead for the mount, KiB (4 to 1024; the kernel's
    /// default is 128).
    pub readahead_kb: u32,
    /// Record the image bytes served here.
    pub read_trace: Option<Arc<ReadTrace>>,
    /// Where the mount counts its reads (kept by the caller to report them).
    pub stats: Arc<crate::stats::MountStats>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            read_workers: 64,
            fuse_threads: std::thread::available_parallelism().map_or(2, |n| n.get()).min(4),
            fs_name: "strata".to_owned(),
            readahead_kb: 1024,
            read_trace: None,
            stats: Arc::default(),
        }
    }
}

/// The merged lower tree of an image, from its layer indexes alone.
pub fn load_lower(store: &Store, image: &ImageRecord) -> Result<LowerTree, MountError> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for raw in &image.layers {
        let id = LayerId::from_slice(raw).map_err(|e| {
            strata_store::StoreError::Corrupt(format!("image record names a bad layer id: {e}"))
        })?;
        layers.push((id, store.layer_index(&id)?));
    }
    LowerTree::build(&layers)
}

/// Mounts `tree` at `mountpoint`, writable into `upper` if given, else
/// read-only. The mount is live when this returns; run the session (or
/// spawn it) to serve it.
pub fn mount(
    tree: LowerTree,
    source: Arc<dyn ChunkSource>,
    upper: Option<UpperDir>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Session<MountFs>, MountError> {
    let io = |source| MountError::Io { path: mountpoint.to_owned(), source };
    let read_only = upper.is_none();
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(options.read_workers.max(1))
        .thread_name("strata-io")
        .build()
        .map_err(io)?;
    let reader = ChunkReader::new(source, options.cache_bytes).with_prefetch(workers.handle().clone());
    let tree = Arc::new(tree);
    if let Some(trace) = &options.read_trace {
        trace.attach(tree.clone());
    }
    let overlay = Overlay::new(tree, Arc::new(reader), upper).map_err(io)?;
    let fs = MountFs::new(
        Arc::new(overlay),
        workers,
        options.read_trace.clone(),
        options.readahead_kb.saturating_mul(1024),
        options.stats.clone(),
    )
    .map_err(io)?;
    let mut mount_options = vec![
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("strata".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::NoAtime,
    ];
    mount_options.push(if read_only { MountOption::RO } else { MountOption::RW });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = SessionACL::All;
    config.n_threads = Some(options.fuse_threads.max(1));
    config.clone_fd = true;
    Session::new(fs, mountpoint, &config)
        .map_err(|source| MountError::Fuse { path: mountpoint.to_owned(), source })
}
