use std::io;
use std::path::Path;

use strata_layer::{load_split, write_layer, write_split, ChunkSource, LayerError};
use strata_store::{Store, StoreError};
use strata_types::{ChunkId, ImageId, LayerId, OciDigest};

use crate::writer::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression, Tee};
use crate::{find_image, ExportError};

#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub compression: LayerCompression,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedLayer {
    pub id: LayerId,
    pub digest: OciDigest,
    pub diff_id: OciDigest,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    pub image: ImageId,
    pub name: String,
    pub manifest_digest: OciDigest,
    pub layers: Vec<ExportedLayer>,
    pub bytes: u64,
}

/// Chunks of an image that this store lacks: the image (or a base of it)
/// was pulled lazily through a node and only the chunks read so far are here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissingChunks {
    pub chunks: u64,
    /// Their uncompressed length.
    pub bytes: u64,
    /// Layers of the image with at least one missing chunk.
    pub layers: u64,
}

/// Counts the chunks export and push of `record` need that the store does
/// not hold: each layer's index chunks, and the chunks of the tar-split of
/// the diff_id the image's config names (its encoding and the contents it
/// holds beyond the index).
pub fn missing_chunks(
    store: &Store,
    record: &strata_store::ImageRecord,
) -> Result<MissingChunks, StoreError> {
    let diff_ids = config_diff_ids(&record.config);
    let mut missing = MissingChunks::default();
    for (i, raw) in record.layers.iter().enumerate() {
        let id = LayerId::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("layer id: {e}")))?;
        let mut absent: std::collections::HashSet<ChunkId> = store.missing_chunks(&id)?.into_iter().collect();
        let mut lengths: Vec<(Vec<u8>, u32)> = Vec::new();
        if let Some(record) = store.layer(&id)? {
            let wanted = diff_ids.get(i).unwrap_or(&record.diff_id);
            for split in record.tar_splits.iter().filter(|s| s.diff_id == *wanted) {
                for chunk in split.blob.iter().chain(&split.extra_chunks) {
                    let c = ChunkId::from_slice(&chunk.id)
                        .map_err(|e| StoreError::Corrupt(format!("layer {id}: tar-split chunk id: {e}")))?;
                    if !store.has_chunk(&c)? {
                        absent.insert(c);
                        lengths.push((chunk.id.clone(), chunk.length));
                    }
                }
            }
        }
        if absent.is_empty() {
            continue;
        }
        missing.layers += 1;
        missing.chunks += absent.len() as u64;
        let mut counted = std::collections::HashSet::new();
        let index = store.layer_index(&id)?;
        let index_chunks =
            index.entries.iter().flat_map(|e| e.chunks.iter().map(|c| (c.id.clone(), c.length)));
        for (raw_id, length) in index_chunks.chain(lengths) {
            if let Ok(c) = ChunkId::from_slice(&raw_id) {
                if absent.contains(&c) && counted.insert(c) {
                    missing.bytes += u64::from(length);
                }
            }
        }
    }
    Ok(missing)
}

struct StoreChunks<'s>(&'s Store);

impl ChunkSource for StoreChunks<'_> {
    type Error = StoreError;
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.0.get_chunk(id)
    }
}

/// Carries a layer error through the `io::Write` closure of the writer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Wrapped(LayerError);

/// Writes the image as an OCI image layout tar that `docker load` also takes.
/// Each layer tar is the one the image was imported from, bit for bit, when
/// its tar-split was kept: then diff_ids, config and image ID are the
/// upstream ones. A layer without one (imported before splits were kept,
/// or its split dropped: see `strata_layer::MAX_SPLIT_RAW_ZSTD`), or
/// whose split does not rebuild its tar, is written as the canonical tar
/// of its index, with a diff_id of its own,
/// and the config's `rootfs` is rewritten to match. Either way `strata
/// import` of the result gives the same LayerIds. The output appears whole
/// or not at all. Every chunk must be in the store:
/// see [`export_image_from`] for images pulled lazily.
pub fn export_image(
    store: &Store,
    reference: &str,
    output: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let target = ArchiveTarget::Tar(output.to_owned());
    export_image_from(store, reference, target, options, &mut StoreChunks(store), &crate::NoProgress)
}

