//! The snapshots: containerd's snapshot model (committed, active and view
//! snapshots in parent chains, with labels) kept in the store's
//! `snapshots` family, each with its own directories on local disk, laid out
//! and mounted as containerd's overlayfs snapshotter does
//! (`snapshots/overlay/overlay.go`, containerd 1.6): `<root>/snapshots/<id>/fs`
//! is the snapshot's own layer (the upper directory while it is active),
//! `<root>/snapshots/<id>/work` overlayfs's work directory.
//!
//! The rules are those of containerd's metastore (`snapshots/storage`) and
//! its snapshotter test suite (`snapshots/testsuite`), call by call on
//! [`Snapshots`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use strata_store::{SnapshotRecord, Store, StoreError};

use crate::filter::Filters;

/// containerd's snapshot kinds, with its wire values (`Kind` in
/// snapshots.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read-only, made by View; never committed.
    View = 1,
    /// Writable, made by Prepare; committed into a [`Kind::Committed`].
    Active = 2,
    /// Immutable, a parent for others.
    Committed = 3,
}

impl Kind {
    fn of(record: &SnapshotRecord) -> Kind {
        match record.kind {
            1 => Kind::View,
            2 => Kind::Active,
            _ => Kind::Committed,
        }
    }

    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What Stat, List and Update tell of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The key (or committed name).
    pub name: String,
    /// The parent's key; empty for none.
    pub parent: String,
    pub kind: Kind,
    /// Unix time in nanoseconds (UTC).
    pub created_ns: i64,
    pub updated_ns: i64,
    pub labels: BTreeMap<String, String>,
}

/// One mount as containerd's `Mount` type: mount(8)'s type, source and
/// options; the target is the caller's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Disk usage of a snapshot's own layer, as containerd's `fs.DiskUsage`:
/// bytes allocated (512-byte blocks) and inodes, each inode counted once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// What a call can fail with; each maps to the gRPC code containerd expects
/// (`errdefs`: AlreadyExists, NotFound, FailedPrecondition,
/// InvalidArgument; the rest Internal).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A remote chain could not be mounted (its node or mount failed).
    #[error("{0}")]
    Unavailable(String),
    #[error("snapshot store: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// The label every remote or unpacked layer snapshot carries: its chain ID
/// (containerd's `containerd.io/snapshot.ref`).
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";

/// Largest key plus value of one label, in bytes (containerd
/// `labels.Validate`).
pub const MAX_LABEL_BYTES: usize = 4096;

/// A layer chain Strata serves without containerd unpacking it: the
/// image whose first `depth` layers make the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSource {
    /// The image's ImageId, hex.
    pub image: String,
    /// How many of its layers, from the base, make the chain (at least 1).
    pub depth: u32,
}

