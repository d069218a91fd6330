//! Pulling an image's metadata from a node that holds it: its record and
//! layer indexes, checked against their ids and stored as layers whose
//! chunks are missing; then announced as partial and prefetched.

use std::collections::HashMap;
use std::sync::Arc;

use strata_store::{ImageId, ImageRecord, LayerId, LayerRecord, Store, StoreError};

use super::background::Start;
use super::*;

/// A check of a peer's copy of an image before anything of it is stored:
/// its record and its layers' records; `Err` says why it is refused.
pub type ImageCheck<'a> = dyn Fn(&ImageRecord, &[&LayerRecord]) -> Result<(), String> + Sync + 'a;

impl Node {
    /// Makes `reference` (an image name) known here: its record and layer
    /// indexes come from a node that holds it, checked against their ids;
    /// the chunks follow on first read. Returns the image id.
    pub async fn pull_image(self: &Arc<Self>, reference: &str) -> Result<ImageId, NodeError> {
        let store = self.store.clone();
        let name = reference.to_owned();
        let local = tokio::task::spawn_blocking(move || store.resolve(&name))
            .await
            .map_err(|e| NodeError::Setup(e.to_string()))?;
        match local {
            Ok((id, record)) => {
                // Pulled before and still partial (a restart): its profile
                // goes on being prefetched.
                let layers: Vec<LayerId> =
                    record.layers.iter().filter_map(|l| LayerId::from_slice(l).ok()).collect();
                if self.progress.any_partial(layers.iter()) {
                    self.start_background(id, Start::Pulled);
                }
                return Ok(id);
            }
            Err(StoreError::NoSuchImage { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let holders: Vec<Holder> =
            self.lookup(&name_key(reference)).await.into_iter().filter(|h| h.node != self.me.name).collect();
        if holders.is_empty() {
            return Err(NodeError::NotFound(format!("no live node announces an image named {reference:?}")));
        }
        Ok(self.pull_image_from(reference, &holders, &|_, _| Ok(())).await?.0)
    }

    /// The image holding the layer chain `chain` (a ChainID, as containerd
    /// names a layer's snapshot) and the chain's depth in it: from the
    /// store, else its metadata from a node that announces the chain
    /// ([`chain_key`]), checked layer by layer against the config's
    /// diff_ids ([`strata_oci::check_chain`]) and stored under
    /// [`strata_oci::chain_name`]; its chunks follow on first read. `None`
    /// when no live node announces the chain.
    ///
    /// Errors: [`NodeError::Unavailable`] when every holder failed or was
    /// refused; the store's.
    pub async fn pull_chain(
        self: &Arc<Self>,
        chain: &strata_types::OciDigest,
    ) -> Result<Option<(ImageId, u32)>, NodeError> {
        let store = self.store.clone();
        let wanted = *chain;
        let local = tokio::task::spawn_blocking(move || strata_oci::image_by_chain(&store, &wanted))
            .await
            .map_err(|e| NodeError::Setup(e.to_string()))??;
        if local.is_some() {
            return Ok(local);
        }
        let holders: Vec<Holder> =
            self.lookup(&chain_key(chain)).await.into_iter().filter(|h| h.node != self.me.name).collect();
        if holders.is_empty() {
            return Ok(None);
        }
        let check = |record: &ImageRecord, layers: &[&LayerRecord]| {
            strata_oci::check_chain(record, layers, chain).map(|_| ())
        };
        let reference = strata_oci::chain_name(chain);
        self.pull_image_from(&reference, &holders, &check).await?;
        // Stored under the chain's name: found by it.
        let store = self.store.clone();
        let wanted = *chain;
        Ok(tokio::task::spawn_blocking(move || strata_oci::image_by_chain(&store, &wanted))
            .await
            .map_err(|e| NodeError::Setup(e.to_string()))??)
    }

    /// Pulls `reference`'s metadata from the first of `holders` that
    /// answers (each within the fetch deadline) with an image `check`
    /// accepts, as [`Self::pull_image`] does once it found them; stored
    /// under the name `reference`. `check` sees the image record and its
    /// layers' records before anything is stored: a holder whose copy it
    /// refuses is passed over for the next, and nothing of it is kept.
    ///
    /// Returns the image's id and the name of the node it came from.
    ///
    /// Errors: [`NodeError::Unavailable`] naming each holder and why it
    /// failed or was refused; a store that cannot keep it.
    pub async fn pull_image_from(
        self: &Arc<Self>,
        reference: &str,
        holders: &[Holder],
        check: &ImageCheck<'_>,
    ) -> Result<(ImageId, String), NodeError> {
        let mut errors = Vec::new();
        for holder in holders {
            // Stopped if this holder's copy is refused, its commit fails,
            // or the pull is dropped before the commit starts.
            let mut early_join = EarlyJoin(None);
            let fetched = async {
                let connection = self.pool.get(holder.addr).await.map_err(|e| e.to_string())?;
                let image = crate::fetch_image_then(&connection, reference, |record| {
                    early_join.0 = Some(self.join_layers_of(record));
                })
                .await?;
                let records: Vec<&LayerRecord> = image.layers.iter().map(|l| &l.record).collect();
                check(&image.record, &records).map_err(|e| format!("refused: {e}"))?;
                Ok::<_, String>(image)
            };
            match tokio::time::timeout(self.config.fetch_deadline, fetched).await {
                Ok(Ok(crate::RemoteImage { id, record, layers, profile })) => {
                    // Its layer chains, announced with its name below.
                    let chains: Vec<Key> =
                        strata_oci::image_chain_ids(&record).iter().map(chain_key).collect();
                    self.metrics
                        .image_metadata_bytes_fetched
                        .inc_by(crate::remote::metadata_bytes(&record, &layers) + 32 * profile.len() as u64);
                    // The store's commit finishes even if this pull is
                    // dropped meanwhile: from here on the join goes on
                    // unless the commit fails.
                    let early_join = early_join.0.take();
                    let store = self.store.clone();
                    let name = reference.to_owned();
                    let stored = tokio::task::spawn_blocking(move || {
                        store_remote_image(&store, id, record, layers, name)
                    })
                    .await
                    .map_err(|e| NodeError::Setup(e.to_string()))
                    .and_then(|stored| stored);
                    let missing = match stored {
                        Ok(missing) => missing,
                        Err(e) => {
                            if let Some(join) = early_join {
                                join.abort();
                            }
                            return Err(e);
                        }
                    };
                    let partial: Vec<Key> = missing.keys().map(|l| *l.as_bytes()).collect();
                    self.progress.add(missing);
                    self.metrics.images_pulled.inc();
                    tracing::info!(image = reference, %id, from = %holder.node, "image metadata pulled");
                    if !profile.is_empty() {
                        let node = self.clone();
                        let kept = tokio::task::spawn_blocking(move || node.keep_profile(id, &profile)).await;
                        if let Ok(Err(e)) = kept {
                            tracing::warn!(%id, error = %e, "keeping the peer's startup profile failed");
                        }
                    }
                    // Announced in the background: the caller waits on the
                    // image, not on its directory nodes. The prefetch starts
                    // once the directory knows this node joins the layers'
                    // group, so that nodes starting together fetch each
                    // chunk from the origin once: the join went out when the
                    // record came, while the indexes crossed; a layer it
                    // left out joins now, and one it joined that turned out
                    // whole (every chunk here already) is announced so.
                    let node = self.clone();
                    let mut complete = vec![name_key(reference)];
                    complete.extend(chains);
                    tokio::spawn(async move {
                        let announce = node.clone();
                        let names = tokio::spawn(async move { announce.announce(&complete, &[]).await });
                        let joined = match early_join {
                            Some(join) => join.await.unwrap_or_default(),
                            None => Vec::new(),
                        };
                        let whole: Vec<Key> =
                            joined.iter().filter(|k| !partial.contains(k)).copied().collect();
                        let rest: Vec<Key> = partial.into_iter().filter(|k| !joined.contains(k)).collect();
                        if !rest.is_empty() {
                            node.join(&[], &rest).await;
                        }
                        node.start_background(id, Start::Pulled);
                        if !whole.is_empty() {
                            node.announce(&whole, &[]).await;
                        }
                        let _ = names.await;
                    });
                    return Ok((id, holder.node.clone()));
                }
                Ok(Err(e)) => errors.push(format!("{} ({e})", holder.node)),
                Err(_) => errors
                    .push(format!("{} (no answer within {:?})", holder.node, self.config.fetch_deadline)),
            }
            // Refused after its record came: `early_join` stops the join if
            // it has not gone out (if it has, the entries expire with the
            // directory's TTL; a relay asked of this node meanwhile fails
            // over to the layer's complete holders).
            drop(early_join);
        }
        Err(NodeError::Unavailable(format!(
            "image {reference:?}: every holder failed: {}",
            errors.join(", ")
        )))
    }
}

/// The join of a pulled image's layer groups, sent when its record came:
/// aborted when dropped (the image was refused or the pull dropped).
struct EarlyJoin(Option<tokio::task::JoinHandle<Vec<Key>>>);

impl Drop for EarlyJoin {
    fn drop(&mut self) {
        if let Some(join) = self.0.take() {
            join.abort();
        }
    }
}

impl Node {
    /// Joins the groups of the layers of `record` this node does not hold
    /// whole (announced partial, answered with each group: see
    /// [`crate::locator::Locator::join`]), on a task of its own; returns
    /// the keys it joined.
    fn join_layers_of(self: &Arc<Self>, record: &ImageRecord) -> tokio::task::JoinHandle<Vec<Key>> {
        let mut layers: Vec<LayerId> =
            record.layers.iter().filter_map(|l| LayerId::from_slice(l).ok()).collect();
        layers.sort();
        layers.dedup();
        let node = self.clone();
        tokio::spawn(async move {
            let store = node.store.clone();
            let progress = node.progress.clone();
            let partial = tokio::task::spawn_blocking(move || -> Vec<Key> {
                layers
                    .into_iter()
                    .filter(|l| {
                        progress.any_partial(std::iter::once(l)) || !matches!(store.layer(l), Ok(Some(_)))
                    })
                    .map(|l| *l.as_bytes())
                    .collect()
            })
            .await
            .unwrap_or_default();
            if !partial.is_empty() {
                node.join(&[], &partial).await;
            }
            partial
        })
    }
}

/// Stores a pulled image's record and indexes (its chunks follow on
/// demand); returns the layers with chunks missing and how many.
pub(super) fn store_remote_image(
    store: &Store,
    id: ImageId,
    record: strata_proto::v1::ImageRecord,
    layers: Vec<crate::RemoteLayer>,
    name: String,
) -> Result<HashMap<LayerId, usize>, NodeError> {
    let mut txn = store.begin_import()?;
    for layer in &layers {
        txn.stage_remote_layer(layer.id, layer.bytes.clone(), layer.record.clone())?;
    }
    let staged = txn.stage_image(record, vec![name]);
    if staged != id {
        return Err(NodeError::Unavailable(format!("image record hashes to {staged}, not {id}")));
    }
    txn.commit()?;
    let mut missing = HashMap::new();
    for layer in &layers {
        let count = store.missing_chunks(&layer.id)?.len();
        if count > 0 {
            missing.insert(layer.id, count);
        }
    }
    Ok(missing)
}
