//! Batched fetching: many chunks per request, for prefetch and background
//! fetching. The batch leads one flight per chunk it lacks (a read that
//! wants one of them joins that flight and gets the chunk the moment its
//! frame arrives), groups them by the holder `plan_fetch` would ask first,
//! and asks each holder for its group in one `FetchChunks` of up to
//! [`MAX_KEYS`] ids, whose reply streams one frame per chunk. So a batch
//! of any size costs one round trip before its first chunk, and the link
//! stays busy with the bytes alone.
//!
//! A read that joins a batch's flight raises it: the chunk is asked again
//! at once, alone, at demand priority (the holder answers that before the
//! rest of the batch), and whichever copy comes first serves the read.
//! Chunks a holder did not give (it lacks them, failed, lied or went
//! silent for a fetch deadline) go the single-chunk way afterwards, every
//! holder in plan order, each within its share of the deadline.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_chunk::ChunkDecoder;
use strata_placement::{plan_fetch, Ask, LayerHolder};
use strata_store::LayerId;
use strata_types::{ChunkId, NodeId};
use strata_wire::response::Kind;
use strata_wire::{PeerRequest, Priority, MAX_KEYS};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Fetcher, MIN_RAISE_GRACE, NO_HOLDER_RETRY};
use crate::directory::Holder;
use crate::fetch::{Leader, PeerFailure};

/// Single-chunk fetches a batch runs at once for the chunks its holders
/// did not give.
const RETRIES_IN_FLIGHT: usize = 16;

/// What one [`Fetcher::fetch_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Chunks it brought, verified and stored.
    pub fetched: usize,
    /// Their stored bytes.
    pub bytes: u64,
    /// Chunks held here already, or under way in another flight (not
    /// waited for).
    pub skipped: usize,
    /// Chunks no holder gave within the deadline.
    pub failed: Vec<ChunkId>,
    /// Batch requests made (one per holder per [`MAX_KEYS`] chunks).
    pub requests: usize,
    /// Chunks a read raised: asked again alone at demand priority.
    pub raised: usize,
    /// The longest smoothed round-trip time of the holders asked, after
    /// their replies (the queue the batch met at the bottleneck is in it).
    pub rtt: Option<Duration>,
}

type ChunkLeader = Leader<(ChunkId, bool), Arc<Vec<u8>>>;

/// A chunk the batch leads the flight of.
struct Pending {
    /// Taken by a demand re-ask when a read raises the flight.
    leader: Option<ChunkLeader>,
    layers: Vec<LayerId>,
    /// Whom to ask, in order (`plan_fetch`), and whether as a relay.
    asks: Vec<(Holder, bool)>,
    /// The next of `asks`.
    next: usize,
    /// The stream asking for it now, and its place in that request.
    asked: Option<(Arc<StreamProgress>, usize)>,
}

/// How far one batch's reply has come: frames and stored bytes received
/// since the request went out (the pace a raised chunk would arrive at).
struct StreamProgress {
    addr: SocketAddr,
    sent: Instant,
    frames: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicU64,
}

impl StreamProgress {
    /// When the frame at `position` should arrive at the pace so far;
    /// `None` before the first frame.
    fn expected(&self, position: usize) -> Option<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        let (frames, bytes) = (self.frames.load(Relaxed), self.bytes.load(Relaxed));
        if frames == 0 || bytes == 0 {
            return None;
        }
        let elapsed = self.sent.elapsed().as_secs_f64().max(1e-3);
        let rate = bytes as f64 / elapsed;
        let ahead = position.saturating_sub(frames) as f64 * (bytes as f64 / frames as f64);
        Some(Duration::from_secs_f64(ahead / rate))
    }
}

/// The batch's chunks not yet served, shared by its streams and the
/// raise handler: whoever takes a chunk's leader finishes its flight.
type PendingMap = Arc<Mutex<HashMap<ChunkId, Pending>>>;

/// The requests of one round: by holder and whether as a relay.
type Round = HashMap<(SocketAddr, bool), (Holder, Vec<ChunkId>)>;

