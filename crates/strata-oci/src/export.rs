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
/// output appears whole or not at all.
pub fn export_image(
    store: &Store,
    reference: &str,
    output: &Path,
    options: &ExportOptions,
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
                write_layer(&index, &mut StoreChunks(store), w)
                    .map(|_| ())
                    .map_err(|e| io::Error::other(Wrapped(e)))
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