/// What the node gives the snapshotter: layer chains from its store or its
/// cluster, and their read-only lazy mounts (implemented by the daemon).
/// Calls block; the snapshotter makes them off the async threads and
/// outside its own lock.
pub trait Layers: Send + Sync {
    /// The chain whose ChainID is `chain_id` ("sha256:…", the value of
    /// [`TARGET_LABEL`]), if Strata can serve it: from the store, else from
    /// the cluster or the image's registry (pulled once for the cluster),
    /// with the labels containerd sent as hints (CRI's
    /// `containerd.io/snapshot/cri.image-ref` names the image).
    ///
    /// `Ok(None)`: Strata does not have it and containerd unpacks it
    /// itself; `Err`: why looking failed (containerd unpacks it too).
    fn find_chain(
        &self,
        chain_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<ChainSource>, String>;

    /// Mounts `source` read-only at `mountpoint` (an empty directory) and
    /// returns once the mount serves. The mount outlives the node process.
    fn mount_chain(&self, source: &ChainSource, mountpoint: &Path) -> Result<(), String>;

    /// Whether a live Strata mount serves `mountpoint`.
    fn is_mounted(&self, mountpoint: &Path) -> bool;

    /// Unmounts `mountpoint` (a dead mount too).
    fn unmount_chain(&self, mountpoint: &Path) -> Result<(), String>;

    /// Keeps a layer containerd applied itself (the normal path) as a
    /// Strata layer, so the cluster can serve it: `upper` is the committed
    /// snapshot's directory (an overlayfs upper: whiteouts as 0/0 devices,
    /// opaque directories by xattr), `chain_id` the ChainID containerd
    /// committed it as, `parent` the ChainID of the chain below (none for
    /// a base layer). Called in the background, in commit order, never
    /// twice at once; again after a restart for every such snapshot, so
    /// it returns early for a chain Strata already has. The default keeps
    /// nothing.
    fn ingest_layer(&self, chain_id: &str, parent: Option<&str>, upper: &Path) -> Result<(), String> {
        let _ = (chain_id, parent, upper);
        Ok(())
    }
}

/// The ChainID a backend snapshot name gives: containerd's metadata names
/// a committed layer snapshot `NAMESPACE/SEQUENCE/CHAINID`
/// (`metadata/snapshot.go`); `None` for names that are not a sha256
/// digest there (commits of other clients).
pub fn chain_of_snapshot(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next()?;
    let hex = last.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(last)
}

/// The ChainID an unpack's snapshot key names: containerd's
/// `snapshots.UnpackKeyFormat` is `extract-UNIQUE CHAINID`, under the
/// metadata's `NS/SEQ/` prefix.
fn unpack_chain(key: &str) -> Option<&str> {
    let (head, chain) = key.rsplit_once(' ')?;
    head.rsplit('/').next()?.starts_with("extract-").then_some(())?;
    chain_of_snapshot(chain)
}

/// A committed layer snapshot for [`Layers::ingest_layer`].
struct Ingest {
    /// The snapshot's directory id.
    id: u64,
    name: String,
    chain_id: String,
    parent: Option<String>,
    upper: PathBuf,
}

struct State {
    records: BTreeMap<String, SnapshotRecord>,
    next_id: u64,
    /// The snapshot (directory id) the ingest thread is reading: Remove
    /// moves its directory aside rather than deleting it under the reader.
    ingesting: Option<u64>,
}

/// The snapshotter's snapshots: records in the store, directories under a
/// root on local disk (a filesystem overlayfs takes as upper: mknod and
/// `trusted.*` xattrs, as containerd writes whiteouts there).
pub struct Snapshots {
    store: Arc<Store>,
    root: PathBuf,
    /// `index=off` on overlay mounts when the kernel has the index feature,
    /// as containerd does (a lower shared by several mounts would otherwise
    /// be refused by the second).
    index_off: bool,
    state: Arc<Mutex<State>>,
    layers: Option<Arc<dyn Layers>>,
    /// One lock per chain mount: two containers of one chain starting at
    /// once mount it once.
    chain_locks: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    /// Committed layers for the ingest thread ([`Layers::ingest_layer`]):
    /// unbounded, as each is a few paths and the thread drains them in
    /// commit order.
    ingest: Option<std::sync::mpsc::Sender<Ingest>>,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SnapshotError> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(SnapshotError::InvalidArgument(format!(
                "label {k:?}: key and value are {} bytes, over {MAX_LABEL_BYTES}",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

impl Snapshots {
    /// The snapshots kept in `store`, with their directories under `root`
    /// (created if missing). Directories no record names (a crash between
    /// making or removing one and its record) are removed.
    ///
    /// Errors: the store, `root` not creatable.
    pub fn open(store: Arc<Store>, root: &Path) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(io_err(format!("creating {}", root.display())))?;
        let records: BTreeMap<String, SnapshotRecord> = store.snapshots()?.into_iter().collect();
        let next_id = records.values().map(|r| r.id).max().unwrap_or(0) + 1;
        let index_off = std::fs::read_to_string("/sys/module/overlay/parameters/index").is_ok();
        let snapshots = Self {
            store,
            root: root.to_owned(),
            index_off,
            state: Arc::new(Mutex::new(State { records, next_id, ingesting: None })),
            layers: None,
            chain_locks: Mutex::new(BTreeMap::new()),
            ingest: None,
        };
        // Directories moved aside for an ingest that a restart cut short.
        let _ = std::fs::remove_dir_all(snapshots.removed_dir());
        snapshots.cleanup()?;
        Ok(snapshots)
    }

    /// Serves remote snapshots from `layers`: a layer prepared with
    /// [`TARGET_LABEL`] whose chain Strata has is committed here at once
    /// and containerd told it exists; snapshots above such a chain read it
    /// through one read-only mount of it.
    ///
    /// Layers containerd applied itself are handed to
    /// [`Layers::ingest_layer`] by a thread of their own as they are
    /// committed, and at once for every such snapshot already kept (a
    /// restart).
    pub fn with_layers(mut self, layers: Arc<dyn Layers>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Ingest>();
        let ingester = layers.clone();
        let state = self.state.clone();
        let removed = self.removed_dir();
        let spawned = std::thread::Builder::new().name("snapshot-ingest".into()).spawn(move || {
            let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
            for job in rx {
                let span = tracing::info_span!("ingest", snapshot = %job.name, chain = %job.chain_id);
                let _entered = span.enter();
                {
                    let mut state = lock();
                    if state.records.get(&job.name).map(|r| r.id) != Some(job.id) {
                        continue;
                    }
                    state.ingesting = Some(job.id);
                }
                let result = ingester.ingest_layer(&job.chain_id, job.parent.as_deref(), &job.upper);
                lock().ingesting = None;
                // Removed while read: Remove moved the directory here.
                let aside = removed.join(job.id.to_string());
                if aside.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&aside) {
                        tracing::warn!(dir = %aside.display(), error = %e, "snapshot directory not removed");
                    }
                }
                match result {
                    Ok(()) => tracing::debug!("layer kept"),
                    Err(e) => tracing::warn!(error = %e, "a layer containerd applied was not kept as a Strata layer"),
                }
            }
        });
        match spawned {
            Ok(_) => {
                let state = self.lock();
                let mut kept: Vec<(&String, &SnapshotRecord)> = state.records.iter().collect();
                kept.sort_by_key(|(_, r)| r.id);
                for (name, record) in kept {
                    if let Some(job) = self.ingest_job(&state, name, record) {
                        let _ = tx.send(job);
                    }
                }
                drop(state);
                self.ingest = Some(tx);
            }
            Err(e) => tracing::warn!(error = %e, "no ingest thread: applied layers stay local"),
        }
        self.layers = Some(layers);
        self
    }

    /// The ingest of committed snapshot `name` when it is a layer
    /// containerd applied: committed under a ChainID, not a remote
    /// snapshot, on a parent that is one too (or none).
    fn ingest_job(&self, state: &State, name: &str, record: &SnapshotRecord) -> Option<Ingest> {
        if Kind::of(record) != Kind::Committed || !record.chain_image.is_empty() {
            return None;
        }
        let chain_id = chain_of_snapshot(name)?.to_owned();
        let parent = match state.records.get(&record.parent) {
            None if record.parent.is_empty() => None,
            None => return None,
            // A remote snapshot is named after its target, maybe with a
            // suffix: its label says its ChainID.
            Some(p) if !p.chain_image.is_empty() => Some(p.labels.get(TARGET_LABEL)?.clone()),
            Some(_) => Some(chain_of_snapshot(&record.parent)?.to_owned()),
        };
        Some(Ingest {
            id: record.id,
            name: name.to_owned(),
            chain_id,
            parent,
            upper: self.dir(record.id).join("fs"),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where Remove moves a directory the ingest thread is reading.
    fn removed_dir(&self) -> PathBuf {
        self.root.join("removed")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs(&self, id: u64) -> String {
        self.dir(id).join("fs").to_string_lossy().into_owned()
    }

    fn info(name: &str, record: &SnapshotRecord) -> Info {
        Info {
            name: name.to_owned(),
            parent: record.parent.clone(),
            kind: Kind::of(record),
            created_ns: record.created_ns,
            updated_ns: record.updated_ns,
            labels: record.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// A writable snapshot `key` on `parent` (empty: none), labelled:
    /// containerd's Prepare. Returns its mounts.
    ///
    /// Errors: `key` exists (AlreadyExists); `parent` missing (NotFound) or
    /// not committed (InvalidArgument); a label over [`MAX_LABEL_BYTES`].
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// A read-only snapshot `key` of `parent`: containerd's View.
    ///
    /// Errors: as [`Snapshots::prepare`].
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    fn check_parent(state: &State, parent: &str) -> Result<(), SnapshotError> {
        if parent.is_empty() {
            return Ok(());
        }
        match state.records.get(parent) {
            None => Err(SnapshotError::NotFound(parent.to_owned())),
            Some(p) if Kind::of(p) != Kind::Committed => {
                Err(SnapshotError::InvalidArgument(format!("parent {parent:?} is not a committed snapshot")))
            }
            Some(_) => Ok(()),
        }
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument("a snapshot key must not be empty".into()));
        }
        check_labels(&labels)?;
        {
            let state = self.lock();
            if state.records.contains_key(key) {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            Self::check_parent(&state, parent)?;
        }
        if kind == Kind::Active && self.layers.is_some() && !labels.contains_key(TARGET_LABEL) {
            if let Some(chain) = unpack_chain(key) {
                // containerd's unpack key (`extract-UNIQUE CHAINID`) without
                // the remote-snapshot label: a client that unpacks on its
                // own (ctr 1.6's pull and import).
                tracing::info!(
                    chain,
                    "containerd unpacks this layer itself: its Prepare has no containerd.io/snapshot.ref label \
                     (ctr image pull/import never send it; CRI and nerdctl do)"
                );
            }
        }
        if kind == Kind::Active {
            if let Some(target) = labels.get(TARGET_LABEL).filter(|t| !t.is_empty()) {
                if let Some(name) = self.remote(target, parent, &labels)? {
                    // containerd finds it with the filter
                    // `labels."containerd.io/snapshot.ref"==TARGET,parent==PARENT`.
                    return Err(SnapshotError::AlreadyExists(format!(
                        "target {target} is snapshot {name:?}"
                    )));
                }
            }
        }
        let record = SnapshotRecord { kind: kind as i32, parent: parent.to_owned(), ..Default::default() };
        self.insert(key, record, labels)?;
        self.mounts(key)
    }

    /// Makes snapshot `key` from `record` (kind, parent, chain) with
    /// `labels`: a new id, its directories, the record in the store, all
    /// under the lock with the checks made again.
    fn insert(
        &self,
        key: &str,
        mut record: SnapshotRecord,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let mut state = self.lock();
        if state.records.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        Self::check_parent(&state, &record.parent)?;
        let id = state.next_id;
        state.next_id += 1;
        let dir = self.dir(id);
        let made = (|| {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
            for sub in ["fs", "work"] {
                std::fs::DirBuilder::new().mode(0o755).create(dir.join(sub))?;
            }
            // The root of a new layer is 0755 whatever the umask
            // (containerd testsuite, RootPermission).
            std::fs::set_permissions(dir.join("fs"), std::fs::Permissions::from_mode(0o755))
        })();
        made.map_err(io_err(format!("creating {}", dir.display())))?;
        let now = now_ns();
        record.id = id;
        record.labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        record.created_ns = now;
        record.updated_ns = now;
        if let Err(e) = self.store.write_snapshots(&[(key, &record)], &[]) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        state.records.insert(key.to_owned(), record);
        Ok(())
    }

    /// The remote-snapshot path: the committed snapshot that already
    /// holds chain `target` on `parent`, else one made now when Strata
    /// has the chain; its name, or `None` when containerd must unpack the
    /// layer itself (the reason logged).
    fn remote(
        &self,
        target: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<String>, SnapshotError> {
        let Some(layers) = &self.layers else { return Ok(None) };
        let existing = |state: &State| {
            state
                .records
                .iter()
                .find(|(_, r)| {
                    Kind::of(r) == Kind::Committed
                        && r.parent == parent
                        && r.labels.get(TARGET_LABEL).map(String::as_str) == Some(target)
                })
                .map(|(name, _)| name.clone())
        };
        if let Some(name) = existing(&self.lock()) {
            return Ok(Some(name));
        }
        let source = match layers.find_chain(target, labels) {
            Ok(Some(source)) => source,
            Ok(None) => {
                tracing::info!(
                    chain = target,
                    "layer chain not in Strata: containerd unpacks it (normal path)"
                );
                return Ok(None);
            }
            Err(why) => {
                tracing::warn!(chain = target, error = %why, "looking for the layer chain failed: containerd unpacks it (normal path)");
                return Ok(None);
            }
        };
        if let Some(name) = existing(&self.lock()) {
            return Ok(Some(name));
        }
        // containerd's own name for the chain where it is free (another
        // namespace may have committed the same chain on another parent).
        let name = {
            let state = self.lock();
            if state.records.contains_key(target) {
                format!("{target}@{}", state.next_id)
            } else {
                target.to_owned()
            }
        };
        let record = SnapshotRecord {
            kind: Kind::Committed as i32,
            parent: parent.to_owned(),
            chain_image: source.image.clone(),
            chain_depth: source.depth,
            ..Default::default()
        };
        self.insert(&name, record, labels.clone())?;
        tracing::info!(chain = target, image = %source.image, depth = source.depth, snapshot = %name,
            "remote snapshot: the layer chain comes from Strata, containerd does not unpack it");
        Ok(Some(name))
    }

    /// The mounts of active or view snapshot `key`, as Prepare or View gave;
    /// a chain mount below it that died (its process gone) is mounted
    /// again first, so containerd never gets a dead lowerdir.
    ///
    /// Errors: `key` missing (NotFound) or committed (FailedPrecondition);
    /// the chain cannot be mounted (Unavailable).
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let chain = {
            let state = self.lock();
            Self::mountable(&state, key)?;
            Self::chain_below(&state, key)
        };
        if let Some(source) = &chain {
            self.ensure_chain_mount(source)?;
        }
        let state = self.lock();
        Self::mountable(&state, key)?;
        Ok(self.mounts_of(&state, key))
    }

    fn mountable(state: &State, key: &str) -> Result<(), SnapshotError> {
        match state.records.get(key) {
            None => Err(SnapshotError::NotFound(key.to_owned())),
            Some(r) if Kind::of(r) == Kind::Committed => Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active and view snapshots have mounts"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The records below `key`, nearest first, down to and including the
    /// first remote one (which holds every layer below it).
    fn lowers<'a>(state: &'a State, key: &str) -> Vec<&'a SnapshotRecord> {
        let mut out = Vec::new();
        let mut parent = state.records.get(key).map(|r| r.parent.as_str()).unwrap_or("");
        while let Some(record) = (!parent.is_empty()).then(|| state.records.get(parent)).flatten() {
            out.push(record);
            if !record.chain_image.is_empty() {
                break;
            }
            parent = &record.parent;
        }
        out
    }

    /// The remote chain `key` reads through, if any.
    fn chain_below(state: &State, key: &str) -> Option<ChainSource> {
        Self::lowers(state, key)
            .last()
            .filter(|r| !r.chain_image.is_empty())
            .map(|r| ChainSource { image: r.chain_image.clone(), depth: r.chain_depth })
    }

    /// Where chain `source` is mounted: one mount per chain on the node,
    /// shared by every snapshot above it.
    fn chain_path(&self, source: &ChainSource) -> PathBuf {
        self.root.join("chains").join(format!("{}-{}", source.image, source.depth))
    }

    fn ensure_chain_mount(&self, source: &ChainSource) -> Result<(), SnapshotError> {
        let Some(layers) = &self.layers else {
            return Err(SnapshotError::Unavailable(format!(
                "snapshot needs Strata's mount of image {} but the snapshotter runs without a node",
                source.image
            )));
        };
        let path = self.chain_path(source);
        let lock = {
            let mut locks = self.chain_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(path.to_string_lossy().into_owned()).or_default().clone()
        };
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        if layers.is_mounted(&path) {
            return Ok(());
        }
        // A mount whose process died answers ENOTCONN: take it away first.
        if std::fs::metadata(&path).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            tracing::warn!(mountpoint = %path.display(), "chain mount is dead: mounting it again");
            let _ = layers.unmount_chain(&path);
        }
        std::fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        layers.mount_chain(source, &path).map_err(|e| {
            SnapshotError::Unavailable(format!("mounting image {} at {}: {e}", source.image, path.display()))
        })
    }

    /// containerd's overlayfs snapshotter's mounts (overlay.go `mounts`),
    /// with a remote chain as one lower directory: a bind of the snapshot's
    /// own layer without parents; a read-only bind of the only lower for a
    /// view of one; else overlay, with upper and work for an active one.
    fn mounts_of(&self, state: &State, key: &str) -> Vec<Mount> {
        let Some(record) = state.records.get(key) else { return Vec::new() };
        let kind = Kind::of(record);
        let lowers: Vec<String> = Self::lowers(state, key)
            .into_iter()
            .map(|r| match r.chain_image.is_empty() {
                true => self.fs(r.id),
                false => self
                    .chain_path(&ChainSource { image: r.chain_image.clone(), depth: r.chain_depth })
                    .to_string_lossy()
                    .into_owned(),
            })
            .collect();
        if lowers.is_empty() {
            let mode = if kind == Kind::View { "ro" } else { "rw" };
            return vec![Mount {
                kind: "bind".into(),
                source: self.fs(record.id),
                options: vec![mode.into(), "rbind".into()],
            }];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if kind == Kind::Active {
            options.push(format!("workdir={}", self.dir(record.id).join("work").display()));
            options.push(format!("upperdir={}", self.fs(record.id)));
        } else if lowers.len() == 1 {
            return vec![Mount {
                kind: "bind".into(),
                source: lowers[0].clone(),
                options: vec!["ro".into(), "rbind".into()],
            }];
        }
        options.push(format!("lowerdir={}", lowers.join(":")));
        vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
    }

    /// Commits active snapshot `key` as `name`: the parent is kept, the
    /// labels are `labels` (nothing of the active snapshot's), its disk
    /// usage is frozen, and `key` is gone.
    ///
    /// Errors: `name` exists (AlreadyExists, checked first); `key` missing
    /// (NotFound); `key` a view or committed (FailedPrecondition).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        check_labels(&labels)?;
        let id = {
            let state = self.lock();
            Self::committable(&state, name, key)?;
            state.records[key].id
        };
        // Measured outside the lock (a big layer takes a while); containerd
        // writes nothing into a snapshot it commits.
        let usage = disk_usage(&self.dir(id).join("fs"))?;
        let mut state = self.lock();
        Self::committable(&state, name, key)?;
        let now = now_ns();
        let record = SnapshotRecord {
            kind: Kind::Committed as i32,
            labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            created_ns: now,
            updated_ns: now,
            size: usage.size,
            inodes: usage.inodes,
            ..state.records[key].clone()
        };
        self.store.write_snapshots(&[(name, &record)], &[key])?;
        state.records.remove(key);
        let job = self.ingest.as_ref().and_then(|_| self.ingest_job(&state, name, &record));
        state.records.insert(name.to_owned(), record);
        drop(state);
        if let (Some(tx), Some(job)) = (&self.ingest, job) {
            if tx.send(job).is_err() {
                tracing::warn!(snapshot = name, "no ingest thread: the layer is kept after the next restart");
            }
        }
        Ok(())
    }

    fn committable(state: &State, name: &str, key: &str) -> Result<(), SnapshotError> {
        if state.records.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        match state.records.get(key) {
            None => Err(SnapshotError::NotFound(key.to_owned())),
            Some(r) if Kind::of(r) != Kind::Active => Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is a {}: only an active snapshot can be committed",
                Kind::of(r).as_str()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Removes snapshot `key` of any kind, and its directories.
    ///
    /// Errors: missing (NotFound); a snapshot has it as parent
    /// (FailedPrecondition, "cannot remove snapshot with child").
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let mut state = self.lock();
        let Some(record) = state.records.get(key) else {
            return Err(SnapshotError::NotFound(key.to_owned()));
        };
        let id = record.id;
        if let Some((child, _)) = state.records.iter().find(|(_, r)| r.parent == key) {
            return Err(SnapshotError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?} with child {child:?}"
            )));
        }
        let chain = Self::chain_below(&state, key).filter(|_| Kind::of(record) != Kind::Committed);
        self.store.write_snapshots(&[], &[key])?;
        state.records.remove(key);
        if state.ingesting == Some(id) {
            // The ingest thread reads it by open directories: moved aside
            // (same filesystem) it stays whole until the thread removes it.
            let aside = self.removed_dir().join(id.to_string());
            let moved = std::fs::create_dir_all(self.removed_dir())
                .and_then(|()| std::fs::rename(self.dir(id), &aside));
            if let Err(e) = moved {
                tracing::warn!(dir = %self.dir(id).display(), error = %e, "snapshot directory not moved aside");
            }
        }
        // The chain's mount goes with the last active or view snapshot on it.
        let still_used = chain.as_ref().is_some_and(|source| {
            state.records.iter().any(|(k, r)| {
                Kind::of(r) != Kind::Committed && Self::chain_below(&state, k).as_ref() == Some(source)
            })
        });
        drop(state);
        if let (Some(source), false, Some(layers)) = (&chain, still_used, &self.layers) {
            let path = self.chain_path(source);
            if layers.is_mounted(&path) {
                if let Err(e) = layers.unmount_chain(&path) {
                    tracing::warn!(mountpoint = %path.display(), error = %e, "chain mount left (still in use?)");
                }
            }
        }
        // A crash before this leaves a directory no record names, which
        // the next open removes.
        let dir = self.dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "snapshot directory not removed");
            }
        }
        Ok(())
    }

