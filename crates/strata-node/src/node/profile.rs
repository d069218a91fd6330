//! Startup profiles on a node: keeping one (recorded by a mount here, or
//! offered by a peer), offering a recorded one to the nodes that hold the
//! image whole. (Prefetching a pulled image's profile is the first part of
//! its background fetch: `background.rs`.)

use std::collections::BTreeSet;
use std::sync::Arc;

use strata_types::{ChunkId, ImageId, LayerId};
use strata_wire::PeerRequest;

use super::{Node, NodeError};

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
}
