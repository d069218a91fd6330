//! A new image made of an existing image and one more layer, given as a tar
//! stream: how a mount's writable layer becomes an image.

use std::io::Read;

use strata_chunk::Chunker;
use strata_layer::read_layer;
use strata_proto::v1::{ImageRecord, LayerRecord};
use strata_store::Store;
use strata_types::{ImageId, LayerId, OciDigest};

use crate::blob::Hashing;
use crate::import::{keep_split, ChunkPool, ImportOptions};
use crate::{normalize_name, ImportError};

/// Media type of the layer a commit adds (stored uncompressed).
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// What [`add_layer`] made.
#[derive(Clone, Debug)]
pub struct CommittedImage {
    pub id: ImageId,
    pub names: Vec<String>,
    pub layer: LayerId,
    pub diff_id: OciDigest,
    /// Chunks the layer added to the store (the rest were already there).
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub layer_entries: u64,
}

/// Stores `layer_tar` as a layer on top of `base` and registers the result
/// under `names`, in one transaction. The config is `base`'s, with the new
/// diff_id appended to `rootfs.diff_ids` and, where the base keeps a
/// history, one history entry saying `created_by`.
pub fn add_layer(
    store: &Store,
    base: &ImageRecord,
    layer_tar: impl Read + Send,
    names: &[String],
    options: &ImportOptions,
    created_by: &str,
) -> Result<CommittedImage, ImportError> {
    let names: Vec<String> = names.iter().map(|n| normalize_name(n)).collect::<Result<_, _>>()?;
    add_layer_named(store, base, layer_tar, names, options, created_by)
}

/// [`add_layer`] with `names` stored as given, not read as image
/// references: for names Strata makes itself, such as
/// [`crate::chain_name`]'s.
///
/// Errors: as [`add_layer`]'s, but for names.
pub fn add_layer_named(
    store: &Store,
    base: &ImageRecord,
    layer_tar: impl Read + Send,
    names: Vec<String>,
    options: &ImportOptions,
    created_by: &str,
) -> Result<CommittedImage, ImportError> {
    let mut txn = store.begin_import()?;
    let mut chunker = Chunker::new(options.chunking).map_err(|e| ImportError::Setup(e.to_string()))?;
    let member = "(committed layer)";
    let (index, summary, diff_id, size, tar_splits) = std::thread::scope(|scope| {
        let pool = ChunkPool::start(scope, &txn, options.workers.max(1), options.zstd_level)?;
        let mut sink = pool.sink();
        let mut tar = Hashing::new(layer_tar);
        let read = read_layer(&mut tar, &mut chunker, &mut sink);
        drop(sink);
        let read = read.map_err(|source| ImportError::Layer { member: member.to_owned(), source });
        let (diff_id, size) = tar.finish().map_err(|e| ImportError::member(member, e))?;
        let strata_layer::LayerRead { index, summary, split } = read?;
        let mut sink = pool.sink();
        let tar_splits = keep_split(split, &index, diff_id, member, &mut chunker, &mut sink);
        drop(sink);
        pool.finish()?;
        let tar_splits = tar_splits?;
        Ok::<_, ImportError>((index, summary, diff_id, size, tar_splits))
    })?;
    let record = LayerRecord {
        diff_id: diff_id.to_string(),
        blob_digest: diff_id.to_string(),
        blob_media_type: LAYER_MEDIA_TYPE.to_owned(),
        blob_size: size,
        entries: summary.entries,
        content_bytes: summary.content_bytes,
        chunk_refs: summary.chunk_refs,
        tar_splits,
    };
    let layer = txn.stage_layer(&index, record)?;
    let config = extend_config(&base.config, &diff_id, created_by)?;
    let mut layers = base.layers.clone();
    layers.push(layer.as_bytes().to_vec());
    let config_digest = OciDigest::sha256_of(&config).to_string();
    let image = ImageRecord { layers, config, config_digest, manifest: Vec::new() };
    let id = strata_store::image_id(&image);
    let names = if names.is_empty() { vec![id.to_hex()] } else { names };
    txn.stage_image(image, names.clone());
    let summary_of_commit = txn.commit()?;
    Ok(CommittedImage {
        id,
        names,
        layer,
        diff_id,
        new_chunks: summary_of_commit.new_chunks,
        new_chunk_bytes: summary_of_commit.new_chunk_bytes,
        layer_entries: summary.entries,
    })
}

fn extend_config(config: &[u8], diff_id: &OciDigest, created_by: &str) -> Result<Vec<u8>, ImportError> {
    let bad = |why: String| ImportError::member("config", why);
    let mut value: serde_json::Value = serde_json::from_slice(config).map_err(|e| bad(e.to_string()))?;
    let obj = value.as_object_mut().ok_or_else(|| bad("the base config is not a JSON object".into()))?;
    let rootfs =
        obj.entry("rootfs").or_insert_with(|| serde_json::json!({ "type": "layers", "diff_ids": [] }));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(|d| d.as_array_mut()) {
        ids.push(serde_json::Value::String(diff_id.to_string()));
    }
    if let Some(history) = obj.get_mut("history").and_then(|h| h.as_array_mut()) {
        if !history.is_empty() {
            history.push(serde_json::json!({ "created_by": created_by }));
        }
    }
    serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))
}
