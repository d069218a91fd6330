//! Images in and out of the store: `docker save` archives and OCI image
//! layouts (directory or tar), layers plain, gzip or zstd.
//!
//! Import reads the archive in place (never unpacking files onto the host),
//! checks every blob against the digest the manifest gives it and every
//! layer against its diff_id, streams each layer through `strata-layer` into
//! chunks that worker threads compress and store, and commits all images of
//! the archive in one store transaction. Export writes an OCI layout tar
//! (with a docker-compatible `manifest.json`) rebuilt from layer indexes.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod archive;
mod blob;
mod chain;
mod commit;
mod error;
mod export;
mod formats;
mod import;
mod name;
mod writer;

pub use chain::{
    chain_depth, chain_name, chain_of_name, check_chain, image_by_chain, image_chain_ids, CHAIN_NAME_PREFIX,
};
pub use commit::{add_layer, add_layer_named, CommittedImage};
pub use error::{ExportError, ImportError};
pub use export::{
    config_diff_ids, export_image, export_image_from, missing_chunks, ExportOptions, ExportReport,
    ExportedLayer, LayerTar, MissingChunks,
};
pub use import::{
    archive_images, import_archive, import_manifest, ArchiveImage, ImportOptions, ImportProgress,
    ImportReport, ImportedImage, LayerBlobs, ManifestImage, NoProgress,
};
pub use name::{closest_names, find_image, normalize_name, FoundImage, NameError};
pub use strata_layer::{ChunkSource, LayerError};
pub use writer::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression, Tee, WrittenLayer};