    /// What containerd's Stat tells of `key`.
    ///
    /// Errors: missing (NotFound).
    pub fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let state = self.lock();
        state
            .records
            .get(key)
            .map(|r| Self::info(key, r))
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    /// Changes the labels of snapshot `name` as containerd's Update does
    /// (`snapshots/storage` UpdateInfo): no paths or `labels` replace them
    /// all with `labels`; `labels.KEY` sets that one, or deletes it when
    /// `labels` has no value (or an empty one) for it. Labels are the only
    /// thing an update changes; `updated` becomes now.
    ///
    /// Errors: missing (NotFound); any other path (InvalidArgument); a
    /// label over [`MAX_LABEL_BYTES`].
    pub fn update(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info, SnapshotError> {
        check_labels(&labels)?;
        let mut state = self.lock();
        let Some(current) = state.records.get(name) else {
            return Err(SnapshotError::NotFound(name.to_owned()));
        };
        let mut record = current.clone();
        let mut replace_all = paths.is_empty();
        let mut set = Vec::new();
        for path in paths {
            if path == "labels" {
                replace_all = true;
            } else if let Some(key) = path.strip_prefix("labels.") {
                set.push(key.to_owned());
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update {path:?} of snapshot {name:?}: only labels change"
                )));
            }
        }
        if replace_all {
            record.labels =
                labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        for key in set {
            match labels.get(&key).filter(|v| !v.is_empty()) {
                Some(v) => record.labels.insert(key, v.clone()),
                None => record.labels.remove(&key),
            };
        }
        record.updated_ns = now_ns();
        self.store.write_snapshots(&[(name, &record)], &[])?;
        let info = Self::info(name, &record);
        state.records.insert(name.to_owned(), record);
        Ok(info)
    }

