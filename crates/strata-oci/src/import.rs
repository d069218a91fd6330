use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};
use strata_chunk::{ChunkEncoder, Chunker, Chunking};
use strata_layer::{
    put_split, read_layer, ChunkSink, LayerIndex, LayerRead, LayerSummary, TarSplit, TarSplitRef,
};
use strata_proto::v1::{ImageRecord, LayerRecord};
use strata_store::{ImportTxn, Store, StoreError};
use strata_types::{ChunkId, ImageId, LayerId, OciDigest};

use crate::archive::Archive;
use crate::blob::{Compression, Hashing};
use crate::formats::{plan, plan_from_manifest, ImagePlan, LayerPlan};
use crate::{normalize_name, ImportError};

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Names to give the image instead of those in the archive (the archive
    /// must then hold exactly one image).
    pub names: Vec<String>,
    pub chunking: Chunking,
    /// zstd level for chunks.
    pub zstd_level: i32,
    /// Threads compressing and storing chunks.
    pub workers: usize,
    /// Layers read and converted at the same time, at most (containerd
    /// downloads three at a time by default; so does this). Each one read
    /// from a registry streams over its own connection.
    pub layers_at_once: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            chunking: Chunking::default(),
            zstd_level: 3,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            layers_at_once: 3,
        }
    }
}

/// Told how an import advances; the CLI draws a progress bar with it.
pub trait ImportProgress: Send + Sync {
    /// Before the first layer: the blob bytes the import will read.
    fn start(&self, _total_bytes: u64) {}
    /// A layer begins: its archive member (or blob digest, from a
    /// registry) and its blob's size in bytes. Several layers may be under
    /// way at once.
    fn layer(&self, _member: &str, _size: u64) {}
    /// Another `bytes` of the layer `member`'s blob read.
    fn advance(&self, _member: &str, _bytes: u64) {}
    /// The layer `member` is converted and verified (it becomes visible
    /// with the rest of the import, at its commit).
    fn layer_done(&self, _member: &str) {}
    /// Whether the caller wants the import stopped: asked before every
    /// read of a layer blob and before the commit; once true, the import
    /// ends with [`ImportError::Cancelled`] and the store is as it was.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A reader that stops being readable once `cancelled` says so.
pub(crate) struct Cancellable<'a, R> {
    pub(crate) inner: R,
    pub(crate) cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if (self.cancelled)() {
            return Err(std::io::Error::other("import cancelled"));
        }
        self.inner.read(buf)
    }
}

/// An [`ImportProgress`] that shows nothing.
pub struct NoProgress;
impl ImportProgress for NoProgress {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    pub names: Vec<String>,
    pub id: ImageId,
    pub layers: Vec<LayerId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    pub layers_added: usize,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    /// Layer bytes read from the archive (as stored, compressed or not).
    pub blob_bytes: u64,
    /// Regular-file bytes of all layers read.
    pub content_bytes: u64,
}

/// An image an archive names, as read from its manifests and indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveImage {
    pub names: Vec<String>,
    pub layers: usize,
}

/// Reads the manifests and indexes of a docker-save archive or OCI layout
/// (directory or tar; an archive compressed as a whole is decompressed into
/// `scratch`) and returns the images it names, checking every document's
/// digest and shape as an import would, without reading layers or storing
/// anything. Errors as [`import_archive`]'s.
pub fn archive_images(path: &Path, scratch: &Path) -> Result<Vec<ArchiveImage>, ImportError> {
    let archive = Archive::open(path, scratch)?;
    Ok(plan(&archive, path)?
        .into_iter()
        .map(|p| ArchiveImage { names: p.names, layers: p.layers.len() })
        .collect())
}

/// Where an import reads layer blobs from: an archive's members, or a
/// registry's blobs.
pub trait LayerBlobs: Sync {
    /// Opens the blob of a layer: `member` is the archive member, or
    /// `blobs/sha256/<hex>` for a layer named by digest (`digest`, when
    /// known, with its `size`). Returns the reader and the blob's size.
    /// The import checks the bytes against the digest and the diff_id.
    fn open(
        &self,
        member: &str,
        digest: Option<&OciDigest>,
        size: Option<u64>,
    ) -> Result<(Box<dyn Read + Send>, u64), ImportError>;
}

impl LayerBlobs for Archive {
    fn open(
        &self,
        member: &str,
        _digest: Option<&OciDigest>,
        _size: Option<u64>,
    ) -> Result<(Box<dyn Read + Send>, u64), ImportError> {
        self.open_member(member)
    }
}

