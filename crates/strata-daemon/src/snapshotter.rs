//! The containerd snapshotter's view of the node ([`strata_snapshotter::Layers`]):
//! layer chains by their ChainID from the store, else from a node that
//! announces the chain (metadata only), else pulled once for the cluster
//! (from a peer when one holds the image, else from its registry) when
//! containerd names the image (CRI's image-ref label);
//! and their read-only lazy mounts, one `strata mount-serve` process per
//! chain, which outlive the node as every Strata mount does; and layers
//! containerd applied itself, kept as Strata layers (named by their
//! ChainID, [`strata_oci::chain_name`]) and announced to the cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use strata_store::ImageRecord;

use strata_snapshotter::{ChainSource, Layers};
use strata_types::OciDigest;

use crate::cancel::Cancel;
use crate::data_dir::DataDir;
use crate::mount::{start_mount, MountSpec};
use crate::mounts;

/// The label CRI (and nerdctl) put on a layer's snapshot: the image's
/// reference as the user wrote it.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";

/// [`Layers`] of the node on a data dir.
pub struct NodeLayers {
    dir: DataDir,
}

impl NodeLayers {
    /// `dir` as the node sees it ([`DataDir::in_node`]): pulls go through
    /// the node, mounts read through it.
    pub fn new(dir: DataDir) -> Self {
        Self { dir }
    }

    /// The chain in the store: the first image one of whose layer
    /// prefixes has ChainID `chain_id`, by the diff_ids of its config.
    fn in_store(&self, chain_id: &OciDigest) -> Result<Option<ChainSource>, String> {
        let store = self.dir.read_store().map_err(|e| e.to_string())?;
        let found = strata_oci::image_by_chain(&store, chain_id).map_err(|e| e.to_string())?;
        Ok(found.map(|(id, depth)| ChainSource { image: id.to_hex(), depth }))
    }

    /// The chain from the store, else from another node that announces it
    /// (its image's metadata only: the chunks follow on first read).
    fn in_cluster(
        &self,
        node: &std::sync::Arc<strata_node::Node>,
        chain_id: &OciDigest,
    ) -> Result<Option<ChainSource>, String> {
        let found = node.runtime().block_on(node.pull_chain(chain_id)).map_err(|e| e.to_string())?;
        Ok(found.map(|(id, depth)| ChainSource { image: id.to_hex(), depth }))
    }
}

impl Layers for NodeLayers {
    fn find_chain(
        &self,
        chain_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<ChainSource>, String> {
        let chain: OciDigest = chain_id.parse().map_err(|e| format!("chain id {chain_id:?}: {e}"))?;
        // Through a node, `Node::pull_chain` looks in the store first.
        match &self.dir.node {
            None => {
                if let Some(found) = self.in_store(&chain)? {
                    return Ok(Some(found));
                }
            }
            Some(node) => match self.in_cluster(node, &chain) {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(chain = chain_id, error = %e, "no node's copy of the chain could be taken")
                }
            },
        }
        let Some(reference) = labels.get(CRI_IMAGE_REF).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        // The registry issue's path: the cluster first (metadata only), the
        // registry once for the cluster otherwise.
        tracing::info!(chain = chain_id, image = %reference, "pulling the image's metadata for its layer chain");
        crate::pull::pull(&self.dir, reference, Default::default(), &|_| {}, &Cancel::new())
            .map_err(|e| format!("pulling {reference}: {}", crate::error::chain(&e)))?;
        self.in_store(&chain)
    }

    fn mount_chain(&self, source: &ChainSource, mountpoint: &Path) -> Result<(), String> {
        let spec = MountSpec {
            image: source.image.clone(),
            mountpoint: mountpoint.to_owned(),
            read_only: true,
            layers: Some(source.depth),
            ..MountSpec::default()
        };
        start_mount(&self.dir, &spec).map(|_| ()).map_err(|e| crate::error::chain(&e))
    }

    fn is_mounted(&self, mountpoint: &Path) -> bool {
        mounts::find(&self.dir.path, mountpoint).is_some_and(|r| mounts::process_alive(r.pid))
            && std::fs::metadata(mountpoint).is_ok()
    }

    fn ingest_layer(&self, chain_id: &str, parent: Option<&str>, upper: &Path) -> Result<(), String> {
        let chain: OciDigest = chain_id.parse().map_err(|e| format!("chain id {chain_id:?}: {e}"))?;
        let store = self.dir.write_store().map_err(|e| crate::error::chain(&e))?;
        if strata_oci::image_by_chain(&store, &chain).map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        let base = match parent {
            None => ImageRecord { config: base_config(), ..ImageRecord::default() },
            Some(parent) => {
                let parent: OciDigest =
                    parent.parse().map_err(|e| format!("parent chain {parent:?}: {e}"))?;
                let (id, depth) = strata_oci::image_by_chain(&store, &parent)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the chain below, {parent}, is not a Strata image"))?;
                let record =
                    store.image(&id).map_err(|e| e.to_string())?.ok_or("the chain below vanished")?;
                truncated(&record, depth)?
            }
        };
        let options = self.dir.settings.import_options(Vec::new());
        let names = vec![strata_oci::chain_name(&chain)];
        // Imported only if the whole directory was read (see crate::pipe).
        let committed = crate::pipe::through_pipe(
            |out| {
                let out = strata_mount::write_overlay_upper_layer(upper, out)
                    .map_err(|e| format!("reading {}: {e}", upper.display()))?;
                out.into_inner().map_err(|e| e.into_error().to_string())?.flush().map_err(|e| e.to_string())
            },
            |tar| strata_oci::add_layer_named(&store, &base, tar, names, &options, "containerd apply"),
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(
            chain = chain_id,
            image = %committed.id,
            diff_id = %committed.diff_id,
            new_chunk_bytes = committed.new_chunk_bytes,
            "a layer containerd applied is kept as a Strata layer"
        );
        if let Some(node) = &self.dir.node {
            let name = strata_oci::chain_name(&chain);
            let mut keys = vec![strata_node::chain_key(&chain), strata_node::name_key(&name)];
            keys.push(*committed.layer.as_bytes());
            node.runtime().block_on(node.announce(&keys, &[]));
        }
        Ok(())
    }

    fn unmount_chain(&self, mountpoint: &Path) -> Result<(), String> {
        let dead = std::fs::metadata(mountpoint).is_err();
        crate::mount::unmount(&self.dir, mountpoint, dead).map(|_| ()).map_err(|e| crate::error::chain(&e))
    }
}

/// The config of an image with no layers yet (the base of an ingested base
/// layer): this machine's platform, no settings, no diff_ids.
fn base_config() -> Vec<u8> {
    let platform = strata_registry::Platform::host();
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

/// `record`'s first `depth` layers as an image: its config with the
/// diff_ids cut to match and no history (whose entries would no longer
/// match the layers).
fn truncated(record: &ImageRecord, depth: u32) -> Result<ImageRecord, String> {
    let depth = depth as usize;
    let mut config: serde_json::Value =
        serde_json::from_slice(&record.config).map_err(|e| format!("the chain's config: {e}"))?;
    if let Some(ids) = config.pointer_mut("/rootfs/diff_ids").and_then(|d| d.as_array_mut()) {
        ids.truncate(depth);
    }
    if let Some(obj) = config.as_object_mut() {
        obj.remove("history");
    }
    Ok(ImageRecord {
        layers: record.layers.iter().take(depth).cloned().collect(),
        config: serde_json::to_vec(&config).map_err(|e| e.to_string())?,
        ..ImageRecord::default()
    })
}