    /// Every snapshot one of `filters` matches (fields `kind`, `name`,
    /// `parent`, `labels.KEY`), in key order.
    pub fn list(&self, filters: &Filters) -> Vec<Info> {
        let state = self.lock();
        state
            .records
            .iter()
            .map(|(k, r)| Self::info(k, r))
            .filter(|info| filters.matches(|path| field(info, path)))
            .collect()
    }

    /// Disk usage of `key`'s own layer: measured now for an active one,
    /// as frozen at commit for a committed one, nothing for a view.
    ///
    /// Errors: missing (NotFound); the directory unreadable.
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let (kind, id, frozen) = {
            let state = self.lock();
            let r = state.records.get(key).ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
            (Kind::of(r), r.id, Usage { size: r.size, inodes: r.inodes })
        };
        match kind {
            Kind::View => Ok(Usage::default()),
            Kind::Committed => Ok(frozen),
            Kind::Active => disk_usage(&self.dir(id).join("fs")),
        }
    }

    /// Removes directories under the root that no snapshot names.
    ///
    /// Errors: the root unreadable.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        let state = self.lock();
        let live: HashSet<String> = state.records.values().map(|r| r.id.to_string()).collect();
        let dir = self.root.join("snapshots");
        for entry in std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing a snapshot directory no snapshot names");
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "not removed");
                }
            }
        }
        Ok(())
    }
}

