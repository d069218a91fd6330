//! The fetch path: a chunk missing here is asked of its layer's holders in
//! the order `strata_placement::plan_fetch` gives, each within its share of
//! the deadline, one flight per chunk however many wait, verified against
//! its id, stored, and its layer's progress noted.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_chunk::ChunkDecoder;
use strata_placement::{plan_fetch, time_share, Ask, LayerHolder};
use strata_store::{LayerId, Store, StoreError};
use strata_types::{ChunkId, NodeId};
use strata_wire::response::Kind;
use strata_wire::{PeerRequest, Priority};

use super::*;

/// How often a fetch that found no holder asks the directory again.
const NO_HOLDER_RETRY: Duration = Duration::from_millis(250);

/// A chunk's layers, their holders, and whom to ask in which order.
pub(super) struct FetchPlan {
    layers: Vec<LayerId>,
    holders: HashMap<NodeId, Holder>,
    refs: Vec<LayerHolder>,
    asks: Vec<Ask>,
}

impl Node {
    /// The chunk's stored form, from the store or else from peers (then
    /// verified and stored). Concurrent callers for one chunk share one fetch.
    pub async fn fetch_chunk(self: &Arc<Self>, id: ChunkId) -> Result<Arc<Vec<u8>>, NodeError> {
        self.fetch_chunk_within(id, self.config.fetch_deadline, Priority::Demand).await
    }

    /// [`Self::fetch_chunk`] for a read-ahead: asked of peers with prefetch
    /// priority (they answer reads that wait first); same deadline.
    pub async fn fetch_chunk_ahead(self: &Arc<Self>, id: ChunkId) -> Result<Arc<Vec<u8>>, NodeError> {
        self.fetch_chunk_within(id, self.config.fetch_deadline, Priority::Prefetch).await
    }

    /// [`Self::fetch_chunk`] with its own deadline and priority (asked of
    /// peers with it). A caller that joins a fetch already under way (a
    /// prefetch's, with a longer deadline) still gives up after its own;
    /// the flight keeps the priority of the caller that started it.
    pub(crate) async fn fetch_chunk_within(
        self: &Arc<Self>,
        id: ChunkId,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, NodeError> {
        let unavailable = |source: FetchError| NodeError::Fetch { id, source };
        if let Some(stored) = self
            .blocking(move |s| s.get_stored_chunk(&id))
            .await
            .map_err(FetchError::Local)
            .map_err(unavailable)?
        {
            return Ok(Arc::new(stored));
        }
        // A fetch that goes to a complete holder itself shares its flight
        // with the relays this node serves for the chunk: one fetch each.
        let plan = self.plan(id, true).await.map_err(unavailable)?;
        let relaying = matches!(plan.asks.first(), Some(Ask::Relay(_)));
        // The leader of a flight keeps to its deadline; the margin covers
        // its last answer arriving.
        match tokio::time::timeout(
            deadline + FLIGHT_MARGIN,
            self.single_flight(id, relaying, deadline, priority),
        )
        .await
        {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable(FetchError::Deadline(deadline))),
        }
    }

    /// One fetch per (chunk, whether it may relay) at a time; every caller
    /// gets its outcome, also when the fetch is cancelled or panics.
    pub(crate) async fn single_flight(
        self: &Arc<Self>,
        id: ChunkId,
        relay: bool,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        let wait = match self.flights.join((id, relay)) {
            Joined::Waiter(wait) => wait,
            Joined::Leader(leader, wait) => {
                // The fetch runs on its own task: a reader that gives up
                // does not cancel it for the others.
                let node = self.clone();
                tokio::spawn(async move {
                    let result = node.fetch_uncached(id, relay, deadline, priority).await.map(Arc::new);
                    if let Err(reason) = &result {
                        tracing::warn!(chunk = %id, relay, %reason, "chunk unavailable");
                    }
                    leader.finish(result);
                });
                wait
            }
        };
        wait.await.unwrap_or(Err(FetchError::Abandoned))
    }