/// [`export_image`] to `target` (a file, or a stream such as stdout),
/// with chunk bytes from `chunks` (verified bytes, as [`ChunkSource`]
/// promises): the store, then whatever fetches the chunks a lazily pulled
/// image lacks. `progress` is told of each layer (its id, its file bytes)
/// and of the layer tar bytes written.
pub fn export_image_from<S: ChunkSource>(
    store: &Store,
    reference: &str,
    target: ArchiveTarget,
    options: &ExportOptions,
    chunks: &mut S,
    progress: &dyn crate::ImportProgress,
) -> Result<ExportReport, ExportError> {
    let found = find_image(store, reference)?;
    let name = found.display_name();
    let (image, record) = (found.id, found.record);
    let output = match &target {
        ArchiveTarget::Tar(path) | ArchiveTarget::Dir(path) => path.clone(),
        ArchiveTarget::Stream { .. } => "standard output".into(),
    };
    let io_err = |source| ExportError::Io { path: output.clone(), source };

    let mut writer = ArchiveWriter::new(target, ArchiveLayout::OciWithDockerManifest).map_err(io_err)?;
    let config_diff_ids = config_diff_ids(&record.config);
    let mut sizes = Vec::new();
    for raw in &record.layers {
        let id = LayerId::from_slice(raw)
            .map_err(|e| StoreError::Corrupt(format!("image {image}: layer id: {e}")))?;
        sizes.push(store.layer(&id)?.map_or(0, |l| l.content_bytes));
    }
    progress.start(sizes.iter().sum());
    let mut layers = Vec::new();
    let mut written = Vec::new();
    for (i, raw) in record.layers.iter().enumerate() {
        let id = LayerId::from_slice(raw)
            .map_err(|e| StoreError::Corrupt(format!("image {image}: layer id: {e}")))?;
        let wanted = config_diff_ids.get(i).map(String::as_str);
        let member = id.to_hex();
        progress.layer(&member, sizes[i]);
        let mut add = |tar: &LayerTar, chunks: &mut S| {
            writer.add_layer(options.compression, |w| {
                let mut w = ProgressWriter { inner: w, member: &member, progress, pending: 0 };
                let written = tar.write(chunks, &mut w).map_err(|e| io::Error::other(Wrapped(e)));
                w.report();
                written
            })
        };
        let tar = LayerTar::of(store, &id, wanted)?;
        let layer = match add(&tar, chunks) {
            Ok(layer) => layer,
            Err(e) => match unwrap_layer_error(e) {
                // The split does not give its tar back (a record a peer
                // sent can be wrong, or name chunks nobody has): the layer
                // goes as its canonical tar, which fails in turn if its
                // contents cannot be had.
                Ok(e @ (LayerError::Split(_) | LayerError::Source { .. })) if tar.is_kept() => {
                    tracing::warn!(layer = %id, reason = %e, "kept layer tar not rebuilt; exporting the canonical tar");
                    add(&LayerTar::canonical(store, &id)?, chunks).map_err(|e| {
                        match unwrap_layer_error(e) {
                            Ok(source) => ExportError::Layer { layer: id.to_string(), source },
                            Err(e) => io_err(e),
                        }
                    })?
                }
                Ok(source) => return Err(ExportError::Layer { layer: id.to_string(), source }),
                Err(e) => return Err(io_err(e)),
            },
        };
        progress.layer_done(&member);
        layers.push(ExportedLayer { id, digest: layer.digest, diff_id: layer.diff_id, size: layer.size });
        written.push(layer);
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&record.config).map_err(ExportError::Config)?;
    if let Some(obj) = config.as_object_mut() {
        obj.remove("rootfs");
    }
    // An image imported without a name goes by its id; that is no tag.
    let tags: Vec<String> =
        if name.is_empty() || name == image.to_hex() { vec![] } else { vec![name.clone()] };
    let same_tars = written.len() == config_diff_ids.len()
        && written.iter().zip(&config_diff_ids).all(|(l, want)| l.diff_id.to_string() == *want);
    let manifest_digest = if same_tars {
        // Every layer is the very tar the config names: the config goes as
        // it came, so the image ID stays the upstream one.
        writer.add_image_with_config(&tags, record.config.clone(), &written).map_err(io_err)?
    } else {
        writer.add_image(&tags, config, &written).map_err(io_err)?
    };
    let bytes = writer.finish().map_err(io_err)?;
    Ok(ExportReport { image, name, manifest_digest, layers, bytes })
}