/// An image as a registry serves it: its manifest (OCI image manifest or
/// docker schema 2, already checked against its digest by the caller) and
/// its config blob, with the names to give it. Manifest lists and indexes
/// are resolved to one platform's manifest before.
pub struct ManifestImage<'a> {
    pub manifest: &'a [u8],
    pub config: &'a [u8],
    pub names: Vec<String>,
}

/// Imports one image from its manifest and config, streaming each layer
/// blob from `blobs` once through the chunker (checked against its digest
/// and the config's diff_id while it streams), in one store transaction:
/// the image appears whole or not at all.
///
/// Errors: a manifest or config that does not parse or whose config digest
/// or size differ from the manifest's descriptor; a layer media type that
/// is foreign, non-distributable or encrypted; the errors of
/// [`import_archive`] for the layers.
pub fn import_manifest(
    store: &Store,
    image: ManifestImage<'_>,
    blobs: &dyn LayerBlobs,
    options: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    let manifest: oci_spec::image::ImageManifest =
        serde_json::from_slice(image.manifest).map_err(|e| ImportError::member("manifest", e))?;
    let described = manifest.config();
    let expected: OciDigest = described
        .digest()
        .to_string()
        .parse()
        .map_err(|e| ImportError::member("manifest", format!("config descriptor: {e}")))?;
    let actual = OciDigest::sha256_of(image.config);
    if actual != expected {
        return Err(ImportError::DigestMismatch { member: "config".into(), expected, actual });
    }
    if described.size() != image.config.len() as u64 {
        return Err(ImportError::SizeMismatch {
            member: "config".into(),
            expected: described.size(),
            actual: image.config.len() as u64,
        });
    }
    let mut plan = plan_from_manifest("manifest", &manifest, "config", image.config.to_vec())?;
    plan.manifest = image.manifest.to_vec();
    plan.names = image.names.iter().map(|n| normalize_name(n)).collect::<Result<_, _>>()?;
    import_plans(store, vec![plan], blobs, &ImportOptions { names: Vec::new(), ..options.clone() }, progress)
}

/// Imports every image of a docker-save archive or OCI layout (directory or
/// tar) in one store transaction: all of them appear, or none and the store
/// is as it was.
pub fn import_archive(
    store: &Store,
    path: &Path,
    options: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    let cancelled = || progress.cancelled();
    let archive = match Archive::open_cancellable(path, store.path(), &cancelled) {
        Err(_) if progress.cancelled() => return Err(ImportError::Cancelled),
        other => other?,
    };
    let plans = plan(&archive, path)?;
    if progress.cancelled() {
        return Err(ImportError::Cancelled);
    }
    import_plans(store, plans, &archive, options, progress)
}