impl Fetcher {
    /// Fetches `ids` (those not held here) in batches, at `priority`:
    /// one request per holder for up to [`MAX_KEYS`] chunks, each chunk
    /// verified, stored and handed to the reads waiting on it as its frame
    /// arrives. Chunks a holder lacks go to the next holder of their plan
    /// in the next round, batched again; what no round gave goes one chunk
    /// at a time. `relay`: whether chunks may be asked of a relay (false
    /// when this node is itself relaying). Returns when every chunk it led
    /// is stored or given up.
    pub async fn fetch_batch(
        self: &Arc<Self>,
        ids: Vec<ChunkId>,
        priority: Priority,
        relay: bool,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let (raise_tx, mut raises) = mpsc::channel(ids.len().max(1));
        let pending = match self.lead_batch(ids, priority, relay, &raise_tx, &mut outcome).await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "a batch fetch could not read the store");
                return outcome;
            }
        };
        drop(raise_tx);
        let mut failed_holders = HashSet::new();
        loop {
            let round = next_round(&pending, &failed_holders);
            if round.is_empty() {
                break;
            }
            let mut streams = JoinSet::new();
            for ((addr, relayed), (holder, ids)) in round {
                for piece in ids.chunks(MAX_KEYS) {
                    outcome.requests += 1;
                    let fetcher = self.clone();
                    let (holder, piece, pending) = (holder.clone(), piece.to_vec(), pending.clone());
                    streams.spawn(async move {
                        let done = fetcher.stream(holder, relayed, piece, priority, pending).await;
                        (addr, done)
                    });
                }
            }
            while !streams.is_empty() {
                tokio::select! {
                    done = streams.join_next() => {
                        if let Some(Ok((addr, (fetched, bytes, whole)))) = done {
                            outcome.fetched += fetched;
                            outcome.bytes += bytes;
                            outcome.rtt = outcome.rtt.max(self.peers.rtt(addr));
                            if !whole {
                                failed_holders.insert(addr);
                            }
                        }
                    }
                    Some((id, _)) = raises.recv() => {
                        if self.raise(id, &pending) {
                            outcome.raised += 1;
                        }
                    }
                }
            }
        }
        // What no holder gave in a batch: every holder, one chunk at a
        // time, a few at once; a read that wants one still queued gets it
        // asked at once (raised), past the others.
        let left: Vec<ChunkId> =
            pending.lock().iter().filter(|(_, p)| p.leader.is_some()).map(|(id, _)| *id).collect();
        let mut left = left.into_iter();
        let mut retries = JoinSet::new();
        loop {
            while retries.len() < RETRIES_IN_FLIGHT {
                let Some(id) = left.next() else { break };
                let Some(leader) = pending.lock().get_mut(&id).and_then(|p| p.leader.take()) else {
                    continue;
                };
                let fetcher = self.clone();
                retries.spawn(async move {
                    let relaying = leader_relays(&leader);
                    let result =
                        fetcher.fetch_uncached(id, relaying, fetcher.deadline, leader.priority()).await;
                    let done = (id, result.as_ref().map(|s| s.len() as u64).map_err(|_| ()));
                    if let Err(reason) = &result {
                        tracing::warn!(chunk = %id, %reason, "chunk unavailable");
                    }
                    leader.finish(result.map(Arc::new));
                    done
                });
            }
            if retries.is_empty() {
                break;
            }
            tokio::select! {
                done = retries.join_next() => {
                    if let Some(Ok(done)) = done {
                        tally(&mut outcome, done);
                    }
                }
                Some((id, _)) = raises.recv() => {
                    if self.raise_now(id, &pending) {
                        outcome.raised += 1;
                    }
                }
            }
        }
        pending.lock().clear();
        outcome
    }

    /// Plans each chunk not held here and leads its flight (keyed as
    /// [`Fetcher::fetch`] keys it, so reads join it); chunks held, or under
    /// way in another flight, are counted skipped.
    async fn lead_batch(
        &self,
        ids: Vec<ChunkId>,
        priority: Priority,
        relay: bool,
        on_raise: &mpsc::Sender<(ChunkId, bool)>,
        outcome: &mut BatchOutcome,
    ) -> Result<PendingMap, String> {
        let held = self.store.held(ids.clone()).await?;
        let before = ids.len();
        let ids: Vec<ChunkId> =
            ids.into_iter().zip(held).filter(|(_, held)| !held).map(|(id, _)| id).collect();
        outcome.skipped += before - ids.len();
        if ids.is_empty() {
            // All here (a read fetched them meanwhile): no holder to find.
            return Ok(Arc::default());
        }
        let layers = self.store.layers_of_each(ids.clone()).await?;
        let mut by_layer: HashMap<LayerId, Vec<Holder>> = HashMap::new();
        // Holders are found through the directory, which fills within
        // moments of a start or a membership change: with none for any
        // chunk, asked again until the deadline.
        let until = tokio::time::Instant::now() + self.deadline;
        let distinct: HashSet<LayerId> = layers.iter().flatten().copied().collect();
        loop {
            // Every layer's holders at once: one round trip, however many.
            let mut lookups = JoinSet::new();
            for layer in distinct.iter().copied() {
                let holders = self.holders.clone();
                lookups.spawn(async move { (layer, holders.holders(&layer).await) });
            }
            while let Some(found) = lookups.join_next().await {
                if let Ok((layer, holders)) = found {
                    by_layer.insert(layer, holders);
                }
            }
            let found = by_layer.values().flatten().any(|h| NodeId::of(h.node.as_bytes()) != self.me);
            if found || tokio::time::Instant::now() + NO_HOLDER_RETRY >= until {
                break;
            }
            tokio::time::sleep(NO_HOLDER_RETRY).await;
            by_layer.clear();
        }
        let penalised_addrs = self.penalties.penalised(Instant::now());
        let mut pending = HashMap::new();
        for (id, layers) in ids.into_iter().zip(layers) {
            let mut holders: HashMap<NodeId, Holder> = HashMap::new();
            for layer in &layers {
                for h in by_layer.get(layer).into_iter().flatten() {
                    let entry = holders.entry(NodeId::of(h.node.as_bytes())).or_insert_with(|| h.clone());
                    entry.complete |= h.complete;
                }
            }
            let penalised: BTreeSet<NodeId> =
                holders.iter().filter(|(_, h)| penalised_addrs.contains(&h.addr)).map(|(n, _)| *n).collect();
            let refs: Vec<LayerHolder> =
                holders.iter().map(|(n, h)| LayerHolder { node: *n, complete: h.complete }).collect();
            let asks: Vec<(Holder, bool)> = plan_fetch(&id, self.me, &refs, &penalised, relay)
                .iter()
                .filter_map(|ask| Some((holders.get(&ask.node())?.clone(), matches!(ask, Ask::Relay(_)))))
                .collect();
            let relaying = asks.first().is_some_and(|(_, relayed)| *relayed);
            match self.flights.lead((id, relaying), priority, on_raise) {
                Some(leader) => {
                    pending.insert(id, Pending { leader: Some(leader), layers, asks, next: 0, asked: None });
                }
                None => outcome.skipped += 1,
            }
        }
        Ok(Arc::new(Mutex::new(pending)))
    }

    /// A read joined the flight of `id`: its leader goes to a fetch of the
    /// chunk alone at demand priority. False when the chunk is in already.
    ///
    /// A chunk its batch's reply should bring sooner than a round trip (at
    /// the pace the reply has come so far) is left to the batch for that
    /// long, then asked alone if still missing: asked at once, it would
    /// cross the link twice for nothing.
    fn raise(self: &Arc<Self>, id: ChunkId, pending: &PendingMap) -> bool {
        let soon = pending.lock().get(&id).and_then(|p| p.asked.as_ref()).and_then(|(progress, position)| {
            let rtt = self.peers.rtt(progress.addr)?;
            progress.expected(*position).filter(|at| *at < rtt)
        });
        if let Some(wait) = soon {
            let (fetcher, later) = (self.clone(), pending.clone());
            tokio::spawn(async move {
                tokio::time::sleep(wait + MIN_RAISE_GRACE).await;
                fetcher.raise_now(id, &later);
            });
            return pending.lock().contains_key(&id);
        }
        self.raise_now(id, pending)
    }

    fn raise_now(self: &Arc<Self>, id: ChunkId, pending: &PendingMap) -> bool {
        let Some(leader) = pending.lock().get_mut(&id).and_then(|p| p.leader.take()) else { return false };
        tracing::debug!(chunk = %id, "a read waits on a batched chunk: asked alone as demand");
        let fetcher = self.clone();
        tokio::spawn(async move {
            let relaying = leader_relays(&leader);
            let result = fetcher.fetch_uncached(id, relaying, fetcher.deadline, leader.priority()).await;
            if let Err(reason) = &result {
                tracing::warn!(chunk = %id, %reason, "chunk unavailable");
            }
            leader.finish(result.map(Arc::new));
        });
        true
    }

    /// Asks `holder` for `ids` in one request and keeps each chunk as its
    /// frame arrives. Returns the chunks and stored bytes it kept, and
    /// whether the reply ended well (the chunks it lacked stay in
    /// `pending`, for the next holder).
    async fn stream(
        self: Arc<Self>,
        holder: Holder,
        relayed: bool,
        ids: Vec<ChunkId>,
        priority: Priority,
        pending: PendingMap,
    ) -> (usize, u64, bool) {
        let from = match (relayed, holder.complete) {
            (true, _) => "relay",
            (false, true) => "complete",
            (false, false) => "partial",
        };
        let request = if relayed {
            PeerRequest::RelayChunks(ids.clone(), priority)
        } else {
            PeerRequest::FetchChunks(ids.clone(), priority)
        };
        let sent = Instant::now();
        let progress = Arc::new(StreamProgress {
            addr: holder.addr,
            sent,
            frames: Default::default(),
            bytes: Default::default(),
        });
        {
            let mut pending = pending.lock();
            for (position, id) in ids.iter().enumerate() {
                if let Some(entry) = pending.get_mut(id) {
                    entry.asked = Some((progress.clone(), position));
                }
            }
        }
        let mut asked: HashSet<ChunkId> = ids.into_iter().collect();
        let (mut fetched, mut bytes) = (0, 0);
        let failure = async {
            let mut decoder =
                ChunkDecoder::new().map_err(|e| PeerFailure::Network(format!("a chunk decoder: {e}")))?;
            let silent = || PeerFailure::Silent(self.deadline);
            let reply = tokio::time::timeout(self.deadline, self.peers.request_stream(holder.addr, &request));
            let mut reply =
                reply.await.map_err(|_| silent())?.map_err(|e| PeerFailure::Network(e.to_string()))?;
            loop {
                let frame = tokio::time::timeout(self.deadline, reply.next()).await.map_err(|_| silent())?;
                let kind = match frame.map_err(|e| PeerFailure::Network(e.to_string()))? {
                    Some(frame) => frame.kind,
                    None => return Ok(()),
                };
                let chunk = match kind {
                    Some(Kind::Chunk(chunk)) => chunk,
                    Some(Kind::End(_)) => return Ok(()),
                    Some(Kind::Error(e)) => {
                        return Err(PeerFailure::Refused { code: e.code, message: e.message })
                    }
                    other => return Err(PeerFailure::Unexpected(format!("{other:?}"))),
                };
                let id = ChunkId::from_slice(&chunk.id)
                    .ok()
                    .filter(|id| asked.remove(id))
                    .ok_or_else(|| PeerFailure::Unexpected("a chunk not asked for, or sent twice".into()))?;
                progress.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                progress.bytes.fetch_add(chunk.stored.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if chunk.missing {
                    continue;
                }
                decoder.decode(&id, &chunk.stored).map_err(PeerFailure::BadBytes)?;
                let Some(entry) = pending.lock().remove(&id) else { continue };
                fetched += 1;
                bytes += chunk.stored.len() as u64;
                let seconds = sent.elapsed().as_secs_f64();
                self.metrics
                    .fetch_seconds
                    .get_or_create(&crate::metrics::FromLabel { from })
                    .observe(seconds);
                self.keep(id, &chunk.stored, &entry.layers, from).await;
                if let Some(leader) = entry.leader {
                    leader.finish(Ok(Arc::new(chunk.stored)));
                }
            }
        };
        let failure = failure.await.err();
        if let Some(failure) = &failure {
            if let PeerFailure::BadBytes(_) = failure {
                self.metrics.bad_chunks.inc();
            }
            tracing::warn!(peer = %holder.node, %failure, left = asked.len(), "a batch stopped; its chunks go to the next holder");
            if failure.penalises() {
                self.penalise(holder.addr);
            } else if holder.complete {
                self.penalties.penalise(holder.addr, Instant::now());
            }
        }
        (fetched, bytes, failure.is_none())
    }
}

/// Whether a leader's flight is keyed as relaying.
fn leader_relays(leader: &ChunkLeader) -> bool {
    leader.key().is_some_and(|(_, relaying)| *relaying)
}

/// The chunks still pending with a leader, by the next holder of their
/// plan that has not failed this batch.
fn next_round(pending: &PendingMap, failed: &HashSet<SocketAddr>) -> Round {
    let mut round: Round = HashMap::new();
    for (id, entry) in pending.lock().iter_mut() {
        if entry.leader.is_none() {
            continue;
        }
        while entry.asks.get(entry.next).is_some_and(|(h, _)| failed.contains(&h.addr)) {
            entry.next += 1;
        }
        if let Some((holder, relayed)) = entry.asks.get(entry.next) {
            entry.next += 1;
            round.entry((holder.addr, *relayed)).or_insert_with(|| (holder.clone(), Vec::new())).1.push(*id);
        }
    }
    round
}

fn tally(outcome: &mut BatchOutcome, (id, result): (ChunkId, Result<u64, ()>)) {
    match result {
        Ok(bytes) => {
            outcome.fetched += 1;
            outcome.bytes += bytes;
        }
        Err(()) => outcome.failed.push(id),
    }
}