/// Tells `progress` of the bytes written through it, a MiB at a time.
struct ProgressWriter<'a> {
    inner: &'a mut dyn io::Write,
    member: &'a str,
    progress: &'a dyn crate::ImportProgress,
    pending: u64,
}

impl ProgressWriter<'_> {
    fn report(&mut self) {
        if self.pending > 0 {
            self.progress.advance(self.member, std::mem::take(&mut self.pending));
        }
    }
}

impl io::Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pending += n as u64;
        if self.pending >= 1 << 20 {
            self.report();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One layer tar of an image, as export and push write it.
#[derive(Debug)]
pub enum LayerTar {
    /// A tar the layer was imported from, rebuilt bit for bit from its
    /// tar-split; `diff_id` is its sha256.
    Kept { split: strata_proto::v1::TarSplitRef },
    /// The canonical tar of the layer's index ([`write_layer`]).
    Canonical { index: strata_layer::LayerIndex },
}

impl LayerTar {
    /// The tar of `layer` that hashes to `diff_id` when its split was kept
    /// (else, with `diff_id` `None`, the tar the layer was first stored
    /// from); the canonical tar otherwise.
    pub fn of(store: &Store, layer: &LayerId, diff_id: Option<&str>) -> Result<Self, StoreError> {
        let record = store.layer(layer)?.ok_or(StoreError::MissingLayer(*layer))?;
        let wanted = diff_id.unwrap_or(&record.diff_id);
        match record.tar_splits.into_iter().find(|s| s.diff_id == wanted) {
            Some(split) => Ok(LayerTar::Kept { split }),
            None => Self::canonical(store, layer),
        }
    }

    pub fn canonical(store: &Store, layer: &LayerId) -> Result<Self, StoreError> {
        Ok(LayerTar::Canonical { index: store.layer_index(layer)? })
    }

    pub fn is_kept(&self) -> bool {
        matches!(self, LayerTar::Kept { .. })
    }

    /// Writes the tar, contents from `chunks`. A kept tar is hashed as it
    /// is written and checked at its end: [`LayerError::Split`] when it
    /// does not hash to its diff_id (the bytes written are then worthless;
    /// the caller may write the canonical tar instead).
    pub fn write<S: ChunkSource>(&self, chunks: &mut S, w: &mut dyn io::Write) -> Result<(), LayerError> {
        match self {
            LayerTar::Canonical { index } => write_layer(index, chunks, w).map(drop),
            LayerTar::Kept { split } => {
                let tar = load_split(split, chunks)?;
                let mut tee = Tee::new(w);
                write_split(&tar, chunks, &mut tee)?;
                let (_, sha) = tee.into_parts();
                let (actual, _) = sha.finish();
                if actual.to_string() != split.diff_id {
                    return Err(LayerError::Split(format!(
                        "rebuilt tar hashes to {actual}, the split is for {}",
                        split.diff_id
                    )));
                }
                Ok(())
            }
        }
    }
}

/// The layer error a write closure carried out, or the I/O error itself.
fn unwrap_layer_error(e: io::Error) -> Result<LayerError, io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<Wrapped>()) {
        match e.into_inner().map(|inner| inner.downcast::<Wrapped>()) {
            Some(Ok(wrapped)) => Ok(wrapped.0),
            Some(Err(other)) => Err(io::Error::other(other)),
            None => Err(io::Error::other("layer write failed")),
        }
    } else {
        Err(e)
    }
}

/// `rootfs.diff_ids` of an image config, as written there (image-spec
/// config.md: the sha256 of each uncompressed layer tar, base first);
/// empty for a config that has none or does not parse.
pub fn config_diff_ids(config: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    serde_json::from_slice::<Config>(config)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default()
}