/// Imports planned images, their layer blobs read from `blobs`, in one
/// store transaction.
/// The results table's lock; a converter that panicked left it usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn import_plans(
    store: &Store,
    mut plans: Vec<ImagePlan>,
    blobs: &dyn LayerBlobs,
    options: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    if !options.names.is_empty() {
        if plans.len() != 1 {
            return Err(ImportError::NameNeedsOneImage(plans.len()));
        }
        plans[0].names = options.names.iter().map(|n| normalize_name(n)).collect::<Result<_, _>>()?;
    }
    let mut txn = store.begin_import()?;

    // Each distinct blob once, whatever number of images share it.
    let mut unique: Vec<LayerPlan> = Vec::new();
    let mut seen = HashSet::new();
    for layer in plans.iter().flat_map(|p| &p.layers) {
        if seen.insert(layer.member.clone()) {
            unique.push(layer.clone());
        }
    }
    // A layer this store holds whole, with the very tar the plan names
    // kept, is not read again (docker's "Already exists").
    let held = held_layers(store, &unique)?;
    unique.retain(|layer| !held.contains_key(&layer.member));
    let mut sizes = Vec::with_capacity(unique.len());
    for layer in &unique {
        sizes.push(match layer.blob_size {
            Some(size) => size,
            None => blobs.open(&layer.member, layer.blob_digest.as_ref(), None)?.1,
        });
    }
    progress.start(sizes.iter().sum());

    let mut report = ImportReport::default();
    let converted = std::thread::scope(|scope| -> Result<Vec<(LayerIndex, LayerRecord)>, ImportError> {
        let pool = ChunkPool::start(scope, &txn, options.workers.max(1), options.zstd_level)?;
        // Layers go to `layers_at_once` converters in order; the first
        // failure stops the others from taking another layer.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results: Mutex<Vec<Option<Result<_, ImportError>>>> =
            Mutex::new((0..unique.len()).map(|_| None).collect());
        let converters = options.layers_at_once.clamp(1, unique.len().max(1));
        let setup = std::thread::scope(|inner| -> Result<(), ImportError> {
            let mut handles = Vec::new();
            for _ in 0..converters {
                let (next, failed, results, unique, pool, sizes) =
                    (&next, &failed, &results, &unique, &pool, &sizes);
                let chunking = options.chunking;
                handles.push(inner.spawn(move || -> Result<(), ImportError> {
                let mut chunker = Chunker::new(chunking).map_err(|e| ImportError::Setup(e.to_string()))?;
                let mut sink = pool.sink();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= unique.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
                        return Ok(());
                    }
                    let layer = &unique[n];
                    tracing::info!(member = %layer.member, layer = n + 1, of = unique.len(), "importing layer");
                    progress.layer(&layer.member, sizes[n]);
                    let result = if progress.cancelled() {
                        Err(ImportError::Cancelled)
                    } else {
                        convert_layer(blobs, layer, &mut chunker, &mut sink, progress)
                    };
                    match result {
                        Ok(_) => progress.layer_done(&layer.member),
                        Err(_) => failed.store(true, std::sync::atomic::Ordering::SeqCst),
                    }
                    lock(results)[n] = Some(result);
                }
            }));
            }
            let mut setup = Ok(());
            for handle in handles {
                match handle.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => setup = Err(e),
                    Err(_) => setup = Err(ImportError::Setup("a layer converter panicked".into())),
                }
            }
            setup
        });
        let finished = pool.finish();
        setup?;
        let mut out = Vec::new();
        // The first failing layer in order names the failure.
        for result in std::mem::take(&mut *lock(&results)).into_iter().flatten() {
            match result {
                Ok((index, record, summary)) => {
                    report.blob_bytes += record.blob_size;
                    report.content_bytes += summary.content_bytes;
                    out.push((index, record));
                }
                Err(e) => {
                    // A read refused because of a cancel surfaces as the
                    // layer's error: say what it was.
                    if progress.cancelled() {
                        tracing::debug!(error = %e, "import cancelled");
                        return Err(ImportError::Cancelled);
                    }
                    return Err(e);
                }
            }
        }
        finished?;
        if out.len() != unique.len() {
            return Err(ImportError::Setup("a layer was left unconverted".into()));
        }
        Ok(out)
    })?;

    let mut layer_ids: HashMap<String, LayerId> = held;
    for (layer, (index, record)) in unique.iter().zip(converted) {
        let id = txn.stage_layer(&index, record)?;
        layer_ids.insert(layer.member.clone(), id);
    }
    for plan in plans {
        report.images.push(stage_image(&mut txn, plan, &layer_ids));
    }
    if progress.cancelled() {
        return Err(ImportError::Cancelled);
    }
    let summary = txn.commit()?;
    report.layers_added = summary.layers_added;
    report.new_chunks = summary.new_chunks;
    report.new_chunk_bytes = summary.new_chunk_bytes;
    Ok(report)
}

/// The layers of `planned` this store already holds whole (every chunk
/// here) with a tar-split for the planned diff_id, by member: their blobs
/// need not be read. (A GC between this and the commit makes the commit
/// fail with a missing layer, never store an image without it.)
fn held_layers(store: &Store, planned: &[LayerPlan]) -> Result<HashMap<String, LayerId>, ImportError> {
    let wanted: HashSet<String> = planned.iter().map(|l| l.diff_id.to_string()).collect();
    let mut by_diff_id: HashMap<String, LayerId> = HashMap::new();
    for layer in store.layers()? {
        for split in &layer.record.tar_splits {
            if !wanted.contains(&split.diff_id) || by_diff_id.contains_key(&split.diff_id) {
                continue;
            }
            let split_here = split.blob.iter().chain(&split.extra_chunks).try_fold(true, |all, c| {
                let id = ChunkId::from_slice(&c.id)
                    .map_err(|e| StoreError::Corrupt(format!("layer {}: {e}", layer.id)))?;
                Ok::<_, StoreError>(all && store.has_chunk(&id)?)
            })?;
            if split_here && store.missing_chunks(&layer.id)?.is_empty() {
                by_diff_id.insert(split.diff_id.clone(), layer.id);
            }
        }
    }
    Ok(planned
        .iter()
        .filter_map(|l| by_diff_id.get(&l.diff_id.to_string()).map(|id| (l.member.clone(), *id)))
        .collect())
}