/// A field of `info` by its filter path (containerd's snapshot adaptor,
/// `snapshots/storage/bolt.go`): `kind`, `name`, `parent` (always present),
/// `labels.REST` (REST joined with `.`).
fn field(info: &Info, path: &[String]) -> Option<String> {
    match path.first().map(String::as_str)? {
        "kind" => Some(info.kind.as_str().to_owned()),
        "name" => Some(info.name.clone()),
        "parent" => Some(info.parent.clone()),
        "labels" if path.len() > 1 => info.labels.get(&path[1..].join(".")).cloned(),
        _ => None,
    }
}

/// containerd's `fs.DiskUsage`: 512-byte blocks and inodes under `root`,
/// each inode once (hard links), `root` included; symlinks not followed.
pub fn disk_usage(root: &Path) -> Result<Usage, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).map_err(io_err(format!("measuring {}", path.display())))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.size += meta.blocks() as i64 * 512;
            usage.inodes += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err(format!("measuring {}", path.display())))? {
                stack.push(entry.map_err(io_err(format!("measuring {}", path.display())))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's names (metadata/snapshot.go, snapshots.UnpackKeyFormat):
    /// committed layers `NS/SEQ/CHAINID`, unpack keys `NS/SEQ/extract-UNIQUE CHAINID`.
    #[test]
    fn chain_ids_are_read_from_containerds_names() {
        let chain = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(chain_of_snapshot(&format!("default/12/{chain}")), Some(chain.as_str()));
        assert_eq!(chain_of_snapshot(&chain), Some(chain.as_str()));
        assert_eq!(chain_of_snapshot(&format!("{chain}@3")), None, "a remote snapshot's suffix");
        assert_eq!(chain_of_snapshot("default/3/my-build"), None);
        assert_eq!(chain_of_snapshot(&format!("default/1/sha256:{}", "AB".repeat(32))), None);
        assert_eq!(unpack_chain(&format!("default/7/extract-123-abc {chain}")), Some(chain.as_str()));
        assert_eq!(unpack_chain(&format!("extract-1 {chain}")), Some(chain.as_str()));
        assert_eq!(unpack_chain(&format!("default/7/container {chain}")), None);
        assert_eq!(unpack_chain("default/8/my-container"), None);
    }
}
