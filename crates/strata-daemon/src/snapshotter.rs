//! The containerd snapshotter's view of the node ([`strata_snapshotter::Layers`]):
//! layer chains by their ChainID from the store, or pulled once for the
//! cluster (metadata only, from a peer when one holds the image, else from
//! its registry) when containerd names the image (CRI's image-ref label);
//! and their read-only lazy mounts, one `strata mount-serve` process per
//! chain, which outlive the node as every Strata mount does.

use std::collections::BTreeMap;
use std::path::Path;

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

    /// The chain in the store: the first image (by id) one of whose layer
    /// prefixes has ChainID `chain_id`, by the diff_ids of its config.
    fn in_store(&self, chain_id: &OciDigest) -> Result<Option<ChainSource>, String> {
        let store = self.dir.read_store().map_err(|e| e.to_string())?;
        let images = store.images().map_err(|e| e.to_string())?;
        for strata_store::ImageEntry { id, record, .. } in images {
            let diff_ids: Vec<OciDigest> = match strata_oci::config_diff_ids(&record.config)
                .iter()
                .map(|d| d.parse())
                .collect::<Result<_, _>>()
            {
                Ok(d) => d,
                Err(_) => continue,
            };
            if diff_ids.len() != record.layers.len() {
                continue;
            }
            if let Some(i) = OciDigest::chain_ids(&diff_ids).iter().position(|c| c == chain_id) {
                return Ok(Some(ChainSource { image: id.to_hex(), depth: i as u32 + 1 }));
            }
        }
        Ok(None)
    }
}

impl Layers for NodeLayers {
    fn find_chain(
        &self,
        chain_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<ChainSource>, String> {
        let chain: OciDigest = chain_id.parse().map_err(|e| format!("chain id {chain_id:?}: {e}"))?;
        if let Some(found) = self.in_store(&chain)? {
            return Ok(Some(found));
        }
        let Some(reference) = labels.get(CRI_IMAGE_REF).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        // The registry issue's path: the cluster first (metadata only), the
        // registry once for the cluster otherwise.
        tracing::info!(chain = chain_id, image = %reference, "pulling the image's metadata for its layer chain");
        crate::pull::pull(&self.dir, reference, None, None, &|_| {}, &Cancel::new())
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

    fn unmount_chain(&self, mountpoint: &Path) -> Result<(), String> {
        let dead = std::fs::metadata(mountpoint).is_err();
        crate::mount::unmount(&self.dir, mountpoint, dead).map(|_| ()).map_err(|e| crate::error::chain(&e))
    }
}