fn stage_image(
    txn: &mut ImportTxn<'_>,
    plan: ImagePlan,
    layer_ids: &HashMap<String, LayerId>,
) -> ImportedImage {
    let layers: Vec<LayerId> = plan.layers.iter().filter_map(|l| layer_ids.get(&l.member).copied()).collect();
    let record = ImageRecord {
        layers: layers.iter().map(|l| l.as_bytes().to_vec()).collect(),
        config: plan.config,
        config_digest: plan.config_digest.to_string(),
        manifest: plan.manifest,
    };
    let id = strata_store::image_id(&record);
    // An image without a name is known by its id.
    let names = if plan.names.is_empty() { vec![id.to_hex()] } else { plan.names };
    txn.stage_image(record, names.clone());
    ImportedImage { names, id, layers }
}

/// Streams one layer blob: checks its digest and diff_id, and returns the
/// index and record.
fn convert_layer<S: ChunkSink>(
    blobs: &dyn LayerBlobs,
    layer: &LayerPlan,
    chunker: &mut Chunker,
    sink: &mut S,
    progress: &dyn ImportProgress,
) -> Result<(LayerIndex, LayerRecord, LayerSummary), ImportError> {
    let member = layer.member.as_str();
    let (reader, size) = blobs.open(member, layer.blob_digest.as_ref(), layer.blob_size)?;
    if let Some(expected) = layer.blob_size {
        if expected != size {
            return Err(ImportError::SizeMismatch { member: member.to_owned(), expected, actual: size });
        }
    }
    let cancelled = || progress.cancelled();
    let reader = Cancellable { inner: reader, cancelled: &cancelled };
    let mut blob = Hashing::with_progress(reader, Box::new(|n| progress.advance(member, n)));
    let mut buffered = BufReader::with_capacity(256 << 10, &mut blob);
    let compression = Compression::sniff(&mut buffered).map_err(|e| ImportError::member(member, e))?;
    let decoder = compression.decoder(buffered).map_err(|e| ImportError::member(member, e))?;

    let layer_err = |source| ImportError::Layer { member: member.to_owned(), source };
    let (read, diff_id) = if compression == Compression::None {
        (read_layer(decoder, chunker, sink).map_err(layer_err)?, None)
    } else {
        let mut tar = Hashing::new(decoder);
        let read = read_layer(&mut tar, chunker, sink).map_err(layer_err)?;
        let (diff_id, _) = tar.finish().map_err(|e| ImportError::member(member, e))?;
        (read, Some(diff_id))
    };
    let (blob_digest, blob_size) = blob.finish().map_err(|e| ImportError::member(member, e))?;
    if let Some(expected) = layer.blob_size.filter(|expected| *expected != blob_size) {
        return Err(ImportError::SizeMismatch { member: member.to_owned(), expected, actual: blob_size });
    }
    let diff_id = diff_id.unwrap_or(blob_digest);
    if let Some(expected) = layer.blob_digest {
        if expected != blob_digest {
            return Err(ImportError::DigestMismatch {
                member: member.to_owned(),
                expected,
                actual: blob_digest,
            });
        }
    }
    if diff_id != layer.diff_id {
        return Err(ImportError::member(
            member,
            format!("uncompressed layer hashes to {diff_id}, the config's diff_id is {}", layer.diff_id),
        ));
    }
    let LayerRead { index, summary, split } = read;
    let tar_splits = keep_split(split, &index, diff_id, member, chunker, sink)?;
    let record = LayerRecord {
        diff_id: diff_id.to_string(),
        blob_digest: blob_digest.to_string(),
        blob_media_type: layer.media_type.clone(),
        blob_size,
        entries: summary.entries,
        content_bytes: summary.content_bytes,
        chunk_refs: summary.chunk_refs,
        tar_splits,
    };
    Ok((index, record, summary))
}

/// Stores a layer tar's split under its diff_id, so export and push give
/// back this very tar; a split that could not be kept is logged and the
/// layer goes without (it then exports as its canonical tar).
pub(crate) fn keep_split<S: ChunkSink>(
    split: Result<TarSplit, String>,
    index: &LayerIndex,
    diff_id: OciDigest,
    member: &str,
    chunker: &mut Chunker,
    sink: &mut S,
) -> Result<Vec<TarSplitRef>, ImportError> {
    match split {
        Ok(split) => {
            let kept = put_split(&split, index, diff_id.to_string(), chunker, sink)
                .map_err(|source| ImportError::Layer { member: member.to_owned(), source })?;
            Ok(vec![kept])
        }
        Err(why) => {
            tracing::warn!(member, %diff_id, reason = %why, "layer tar not kept bit for bit; it exports as its canonical tar");
            Ok(Vec::new())
        }
    }
}

