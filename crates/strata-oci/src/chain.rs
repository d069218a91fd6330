//! Layer chains by their ChainID (OCI image-spec, config.md "Layer
//! ChainID"): the name containerd gives a layer's committed snapshot, so
//! the key under which its snapshotter asks for a layer stack.

use strata_store::{ImageId, ImageRecord, LayerRecord, Store, StoreError};
use strata_types::OciDigest;

/// The prefix of an image name that is a layer chain's ChainID:
/// `chain:sha256:<hex>`. Strata names an image so when it holds a chain
/// whose ChainID its config does not give: a layer containerd applied
/// itself and the snapshotter ingested (its tar is Strata's, so its
/// diff_id differs from the one containerd's ChainID was made of), or an
/// image pulled from a peer by a ChainID alone.
pub const CHAIN_NAME_PREFIX: &str = "chain:";

/// The image name of the chain `chain` ([`CHAIN_NAME_PREFIX`]).
pub fn chain_name(chain: &OciDigest) -> String {
    format!("{CHAIN_NAME_PREFIX}{chain}")
}

/// The ChainID an image name of [`chain_name`]'s form gives.
pub fn chain_of_name(name: &str) -> Option<OciDigest> {
    name.strip_prefix(CHAIN_NAME_PREFIX)?.parse().ok()
}

/// The ChainID of each layer prefix of `record`, base first, from its
/// config's `rootfs.diff_ids`. Empty when the config has none, a diff_id
/// is not a sha256 digest, or their number is not the number of layers
/// (a record Strata could not stand behind).
pub fn image_chain_ids(record: &ImageRecord) -> Vec<OciDigest> {
    let diff_ids: Result<Vec<OciDigest>, _> =
        crate::config_diff_ids(&record.config).iter().map(|d| d.parse()).collect();
    match diff_ids {
        Ok(d) if d.len() == record.layers.len() && !d.is_empty() => OciDigest::chain_ids(&d),
        _ => Vec::new(),
    }
}

/// How many of `record`'s layers make the chain `chain` (1 for the base
/// layer alone), or `None` when no prefix of it has that ChainID.
pub fn chain_depth(record: &ImageRecord, chain: &OciDigest) -> Option<u32> {
    image_chain_ids(record).iter().position(|c| c == chain).map(|i| i as u32 + 1)
}

/// Checks a copy of an image offered for the chain `chain` (by a peer):
/// each layer is the layer its config's diff_id says (the layer record's
/// own diff_id, or a tar it rebuilds), and the config names the chain —
/// unless the peer holds the chain under [`chain_name`] (an ingested
/// layer: no config can name its ChainID, so the peer's word stands, as
/// for any image name). Returns the chain's depth; `Err` says why the copy
/// is refused.
pub fn check_chain(record: &ImageRecord, layers: &[&LayerRecord], chain: &OciDigest) -> Result<u32, String> {
    let diff_ids = crate::config_diff_ids(&record.config);
    let depth = match chain_depth(record, chain) {
        Some(depth) => depth,
        None if diff_ids.len() == record.layers.len() => record.layers.len() as u32,
        None => return Err(format!("its config has no layer chain {chain}")),
    };
    if layers.len() < depth as usize {
        return Err(format!("{} layer records for a chain of {depth}", layers.len()));
    }
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).take(depth as usize).enumerate() {
        let named = layer.diff_id == *diff_id || layer.tar_splits.iter().any(|s| s.diff_id == *diff_id);
        if !named {
            return Err(format!("layer {i} has diff_id {}, its config says {diff_id}", layer.diff_id));
        }
    }
    Ok(depth)
}

/// The image in `store` holding the chain `chain`, with the chain's depth:
/// the image named [`chain_name`]`(chain)` (the prefix its config names
/// so, else all its layers), else the
/// first image (by name order) one of whose layer prefixes has that
/// ChainID by its config.
///
/// Errors: the store's.
pub fn image_by_chain(store: &Store, chain: &OciDigest) -> Result<Option<(ImageId, u32)>, StoreError> {
    if let Some(id) = store.image_by_name(&chain_name(chain))? {
        if let Some(record) = store.image(&id)? {
            // Pulled from a peer by the ChainID of one of its prefixes, or
            // an ingested layer on top (no config names its ChainID).
            let depth = chain_depth(&record, chain).unwrap_or(record.layers.len() as u32);
            return Ok(Some((id, depth)));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for entry in store.images()? {
        if !seen.insert(entry.id) {
            continue;
        }
        if let Some(depth) = chain_depth(&entry.record, chain) {
            return Ok(Some((entry.id, depth)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(diff_ids: &[OciDigest]) -> ImageRecord {
        let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": ids}});
        ImageRecord {
            layers: diff_ids.iter().map(|_| vec![0; 32]).collect(),
            config: serde_json::to_vec(&config).expect("json"),
            ..ImageRecord::default()
        }
    }

    fn layer(diff_id: &OciDigest) -> LayerRecord {
        LayerRecord { diff_id: diff_id.to_string(), ..LayerRecord::default() }
    }

    #[test]
    fn a_chain_is_found_at_its_depth_and_checked_layer_by_layer() {
        let d = [OciDigest::sha256_of(b"a"), OciDigest::sha256_of(b"b"), OciDigest::sha256_of(b"c")];
        let r = record(&d);
        let chains = OciDigest::chain_ids(&d);
        assert_eq!(image_chain_ids(&r), chains);
        assert_eq!(chain_depth(&r, &chains[0]), Some(1));
        assert_eq!(chain_depth(&r, &chains[2]), Some(3));
        assert_eq!(chain_depth(&r, &OciDigest::sha256_of(b"x")), None);

        let good = [layer(&d[0]), layer(&d[1]), layer(&d[2])];
        let refs: Vec<&LayerRecord> = good.iter().collect();
        assert_eq!(check_chain(&r, &refs, &chains[1]), Ok(2));
        // A chain the config cannot name (a peer's ingested layer): the
        // whole image, its layers still checked against the config.
        let alias = OciDigest::sha256_of(b"alias");
        assert_eq!(check_chain(&r, &refs, &alias), Ok(3));
        assert_eq!(chain_of_name(&chain_name(&alias)), Some(alias));
        assert_eq!(chain_of_name("busybox:1"), None);
        // A holder whose second layer is not the one the config names.
        let lying = [layer(&d[0]), layer(&d[2]), layer(&d[2])];
        let refs: Vec<&LayerRecord> = lying.iter().collect();
        assert_eq!(check_chain(&r, &refs, &chains[0]), Ok(1));
        let err = check_chain(&r, &refs, &chains[2]).expect_err("refused");
        assert!(err.contains("layer 1"), "{err}");
        // A config with fewer diff_ids than layers names no chain.
        let mut short = record(&d[..2]);
        short.layers.push(vec![0; 32]);
        assert!(image_chain_ids(&short).is_empty());
    }
}
