use std::io;
use std::path::Path;

use strata_layer::{write_layer, ChunkSource, LayerError};
use strata_store::{Store, StoreError};
use strata_types::{ChunkId, ImageId, LayerId, OciDigest};

use crate::writer::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};
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

/// Counts the chunks `record`'s layers name that the store does not hold.
pub fn missing_chunks(
    store: &Store,
    record: &strata_store::ImageRecord,
) -> Result<MissingChunks, StoreError> {
    let mut missing = MissingChunks::default();
    for raw in &record.layers {
        let id = LayerId::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("layer id: {e}")))?;
        let absent: std::collections::HashSet<ChunkId> = store.missing_chunks(&id)?.into_iter().collect();
        if absent.is_empty() {
            continue;
        }
        missing.layers += 1;
        missing.chunks += absent.len() as u64;
        let mut counted = std::collections::HashSet::new();
        for entry in store.layer_index(&id)?.entries {
            for chunk in entry.chunks {
                if let Ok(c) = ChunkId::from_slice(&chunk.id) {
                    if absent.contains(&c) && counted.insert(c) {
                        missing.bytes += u64::from(chunk.length);
                    }
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
/// Layer tars are rebuilt from the indexes, so their digests and diff_ids
/// are new; `strata import` of the result gives the same LayerIds. The
/// output appears whole or not at all. Every chunk must be in the store:
/// see [`export_image_from`] for images pulled lazily.
pub fn export_image(
    store: &Store,
    reference: &str,
    output: &Path,
    options: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    export_image_from(store, reference, output, options, &mut StoreChunks(store))
}

/// [`export_image`] with chunk bytes from `chunks` (verified bytes, as
/// [`ChunkSource`] promises): the store, then whatever fetches the chunks a
/// lazily pulled image lacks.
pub fn export_image_from<S: ChunkSource>(
    store: &Store,
    reference: &str,
    output: &Path,
    options: &ExportOptions,
    chunks: &mut S,
) -> Result<ExportReport, ExportError> {
    let found = find_image(store, reference)?;
    let name = found.display_name();
    let (image, record) = (found.id, found.record);
    let io_err = |source| ExportError::Io { path: output.to_owned(), source };

    let mut writer =
        ArchiveWriter::new(ArchiveTarget::Tar(output.to_owned()), ArchiveLayout::OciWithDockerManifest)
            .map_err(io_err)?;
    let mut layers = Vec::new();
    let mut written = Vec::new();
    for raw in &record.layers {
        let id = LayerId::from_slice(raw)
            .map_err(|e| StoreError::Corrupt(format!("image {image}: layer id: {e}")))?;
        let index = store.layer_index(&id)?;
        let layer = writer
            .add_layer(options.compression, |w| {
                write_layer(&index, chunks, w).map(|_| ()).map_err(|e| io::Error::other(Wrapped(e)))
            })
            .map_err(|e| match e.into_inner().map(|inner| inner.downcast::<Wrapped>()) {
                Some(Ok(wrapped)) => ExportError::Layer { layer: id.to_string(), source: wrapped.0 },
                Some(Err(other)) => io_err(io::Error::other(other)),
                None => io_err(io::Error::other("layer write failed")),
            })?;
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
    let manifest_digest = writer.add_image(&tags, config, &written).map_err(io_err)?;
    let bytes = writer.finish().map_err(io_err)?;
    Ok(ExportReport { image, name, manifest_digest, layers, bytes })
}
