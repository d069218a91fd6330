//! Startup profiles on a node: keeping one (recorded by a mount here, or
//! offered by a peer), offering a recorded one to the nodes that hold the
//! image whole, and prefetching a pulled image's profile so its chunks
//! arrive ahead of the container's reads, many at a time instead of one
//! round trip per read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use strata_store::StoreError;
use strata_types::{ChunkId, ImageId, LayerId};
use strata_wire::PeerRequest;

use super::{Node, NodeError};

/// Chunk fetches a prefetch keeps in flight: about a 100 Mbit/s link at
/// 100 ms RTT with chunks of ~20 KB stored, without queueing so deep that
/// a crowd of nodes starting at once waits out its deadlines.
const PREFETCH_IN_FLIGHT: usize = 64;
/// A prefetched chunk's deadline, in fetch deadlines: it may queue behind
/// the rest of the profile; a read that joins it keeps its own deadline.
const PREFETCH_DEADLINES: u32 = 4;

impl Node {
    /// Keeps `chunks` as `image`'s startup profile unless it has one (only
    /// chunks of the image's layers). Returns the profile kept, if it was.
    pub fn keep_profile(
        &self,
        image: ImageId,
        chunks: &[ChunkId],
    ) -> Result<Option<Vec<ChunkId>>, NodeError> {
        let kept = self.store().put_profile(&image, chunks)?;
        if let Some(kept) = &kept {
            self.metrics.profiles_kept.inc();
            tracing::info!(%image, chunks = kept.len(), "startup profile kept");
        }
        Ok(kept)
    }

    /// A profile a mount on this node recorded: kept here, then offered to
    /// the nodes holding the image whole, whom later nodes pull it from.
    pub async fn record_profile(
        self: &Arc<Self>,
        image: ImageId,
        chunks: Vec<ChunkId>,
    ) -> Result<(), NodeError> {
        let node = self.clone();
        let kept = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let kept = node.keep_profile(image, &chunks)?;
            let layers = node.store().image(&image)?.map(|r| r.layers).unwrap_or_default();
            Ok((kept, layers))
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let (Some(kept), layers) = kept else { return Ok(()) };
        let node = self.clone();
        tokio::spawn(async move { node.offer_profile(image, kept, layers).await });
        Ok(())
    }

    /// Offers a profile to every node that holds a layer of the image whole.
    async fn offer_profile(&self, image: ImageId, chunks: Vec<ChunkId>, layers: Vec<Vec<u8>>) {
        let mut holders = BTreeSet::new();
        for layer in layers.iter().filter_map(|l| LayerId::from_slice(l).ok()) {
            for h in self.lookup(layer.as_bytes()).await {
                if h.complete && h.node != self.name() {
                    holders.insert(h.addr);
                }
            }
        }
        let request = PeerRequest::OfferProfile { image, chunks };
        for addr in holders {
            let offered = async {
                let connection = self.pool.get(addr).await.map_err(|e| e.to_string())?;
                strata_net::request(&connection, &request).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(self.config.fetch_deadline, offered).await {
                Ok(Ok(_)) => tracing::debug!(%image, %addr, "startup profile offered"),
                Ok(Err(e)) => tracing::info!(%image, %addr, error = e, "offering the startup profile failed"),
                Err(_) => tracing::info!(%image, %addr, "offering the startup profile timed out"),
            }
        }
    }

    /// Fetches, in the background, the chunks of `image`'s startup profile
    /// that are not here yet (once at a time per image).
    pub(crate) fn start_prefetch(self: &Arc<Self>, image: ImageId) {
        if !self.prefetching.lock().insert(image) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.prefetch(image).await;
            node.prefetching.lock().remove(&image);
        });
    }

    async fn prefetch(self: &Arc<Self>, image: ImageId) {
        let store = self.store().clone();
        let missing = tokio::task::spawn_blocking(move || -> Result<Vec<ChunkId>, StoreError> {
            let Some(profile) = store.profile(&image)? else { return Ok(Vec::new()) };
            let mut missing = Vec::new();
            for chunk in profile {
                if !store.has_chunk(&chunk)? {
                    missing.push(chunk);
                }
            }
            Ok(missing)
        })
        .await;
        let missing = match missing {
            Ok(Ok(missing)) if !missing.is_empty() => missing,
            Ok(Ok(_)) => return,
            Ok(Err(e)) => return tracing::warn!(%image, error = %e, "reading the startup profile failed"),
            Err(e) => return tracing::warn!(%image, error = %e, "reading the startup profile failed"),
        };
        let started = Instant::now();
        let total = missing.len();
        tracing::info!(%image, chunks = total, "startup prefetch started");
        let permits = Arc::new(tokio::sync::Semaphore::new(PREFETCH_IN_FLIGHT));
        let mut fetches = tokio::task::JoinSet::new();
        for chunk in missing {
            if self.is_stopping() {
                break;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let node = self.clone();
            fetches.spawn(async move {
                let deadline = node.config.fetch_deadline * PREFETCH_DEADLINES;
                let fetched =
                    node.fetch_chunk_within(chunk, deadline, strata_wire::Priority::Prefetch).await.is_ok();
                drop(permit);
                fetched
            });
        }
        let (mut fetched, mut failed) = (0u64, 0u64);
        while let Some(done) = fetches.join_next().await {
            match done {
                Ok(true) => fetched += 1,
                _ => failed += 1,
            }
        }
        self.metrics.prefetched_chunks.inc_by(fetched);
        self.metrics.prefetch_seconds.inc_by(started.elapsed().as_secs_f64());
        tracing::info!(
            %image,
            fetched,
            failed,
            of = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "startup prefetch done"
        );
    }
}