/// Worker threads that compress chunks and write them through the
/// transaction, fed by a bounded channel so reading never runs far ahead.
pub(crate) struct ChunkPool<'scope> {
    tx: Sender<(ChunkId, Vec<u8>)>,
    failure: Arc<Mutex<Option<StoreError>>>,
    workers: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> ChunkPool<'scope> {
    pub(crate) fn start<'env, 'store: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        txn: &'scope ImportTxn<'store>,
        workers: usize,
        level: i32,
    ) -> Result<Self, ImportError> {
        let (tx, rx) = bounded::<(ChunkId, Vec<u8>)>(workers * 8);
        let failure = Arc::new(Mutex::new(None));
        let mut handles = Vec::new();
        for _ in 0..workers {
            let encoder = ChunkEncoder::new(level).map_err(|e| ImportError::Setup(format!("zstd: {e}")))?;
            let (rx, failure) = (rx.clone(), failure.clone());
            handles.push(scope.spawn(move || store_chunks(txn, encoder, rx, failure)));
        }
        Ok(Self { tx, failure, workers: handles })
    }

    pub(crate) fn sink(&self) -> PoolSink {
        PoolSink { tx: self.tx.clone(), failure: self.failure.clone(), sent: HashSet::new() }
    }

    pub(crate) fn finish(self) -> Result<(), ImportError> {
        drop(self.tx);
        for w in self.workers {
            if w.join().is_err() {
                return Err(ImportError::Setup("a chunk worker panicked".into()));
            }
        }
        match self.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

fn store_chunks(
    txn: &ImportTxn<'_>,
    mut encoder: ChunkEncoder,
    rx: Receiver<(ChunkId, Vec<u8>)>,
    failure: Arc<Mutex<Option<StoreError>>>,
) {
    for (id, data) in rx {
        if let Err(e) = txn.put_chunk(id, || encoder.encode(&data)) {
            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            return;
        }
    }
}

pub(crate) struct PoolSink {
    tx: Sender<(ChunkId, Vec<u8>)>,
    failure: Arc<Mutex<Option<StoreError>>>,
    /// Chunks already handed over in this import.
    sent: HashSet<ChunkId>,
}

#[derive(Debug, thiserror::Error)]
#[error("storing chunks: {0}")]
pub(crate) struct SinkFailed(String);

impl ChunkSink for PoolSink {
    type Error = SinkFailed;

    fn put(&mut self, id: ChunkId, data: &[u8]) -> Result<(), SinkFailed> {
        if !self.sent.insert(id) {
            return Ok(());
        }
        let failed = || {
            let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            SinkFailed(failure.as_ref().map_or_else(|| "workers stopped".to_owned(), |e| e.to_string()))
        };
        if self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(failed());
        }
        self.tx.send((id, data.to_vec())).map_err(|_| failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blobs that must not be asked for.
    struct NoBlobs;

    impl LayerBlobs for NoBlobs {
        fn open(
            &self,
            member: &str,
            _digest: Option<&OciDigest>,
            _size: Option<u64>,
        ) -> Result<(Box<dyn Read + Send>, u64), ImportError> {
            panic!("{member} was opened")
        }
    }

    fn manifest(config: &[u8], layer_media_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": OciDigest::sha256_of(config).to_string(),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": layer_media_type,
                "digest": format!("sha256:{}", "b".repeat(64)),
                "size": 10,
                "urls": ["https://example.invalid/layer"],
            }],
        }))
        .unwrap()
    }

    /// Foreign, non-distributable and encrypted layers are refused by
    /// media type before any blob is asked for (docker's foreign layers;
    /// OCI image spec, layer.md), naming the layer; the store is untouched.
    #[test]
    fn foreign_non_distributable_and_encrypted_layers_are_refused_before_any_download() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), strata_store::OpenMode::ReadWrite).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "windows",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "c".repeat(64))]},
        }))
        .unwrap();
        for (media_type, says) in [
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "foreign"),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "foreign"),
            ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "encrypted"),
        ] {
            let manifest = manifest(&config, media_type);
            let image = ManifestImage { manifest: &manifest, config: &config, names: vec!["win:1".into()] };
            let err = import_manifest(&store, image, &NoBlobs, &ImportOptions::default(), &NoProgress)
                .expect_err("refused");
            let message = err.to_string();
            assert!(matches!(err, ImportError::RefusedLayer { index: 1, .. }), "{message}");
            assert!(message.contains(media_type) && message.contains(says), "{message}");
        }
        assert!(store.images().unwrap().is_empty());
    }
}