    pub(super) fn penalise(&self, addr: SocketAddr) {
        self.penalties.penalise(addr, Instant::now());
        self.pool.forget(addr);
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The chunk's layers, their holders, and whom to ask in which order.
    pub(super) async fn plan(&self, id: ChunkId, relay: bool) -> Result<FetchPlan, FetchError> {
        let layers = self.blocking(move |s| s.chunk_layers(&id)).await.map_err(FetchError::Local)?;
        if layers.is_empty() {
            return Err(FetchError::NotInAnyLayer);
        }
        let mut holders: HashMap<NodeId, Holder> = HashMap::new();
        for layer in &layers {
            for h in self.lookup(layer.as_bytes()).await {
                let entry = holders.entry(NodeId::of(h.node.as_bytes())).or_insert_with(|| h.clone());
                entry.complete |= h.complete;
            }
        }
        let penalised_addrs = self.penalties.penalised(Instant::now());
        let penalised: BTreeSet<NodeId> =
            holders.iter().filter(|(_, h)| penalised_addrs.contains(&h.addr)).map(|(id, _)| *id).collect();
        let refs: Vec<LayerHolder> =
            holders.iter().map(|(n, h)| LayerHolder { node: *n, complete: h.complete }).collect();
        let asks = plan_fetch(&id, self.me.node_id(), &refs, &penalised, relay);
        Ok(FetchPlan { layers, holders, refs, asks })
    }

    pub(super) async fn fetch_uncached(
        &self,
        id: ChunkId,
        relay: bool,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Vec<u8>, FetchError> {
        if let Some(stored) =
            self.blocking(move |s| s.get_stored_chunk(&id)).await.map_err(FetchError::Local)?
        {
            return Ok(stored);
        }
        let until = tokio::time::Instant::now() + deadline;
        let FetchPlan { layers, holders, refs, asks } = loop {
            let plan = self.plan(id, relay).await?;
            if !plan.asks.is_empty() {
                break plan;
            }
            // Directories refill within moments of a membership change:
            // ask again until the deadline.
            if tokio::time::Instant::now() + NO_HOLDER_RETRY >= until {
                self.metrics.fetch_failures.inc();
                return Err(FetchError::NoHolder { layers: short_list(&plan.layers), deadline });
            }
            tokio::time::sleep(NO_HOLDER_RETRY).await;
        };
        let mut decoder =
            ChunkDecoder::new().map_err(|e| FetchError::Local(format!("a chunk decoder: {e}")))?;
        let mut tried = Vec::new();
        for (i, ask) in asks.iter().enumerate() {
            let Some(holder) = holders.get(&ask.node()) else { continue };
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let share = time_share(left, &asks[i..], &refs);
            let (request, from) = match ask {
                Ask::Relay(_) => (PeerRequest::RelayChunks(vec![id], priority), "relay"),
                Ask::Fetch(_) if holder.complete => {
                    (PeerRequest::FetchChunks(vec![id], priority), "complete")
                }
                Ask::Fetch(_) => (PeerRequest::FetchChunks(vec![id], priority), "partial"),
            };
            let asked = Instant::now();
            let failure = match tokio::time::timeout(share, self.pool.request(holder.addr, &request)).await {
                Ok(Ok(replies)) => match verified(&mut decoder, &id, &replies) {
                    Ok(Some(stored)) => {
                        let seconds = asked.elapsed().as_secs_f64();
                        self.metrics.fetch_seconds.get_or_create(&FromLabel { from }).observe(seconds);
                        self.keep(id, &stored, &layers, from).await;
                        return Ok(stored);
                    }
                    Ok(None) => {
                        tried.push(format!("{} (does not hold it)", holder.node));
                        continue;
                    }
                    Err(failure) => failure,
                },
                Ok(Err(e)) => PeerFailure::Network(e.to_string()),
                Err(_) => PeerFailure::Silent(share),
            };
            if let PeerFailure::BadBytes(_) = failure {
                self.metrics.bad_chunks.inc();
            }
            if failure.penalises() {
                tracing::warn!(chunk = %id, peer = %holder.node, %failure, "peer failed; trying the next");
                self.penalise(holder.addr);
            } else {
                // Slow, perhaps only busy: asked last for a while, but its
                // connection (and the requests on it) stays. Not a node
                // fetching the layer too: busy with the same start as
                // this one, and asked after the origin it would send
                // the origin every chunk it relays.
                tracing::warn!(chunk = %id, peer = %holder.node, ?share, "peer silent; trying the next");
                if holder.complete {
                    self.penalties.penalise(holder.addr, Instant::now());
                }
            }
            tried.push(format!("{} ({failure})", holder.node));
        }
        self.metrics.fetch_failures.inc();
        Err(FetchError::Exhausted { deadline, tried: tried.join(", ") })
    }

    /// Stores a verified chunk and notes its layers' progress; a layer whose
    /// last chunk arrived is announced complete.
    pub(super) async fn keep(&self, id: ChunkId, stored: &[u8], layers: &[LayerId], from: &'static str) {
        self.metrics.chunks_fetched.get_or_create(&FromLabel { from }).inc();
        self.metrics.chunk_bytes_fetched.get_or_create(&FromLabel { from }).inc_by(stored.len() as u64);
        let bytes = stored.to_vec();
        match self.blocking(move |s| s.put_fetched_chunk(&id, &bytes)).await {
            Ok(true) => {
                let mut finished = Vec::new();
                {
                    let mut partial = self.partial.lock();
                    for layer in layers {
                        if let Some(missing) = partial.get_mut(layer) {
                            *missing = missing.saturating_sub(1);
                            if *missing == 0 {
                                partial.remove(layer);
                                finished.push(*layer.as_bytes());
                            }
                        }
                    }
                }
                if !finished.is_empty() {
                    tracing::info!(layers = finished.len(), "layer complete here");
                    self.announce(&finished, &[]).await;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(chunk = %id, error = %e, "fetched chunk not stored"),
        }
    }
}

/// The stored form in a FetchChunks reply, decoded and checked against `id`.
pub(super) fn verified(
    decoder: &mut ChunkDecoder,
    id: &ChunkId,
    replies: &[strata_wire::Response],
) -> Result<Option<Vec<u8>>, PeerFailure> {
    match replies.first().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Chunk(c)) if c.id == id.as_bytes() && c.missing => Ok(None),
        Some(Kind::Chunk(c)) if c.id == id.as_bytes() => {
            decoder.decode(id, &c.stored).map_err(PeerFailure::BadBytes)?;
            Ok(Some(c.stored.clone()))
        }
        Some(Kind::Error(e)) => Err(PeerFailure::Refused { code: e.code, message: e.message.clone() }),
        other => Err(PeerFailure::Unexpected(format!("{other:?}"))),
    }
}

pub(super) fn short_list(layers: &[LayerId]) -> String {
    layers.iter().map(|l| l.short()).collect::<Vec<_>>().join(", ")
}
