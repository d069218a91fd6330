//! The fetch path, as a part of its own: a chunk missing here is asked of
//! its layers' holders in the order `strata_placement::plan_fetch` gives,
//! each within its share of the deadline (`time_share`), one flight per
//! chunk however many callers wait, verified against its id, stored, and
//! its layers' progress noted. Penalties and metrics follow the typed
//! outcome of each ask ([`PeerFailure`]).
//!
//! The [`Fetcher`] reaches the world through three ports: the store
//! ([`ChunkStore`]), the directory ([`HolderLookup`]) and the peers
//! ([`PeerLink`]). The node plugs in its RocksDB store, its [`Locator`]
//! and its QUIC [`Pool`]; tests plug in fakes and drive the fetcher with
//! tokio's paused clock, so deadlines, shares and penalties are checked
//! in simulated time without sockets.
//!
//! [`Locator`]: crate::locator::Locator

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_chunk::ChunkDecoder;
use strata_net::{NetError, Pool};
use strata_placement::{plan_fetch, time_share, Ask, LayerHolder};
use strata_store::{LayerId, Store};
use strata_types::{ChunkId, NodeId};
use strata_wire::response::Kind;
use strata_wire::{PeerRequest, Priority, Response};
use tokio::sync::watch;

use crate::directory::Holder;
use crate::fetch::{DemandGauge, FetchError, Flights, Joined, PeerFailure};
use crate::metrics::{FromLabel, Metrics};
use crate::penalties::Penalties;
use crate::progress::LayerProgress;

mod batch;

pub use batch::BatchOutcome;

/// A boxed future a port returns.
pub type PortFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where chunks are kept: the node's store.
pub trait ChunkStore: Send + Sync + 'static {
    /// The chunk's stored form, if held here.
    fn stored(&self, id: ChunkId) -> PortFuture<'_, Result<Option<Vec<u8>>, String>>;
    /// The layers whose indexes list the chunk.
    fn layers_of(&self, id: ChunkId) -> PortFuture<'_, Result<Vec<LayerId>, String>>;
    /// Keeps a verified chunk; true when it was not held before.
    fn put(&self, id: ChunkId, stored: Vec<u8>) -> PortFuture<'_, Result<bool, String>>;
    /// Whether each chunk is held here, in order.
    fn held(&self, ids: Vec<ChunkId>) -> PortFuture<'_, Result<Vec<bool>, String>>;
    /// [`layers_of`](Self::layers_of) for each chunk, in order.
    fn layers_of_each(&self, ids: Vec<ChunkId>) -> PortFuture<'_, Result<Vec<Vec<LayerId>>, String>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.layers_of(id).await?);
            }
            Ok(out)
        })
    }
}

/// Who holds a layer, whole or in part: the directory.
pub trait HolderLookup: Send + Sync + 'static {
    fn holders<'a>(&'a self, layer: &'a LayerId) -> PortFuture<'a, Vec<Holder>>;
}

/// One reply's frames, as they arrive.
pub trait ReplyFrames: Send {
    /// The next frame; `Ok(None)` after the one that ends the reply.
    fn next(&mut self) -> PortFuture<'_, Result<Option<Response>, NetError>>;
}

impl ReplyFrames for strata_net::ReplyStream {
    fn next(&mut self) -> PortFuture<'_, Result<Option<Response>, NetError>> {
        Box::pin(strata_net::ReplyStream::next(self))
    }
}

/// A reply read whole, handed out frame by frame.
struct Collected(std::vec::IntoIter<Response>);

impl ReplyFrames for Collected {
    fn next(&mut self) -> PortFuture<'_, Result<Option<Response>, NetError>> {
        let frame = self.0.next();
        Box::pin(async move { Ok(frame) })
    }
}

/// Requests to peers.
pub trait PeerLink: Send + Sync + 'static {
    /// Sends `request` to `addr`; its reply frames up to the end.
    fn request<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a PeerRequest,
    ) -> PortFuture<'a, Result<Vec<Response>, NetError>>;
    /// Sends `request` to `addr`; its reply frame by frame as it arrives
    /// (by default, once it is whole).
    fn request_stream<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a PeerRequest,
    ) -> PortFuture<'a, Result<Box<dyn ReplyFrames + 'a>, NetError>> {
        Box::pin(async move {
            let frames = self.request(addr, request).await?;
            Ok(Box::new(Collected(frames.into_iter())) as Box<dyn ReplyFrames>)
        })
    }
    /// `addr` failed: its connection goes (the next request dials anew).
    fn forget(&self, addr: SocketAddr);
    /// The round-trip time to `addr`, when known.
    fn rtt(&self, _addr: SocketAddr) -> Option<Duration> {
        None
    }
}

/// The node's store as a [`ChunkStore`]: RocksDB reads and writes run on
/// tokio's blocking pool.
pub struct StoreChunks(pub Arc<Store>);

impl StoreChunks {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, strata_store::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| format!("a store task failed: {e}"))?
            .map_err(|e| e.to_string())
    }
}

impl ChunkStore for StoreChunks {
    fn stored(&self, id: ChunkId) -> PortFuture<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(self.run(move |s| s.get_stored_chunk(&id)))
    }

    fn layers_of(&self, id: ChunkId) -> PortFuture<'_, Result<Vec<LayerId>, String>> {
        Box::pin(self.run(move |s| s.chunk_layers(&id)))
    }

    fn put(&self, id: ChunkId, stored: Vec<u8>) -> PortFuture<'_, Result<bool, String>> {
        Box::pin(self.run(move |s| s.put_fetched_chunk(&id, &stored)))
    }

    fn held(&self, ids: Vec<ChunkId>) -> PortFuture<'_, Result<Vec<bool>, String>> {
        Box::pin(self.run(move |s| ids.iter().map(|id| s.has_chunk(id)).collect()))
    }

    fn layers_of_each(&self, ids: Vec<ChunkId>) -> PortFuture<'_, Result<Vec<Vec<LayerId>>, String>> {
        Box::pin(self.run(move |s| ids.iter().map(|id| s.chunk_layers(id)).collect()))
    }
}

impl PeerLink for Pool {
    fn request<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a PeerRequest,
    ) -> PortFuture<'a, Result<Vec<Response>, NetError>> {
        Box::pin(Pool::request(self, addr, request))
    }

    fn request_stream<'a>(
        &'a self,
        addr: SocketAddr,
        request: &'a PeerRequest,
    ) -> PortFuture<'a, Result<Box<dyn ReplyFrames + 'a>, NetError>> {
        Box::pin(async move {
            let stream = Pool::request_stream(self, addr, request).await?;
            Ok(Box::new(stream) as Box<dyn ReplyFrames>)
        })
    }

    fn forget(&self, addr: SocketAddr) {
        Pool::forget(self, addr);
    }

    fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        Pool::rtt(self, addr)
    }
}

/// How long a prefetch ask that a read joined is given to answer before
/// the peer is asked again at demand priority: two round trips, and a
/// tenth of the fetch deadline, whichever is longer. An answer on its way
/// (behind other replies on a busy link, not held back by the peer's caps)
/// mostly arrives within that, and a re-ask then would only bring the
/// chunk over the link twice (measured: the fan-out bench's origin egress
/// at N = 1 rose from 1.00 to 1.04 of the working set with a grace of two
/// round trips alone); a reply the peer holds back behind its prefetch
/// budget waits longer (up to half a deadline, when the peer ages it).
pub fn raise_grace(rtt: Option<Duration>, deadline: Duration) -> Duration {
    MIN_RAISE_GRACE.max(rtt.unwrap_or(Duration::ZERO) * 2).max(deadline / 10)
}

/// The least [`raise_grace`].
pub const MIN_RAISE_GRACE: Duration = Duration::from_millis(20);

/// Beyond a flight's deadline, how long a caller waits for its outcome.
pub const FLIGHT_MARGIN: Duration = Duration::from_millis(500);

/// How long a chunk whose fetch for a read failed (no holder, or every
/// holder asked) fails again at once instead of being fetched anew. A failed read makes
/// the kernel read the same page again at once (its read-ahead failed,
/// then the page's own read): without this the read that fails waits the
/// deadline twice.
pub const UNAVAILABLE_MEMORY: Duration = Duration::from_secs(1);

/// Chunks remembered as unavailable at most (older ones go first).
const MAX_UNAVAILABLE: usize = 4096;
/// How often a fetch that found no holder asks the directory again.
pub const NO_HOLDER_RETRY: Duration = Duration::from_millis(250);

/// Chunk fetches under way, by (chunk, whether the fetch may relay): the
/// stored forms they end with.
type ChunkFlights = Flights<(ChunkId, bool), Arc<Vec<u8>>>;

/// What is told when fetched chunks make layers whole. Called before the
/// fetch's callers get the chunk; what it starts (the node announces the
/// layers complete in the background) may finish after they do.
pub type OnWhole = Box<dyn Fn(Vec<LayerId>) + Send + Sync>;

/// Called before a fetched chunk of this many stored bytes is kept: the
/// node makes room under its cache cap (by eviction) when it would cross it.
pub type BeforePut = Box<dyn Fn(u64) -> PortFuture<'static, ()> + Send + Sync>;

/// What is told when a read finds a chunk missing here and waits on peers:
/// the chunk and its layers (the node starts fetching their images whole,
/// and reads ahead of the chunk first).
/// Called on the reading task: it must not block.
pub type OnMiss = Box<dyn Fn(ChunkId, &[LayerId]) + Send + Sync>;

/// Brings chunks from peers: single flight, plan, shares, verification,
/// penalties, layer progress.
pub struct Fetcher {
    me: NodeId,
    store: Box<dyn ChunkStore>,
    holders: Arc<dyn HolderLookup>,
    peers: Arc<dyn PeerLink>,
    flights: Arc<ChunkFlights>,
    penalties: Penalties,
    progress: Arc<LayerProgress>,
    metrics: Arc<Metrics>,
    deadline: Duration,
    on_whole: OnWhole,
    on_miss: OnMiss,
    before_put: BeforePut,
    demand: Arc<DemandGauge>,
    /// Chunks whose last fetch failed, with when and why: see
    /// [`UNAVAILABLE_MEMORY`].
    unavailable: parking_lot::Mutex<HashMap<ChunkId, (tokio::time::Instant, FetchError)>>,
}

/// A chunk's layers, their holders, and whom to ask in which order.
struct FetchPlan {
    layers: Vec<LayerId>,
    holders: HashMap<NodeId, Holder>,
    refs: Vec<LayerHolder>,
    asks: Vec<Ask>,
}

/// The parts a [`Fetcher`] is made of.
pub struct FetcherParts {
    /// This node, as placement names it.
    pub me: NodeId,
    pub store: Box<dyn ChunkStore>,
    pub holders: Arc<dyn HolderLookup>,
    pub peers: Arc<dyn PeerLink>,
    pub progress: Arc<LayerProgress>,
    pub metrics: Arc<Metrics>,
    /// A chunk fetch, all peers together, fails after this long.
    pub deadline: Duration,
    pub penalties: Penalties,
    /// Called (on the fetching task) with the layers a stored chunk made whole.
    pub on_whole: OnWhole,
    /// Called when a read (demand priority) misses here.
    pub on_miss: OnMiss,
    /// Called before each fetched chunk is kept.
    pub before_put: BeforePut,
}

impl Fetcher {
    pub fn new(parts: FetcherParts) -> Self {
        let FetcherParts {
            me,
            store,
            holders,
            peers,
            progress,
            metrics,
            deadline,
            penalties,
            on_whole,
            on_miss,
            before_put,
        } = parts;
        Self {
            me,
            store,
            holders,
            peers,
            flights: Arc::default(),
            penalties,
            progress,
            demand: Arc::new(DemandGauge::counted(
                metrics.demand_waits.clone(),
                metrics.demand_wait_seconds.clone(),
            )),
            metrics,
            deadline,
            on_whole,
            on_miss,
            before_put,
            unavailable: parking_lot::Mutex::default(),
        }
    }

    /// Why `id`'s fetch failed, if it did within [`UNAVAILABLE_MEMORY`].
    fn recently_unavailable(&self, id: &ChunkId) -> Option<FetchError> {
        let now = tokio::time::Instant::now();
        let unavailable = self.unavailable.lock();
        let (when, why) = unavailable.get(id)?;
        (now.duration_since(*when) < UNAVAILABLE_MEMORY).then(|| why.clone())
    }

    /// Remembers that `id` could not be had (see [`UNAVAILABLE_MEMORY`]).
    fn remember_unavailable(&self, id: ChunkId, why: &FetchError) {
        if !matches!(
            why,
            FetchError::NoHolder { .. } | FetchError::Exhausted { .. } | FetchError::Deadline(_)
        ) {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut unavailable = self.unavailable.lock();
        unavailable.retain(|_, (when, _)| now.duration_since(*when) < UNAVAILABLE_MEMORY);
        if unavailable.len() >= MAX_UNAVAILABLE {
            if let Some(oldest) = unavailable.iter().min_by_key(|(_, (when, _))| *when).map(|(id, _)| *id) {
                unavailable.remove(&oldest);
            }
        }
        unavailable.insert(id, (now, why.clone()));
    }

    /// Reads waiting on peers, for whatever yields to them.
    pub fn demand(&self) -> &Arc<DemandGauge> {
        &self.demand
    }

    /// The deadline of a fetch.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Fetches under way.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// The chunk's stored form, from the store or else from peers (then
    /// verified and stored), within `deadline`. Concurrent callers for one
    /// chunk share one fetch; a caller that joins a fetch under way (a
    /// prefetch's, with a longer deadline) still gives up after its own,
    /// and a [`Priority::Demand`] caller raises the fetch's priority (the
    /// peer being asked is asked again at demand priority).
    pub async fn fetch(
        self: &Arc<Self>,
        id: ChunkId,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        if let Some(stored) = self.store.stored(id).await.map_err(FetchError::Local)? {
            return Ok(Arc::new(stored));
        }
        if let Some(why) = self.recently_unavailable(&id) {
            return Err(why);
        }
        // The deadline covers finding the holders too: a directory node
        // that died costs its lookup's timeout out of it, not on top.
        let started = tokio::time::Instant::now();
        // A fetch that goes to a complete holder itself shares its flight
        // with the relays this node serves for the chunk: one fetch each.
        let plan = match tokio::time::timeout(deadline, self.plan(id, true)).await {
            Ok(plan) => plan?,
            Err(_) => {
                let why = FetchError::Deadline(deadline);
                tracing::warn!(chunk = %id, reason = %why, "chunk unavailable: its holders were not found in time");
                if priority == Priority::Demand {
                    self.remember_unavailable(id, &why);
                }
                return Err(why);
            }
        };
        let deadline = deadline.saturating_sub(started.elapsed());
        let _waiting = (priority == Priority::Demand).then(|| {
            (self.on_miss)(id, &plan.layers);
            self.demand.enter()
        });
        let relaying = matches!(plan.asks.first(), Some(Ask::Relay(_)));
        let result = self.join(id, relaying, deadline, priority).await;
        if let (Err(why), Priority::Demand) = (&result, priority) {
            self.remember_unavailable(id, why);
        }
        result
    }

    /// A relay asked by a peer: this node fetches the chunk for its group,
    /// without relaying again, within `deadline`.
    pub async fn relay(
        self: &Arc<Self>,
        id: ChunkId,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        self.join(id, false, deadline, priority).await
    }

    /// Waits for the flight of (`id`, `relay`), starting it if there is
    /// none; gives up after `deadline` (the leader keeps to its own; the
    /// margin covers its last answer arriving).
    async fn join(
        self: &Arc<Self>,
        id: ChunkId,
        relay: bool,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        let wait = match self.flights.join((id, relay), priority) {
            Joined::Waiter(wait) => wait,
            Joined::Leader(leader, wait) => {
                // The fetch runs on its own task: a caller that gives up
                // does not cancel it for the others.
                let fetcher = self.clone();
                let raised = leader.priority();
                tokio::spawn(async move {
                    let result = fetcher.fetch_uncached(id, relay, deadline, raised).await.map(Arc::new);
                    if let Err(reason) = &result {
                        tracing::warn!(chunk = %id, relay, %reason, "chunk unavailable");
                    }
                    leader.finish(result);
                });
                wait
            }
        };
        match tokio::time::timeout(deadline + FLIGHT_MARGIN, wait).await {
            Ok(outcome) => outcome.unwrap_or(Err(FetchError::Abandoned)),
            Err(_) => Err(FetchError::Deadline(deadline)),
        }
    }

    fn penalise(&self, addr: SocketAddr) {
        self.penalties.penalise(addr, Instant::now());
        self.peers.forget(addr);
    }

    /// The chunk's layers, their holders, and whom to ask in which order.
    async fn plan(&self, id: ChunkId, relay: bool) -> Result<FetchPlan, FetchError> {
        let layers = self.store.layers_of(id).await.map_err(FetchError::Local)?;
        if layers.is_empty() {
            return Err(FetchError::NotInAnyLayer);
        }
        let mut holders: HashMap<NodeId, Holder> = HashMap::new();
        for layer in &layers {
            for h in self.holders.holders(layer).await {
                let entry = holders.entry(NodeId::of(h.node.as_bytes())).or_insert_with(|| h.clone());
                entry.complete |= h.complete;
            }
        }
        let penalised_addrs = self.penalties.penalised(Instant::now());
        let penalised: BTreeSet<NodeId> =
            holders.iter().filter(|(_, h)| penalised_addrs.contains(&h.addr)).map(|(id, _)| *id).collect();
        let refs: Vec<LayerHolder> =
            holders.iter().map(|(n, h)| LayerHolder { node: *n, complete: h.complete }).collect();
        let asks = plan_fetch(&id, self.me, &refs, &penalised, relay);
        Ok(FetchPlan { layers, holders, refs, asks })
    }

    async fn fetch_uncached(
        &self,
        id: ChunkId,
        relay: bool,
        deadline: Duration,
        mut priority: watch::Receiver<Priority>,
    ) -> Result<Vec<u8>, FetchError> {
        if let Some(stored) = self.store.stored(id).await.map_err(FetchError::Local)? {
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
            let from = match ask {
                Ask::Relay(_) => "relay",
                Ask::Fetch(_) if holder.complete => "complete",
                Ask::Fetch(_) => "partial",
            };
            let relayed = matches!(ask, Ask::Relay(_));
            let asked = Instant::now();
            let started = tokio::time::Instant::now();
            let window = Share {
                asked: started,
                until: started + share,
                // Should a read join this fetch: a demand fetch's share,
                // unless no other holder is left to ask.
                on_raise: if i + 1 < asks.len() {
                    time_share(self.deadline.min(left), &asks[i..], &refs)
                } else {
                    share
                },
            };
            let answer = self.ask(holder.addr, (id, relayed), &mut priority, window);
            let failure = match answer.await {
                Some(Ok(replies)) => match verified(&mut decoder, &id, &replies) {
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
                Some(Err(e)) => PeerFailure::Network(e.to_string()),
                None => PeerFailure::Silent(started.elapsed()),
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

    /// Asks `addr` for the chunk at the flight's priority, until
    /// `share.until`; `None` when it has not answered by then.
    ///
    /// When a demand caller joins a prefetch flight meanwhile and the ask
    /// is not answered within [`raise_grace`] of that (or of its start,
    /// whichever is later), the peer is asked again at demand priority (it
    /// serves that first), the first answer winning (an error only when
    /// both requests fail), and this ask is given up `share.on_raise` from
    /// the raise at the latest (a demand fetch's share, so that a silent
    /// peer does not hold the read).
    async fn ask(
        &self,
        addr: SocketAddr,
        (id, relay): (ChunkId, bool),
        priority: &mut watch::Receiver<Priority>,
        share: Share,
    ) -> Option<Result<Vec<Response>, NetError>> {
        let request = |priority| {
            if relay {
                PeerRequest::RelayChunks(vec![id], priority)
            } else {
                PeerRequest::FetchChunks(vec![id], priority)
            }
        };
        let now = *priority.borrow_and_update();
        let first_request = request(now);
        let first = self.peers.request(addr, &first_request);
        tokio::pin!(first);
        let expiry = tokio::time::sleep_until(share.until);
        tokio::pin!(expiry);
        if now == Priority::Prefetch {
            tokio::select! {
                answer = &mut first => return Some(answer),
                () = &mut expiry => return None,
                Ok(()) = priority.changed() => {}
            }
        } else {
            return tokio::select! {
                answer = &mut first => Some(answer),
                () = &mut expiry => None,
            };
        }
        let raised = tokio::time::Instant::now();
        expiry.as_mut().reset(share.until.min(raised + share.on_raise));
        let grace = raise_grace(self.peers.rtt(addr), self.deadline);
        let grace = tokio::time::sleep_until(share.asked.max(raised) + grace);
        tokio::select! {
            answer = &mut first => return Some(answer),
            () = &mut expiry => return None,
            () = grace => {}
        }
        tracing::debug!(chunk = %id, peer = %addr, "a read waits on this prefetch: asked again as demand");
        let again_request = request(Priority::Demand);
        let again = self.peers.request(addr, &again_request);
        tokio::pin!(again);
        let (mut first_failed, mut again_failed) = (false, false);
        loop {
            let failed = tokio::select! {
                answer = &mut first, if !first_failed => match answer {
                    Ok(replies) => return Some(Ok(replies)),
                    Err(e) => { first_failed = true; e }
                },
                answer = &mut again, if !again_failed => match answer {
                    Ok(replies) => return Some(Ok(replies)),
                    Err(e) => { again_failed = true; e }
                },
                () = &mut expiry => return None,
            };
            if first_failed && again_failed {
                return Some(Err(failed));
            }
        }
    }

    /// Stores a verified chunk and notes its layers' progress; the layers
    /// it made whole go to `on_whole`.
    async fn keep(&self, id: ChunkId, stored: &[u8], layers: &[LayerId], from: &'static str) {
        self.metrics.chunks_fetched.get_or_create(&FromLabel { from }).inc();
        self.metrics.chunk_bytes_fetched.get_or_create(&FromLabel { from }).inc_by(stored.len() as u64);
        (self.before_put)(stored.len() as u64).await;
        match self.store.put(id, stored.to_vec()).await {
            Ok(true) => {
                let whole = self.progress.chunk_arrived(layers);
                if !whole.is_empty() {
                    tracing::info!(layers = whole.len(), "layer complete here");
                    (self.on_whole)(whole);
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(chunk = %id, error = %e, "fetched chunk not stored"),
        }
    }
}

/// The time one ask has.
struct Share {
    /// When it was made.
    asked: tokio::time::Instant,
    /// When it is given up.
    until: tokio::time::Instant,
    /// Its time from the moment a demand caller joins a prefetch flight
    /// (`until` stays the limit).
    on_raise: Duration,
}

/// The stored form in a FetchChunks reply, decoded and checked against `id`.
fn verified(
    decoder: &mut ChunkDecoder,
    id: &ChunkId,
    replies: &[Response],
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

fn short_list(layers: &[LayerId]) -> String {
    layers.iter().map(|l| l.short()).collect::<Vec<_>>().join(", ")
}

impl HolderLookup for crate::locator::Locator {
    fn holders<'a>(&'a self, layer: &'a LayerId) -> PortFuture<'a, Vec<Holder>> {
        Box::pin(self.lookup(layer.as_bytes()))
    }
}

/// The fetcher alone, against fake ports, in simulated time (tokio's
/// paused clock: a timer fires the moment nothing else can run, so every
/// duration below is exact, not measured).
#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use strata_chunk::ChunkEncoder;
    use strata_proto::v1::{ChunkReply, End};
    use strata_wire::MAX_KEYS;

    /// What a fake peer does when asked for a chunk.
    #[derive(Clone, Copy, Debug)]
    enum Behaviour {
        /// Answers with the chunk at once.
        Serve,
        /// Answers at once with the chunk's last byte flipped.
        Lie,
        /// Never answers.
        Silent,
        /// Says it does not hold it.
        Missing,
        /// Answers with a protocol error.
        Refuse,
        /// Answers after this long.
        Slow(Duration),
        /// Answers demand requests at once; prefetch ones never (they wait
        /// behind a flood of other prefetch replies).
        DemandFirst,
    }

    #[derive(Default)]
    struct FakePeers {
        chunks: HashMap<ChunkId, Vec<u8>>,
        behaviour: HashMap<SocketAddr, Behaviour>,
        asked: Mutex<Vec<(SocketAddr, PeerRequest)>>,
        forgotten: Mutex<Vec<SocketAddr>>,
    }

    fn chunk_frame(id: &ChunkId, stored: Option<Vec<u8>>) -> Vec<Response> {
        let chunk = ChunkReply {
            id: id.as_bytes().to_vec(),
            missing: stored.is_none(),
            stored: stored.unwrap_or_default(),
        };
        vec![Response { kind: Some(Kind::Chunk(chunk)) }, Response { kind: Some(Kind::End(End {})) }]
    }

    impl PeerLink for FakePeers {
        fn request<'a>(
            &'a self,
            addr: SocketAddr,
            request: &'a PeerRequest,
        ) -> PortFuture<'a, Result<Vec<Response>, NetError>> {
            self.asked.lock().push((addr, request.clone()));
            let (PeerRequest::FetchChunks(ids, priority) | PeerRequest::RelayChunks(ids, priority)) = request
            else {
                panic!("the fetcher asks for chunks only: {request:?}")
            };
            if ids.len() > 1 {
                return self.batch(addr, ids.clone(), *priority);
            }
            let (id, priority) = (ids[0], *priority);
            let stored = self.chunks.get(&id).cloned();
            let behaviour = self.behaviour.get(&addr).copied().unwrap_or(Behaviour::Missing);
            Box::pin(async move {
                match behaviour {
                    Behaviour::Serve => Ok(chunk_frame(&id, stored)),
                    Behaviour::Lie => {
                        let mut bad = stored.expect("the liar knows the chunk");
                        *bad.last_mut().expect("bytes") ^= 0xff;
                        Ok(chunk_frame(&id, Some(bad)))
                    }
                    Behaviour::Silent => std::future::pending().await,
                    Behaviour::Missing => Ok(chunk_frame(&id, None)),
                    Behaviour::Refuse => Ok(vec![Response {
                        kind: Some(Kind::Error(strata_proto::v1::Error { code: 3, message: "busy".into() })),
                    }]),
                    Behaviour::Slow(after) => {
                        tokio::time::sleep(after).await;
                        Ok(chunk_frame(&id, stored))
                    }
                    Behaviour::DemandFirst if priority == Priority::Demand => Ok(chunk_frame(&id, stored)),
                    Behaviour::DemandFirst => std::future::pending().await,
                }
            })
        }

        fn forget(&self, addr: SocketAddr) {
            self.forgotten.lock().push(addr);
        }
    }

    impl FakePeers {
        /// A reply to a request for many chunks: a frame per chunk, then
        /// `End` (a liar corrupts the first chunk it holds).
        fn batch(
            &self,
            addr: SocketAddr,
            ids: Vec<ChunkId>,
            priority: Priority,
        ) -> PortFuture<'_, Result<Vec<Response>, NetError>> {
            let behaviour = self.behaviour.get(&addr).copied().unwrap_or(Behaviour::Missing);
            Box::pin(async move {
                match behaviour {
                    Behaviour::Silent => std::future::pending().await,
                    Behaviour::DemandFirst if priority == Priority::Prefetch => std::future::pending().await,
                    Behaviour::Slow(after) => tokio::time::sleep(after).await,
                    _ => {}
                }
                let mut frames = Vec::new();
                let mut lied = false;
                for id in ids {
                    let mut stored = self.chunks.get(&id).cloned();
                    if matches!(behaviour, Behaviour::Missing) {
                        stored = None;
                    }
                    if let (Behaviour::Lie, false, Some(bytes)) = (behaviour, lied, stored.as_mut()) {
                        *bytes.last_mut().expect("bytes") ^= 0xff;
                        lied = true;
                    }
                    frames.push(chunk_frame(&id, stored).remove(0));
                }
                frames.push(Response { kind: Some(Kind::End(End {})) });
                Ok(frames)
            })
        }
    }

    #[derive(Default)]
    struct FakeStore {
        chunks: Mutex<HashMap<ChunkId, Vec<u8>>>,
        layers: HashMap<ChunkId, Vec<LayerId>>,
    }

    impl ChunkStore for Arc<FakeStore> {
        fn stored(&self, id: ChunkId) -> PortFuture<'_, Result<Option<Vec<u8>>, String>> {
            let stored = self.chunks.lock().get(&id).cloned();
            Box::pin(async move { Ok(stored) })
        }

        fn layers_of(&self, id: ChunkId) -> PortFuture<'_, Result<Vec<LayerId>, String>> {
            let layers = self.layers.get(&id).cloned().unwrap_or_default();
            Box::pin(async move { Ok(layers) })
        }

        fn put(&self, id: ChunkId, stored: Vec<u8>) -> PortFuture<'_, Result<bool, String>> {
            let new = self.chunks.lock().insert(id, stored).is_none();
            Box::pin(async move { Ok(new) })
        }

        fn held(&self, ids: Vec<ChunkId>) -> PortFuture<'_, Result<Vec<bool>, String>> {
            let chunks = self.chunks.lock();
            let held = ids.iter().map(|id| chunks.contains_key(id)).collect();
            Box::pin(async move { Ok(held) })
        }
    }

    #[derive(Default)]
    struct FakeDirectory {
        holders: Vec<Holder>,
        lookups: Mutex<usize>,
        /// How long each lookup takes (a directory node that died: its
        /// lookup's timeout).
        lookup_time: Mutex<Duration>,
    }

    impl HolderLookup for FakeDirectory {
        fn holders<'a>(&'a self, _layer: &'a LayerId) -> PortFuture<'a, Vec<Holder>> {
            *self.lookups.lock() += 1;
            let wait = *self.lookup_time.lock();
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                self.holders.clone()
            })
        }
    }

    const DEADLINE: Duration = Duration::from_secs(2);

    /// A fetcher on node "me" for a layer of `chunks` chunks, whose holders
    /// (complete unless said) behave as given.
    struct Setup {
        fetcher: Arc<Fetcher>,
        store: Arc<FakeStore>,
        peers: Arc<FakePeers>,
        directory: Arc<FakeDirectory>,
        ids: Vec<ChunkId>,
        layer: LayerId,
        whole: Arc<Mutex<Vec<LayerId>>>,
        metrics: Arc<Metrics>,
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn setup(chunks: usize, holders: &[(&str, u16, Behaviour)]) -> Setup {
        let layer = LayerId::of(b"the layer");
        let mut encoder = ChunkEncoder::new(3).expect("encoder");
        let mut peers = FakePeers::default();
        let mut store = FakeStore::default();
        let mut ids = Vec::new();
        for i in 0..chunks {
            let data = format!("chunk {i} of the layer").repeat(50);
            let id = ChunkId::of(data.as_bytes());
            peers.chunks.insert(id, encoder.encode(data.as_bytes()));
            store.layers.insert(id, vec![layer]);
            ids.push(id);
        }
        let mut directory = FakeDirectory::default();
        for (name, port, behaviour) in holders {
            peers.behaviour.insert(addr(*port), *behaviour);
            directory.holders.push(Holder { node: (*name).into(), addr: addr(*port), complete: true });
        }
        let (store, peers, directory) = (Arc::new(store), Arc::new(peers), Arc::new(directory));
        let progress = Arc::new(LayerProgress::default());
        progress.add(HashMap::from([(layer, chunks)]));
        let whole = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Metrics::new());
        let told = whole.clone();
        let fetcher = Arc::new(Fetcher::new(FetcherParts {
            me: NodeId::of(b"me"),
            store: Box::new(store.clone()),
            holders: directory.clone(),
            peers: peers.clone(),
            progress,
            metrics: metrics.clone(),
            deadline: DEADLINE,
            penalties: Penalties::default(),
            on_whole: Box::new(move |layers| told.lock().extend(layers)),
            on_miss: Box::new(|_, _| {}),
            before_put: Box::new(|_| Box::pin(async {})),
        }));
        Setup { fetcher, store, peers, directory, ids, layer, whole, metrics }
    }

    impl Setup {
        /// The holders in the order the fetcher asks them for `id`.
        fn order(&self, id: &ChunkId) -> Vec<SocketAddr> {
            let by_node: HashMap<NodeId, SocketAddr> =
                self.directory.holders.iter().map(|h| (NodeId::of(h.node.as_bytes()), h.addr)).collect();
            let refs: Vec<LayerHolder> =
                by_node.keys().map(|n| LayerHolder { node: *n, complete: true }).collect();
            plan_fetch(id, NodeId::of(b"me"), &refs, &BTreeSet::new(), true)
                .iter()
                .map(|a| by_node[&a.node()])
                .collect()
        }

        fn asked(&self) -> Vec<SocketAddr> {
            self.peers.asked.lock().iter().map(|(a, _)| *a).collect()
        }

        fn stored(&self, id: &ChunkId) -> Option<Vec<u8>> {
            self.store.chunks.lock().get(id).cloned()
        }

        /// Starts a prefetch of `id` (four deadlines long) and returns once
        /// it has asked a peer.
        async fn prefetch_asked(
            &self,
            id: ChunkId,
        ) -> tokio::task::JoinHandle<Result<Arc<Vec<u8>>, FetchError>> {
            let fetcher = self.fetcher.clone();
            let prefetch =
                tokio::spawn(async move { fetcher.fetch(id, DEADLINE * 4, Priority::Prefetch).await });
            while self.asked().is_empty() {
                tokio::task::yield_now().await;
            }
            prefetch
        }
    }

    /// Two complete holders of eight chunks, the one asked first for the
    /// first chunk behaving as `first`, the other serving: the setup, and
    /// (the first holder, the other).
    fn first_behaves(first: Behaviour) -> (Setup, SocketAddr, SocketAddr) {
        let probe = setup(8, &[("a", 1, Behaviour::Serve), ("b", 2, Behaviour::Serve)]);
        let order = probe.order(&probe.ids[0]);
        let behaves = |port: u16| if port == order[0].port() { first } else { Behaviour::Serve };
        let s = setup(8, &[("a", 1, behaves(1)), ("b", 2, behaves(2))]);
        (s, order[0], order[1])
    }

    impl Setup {
        /// Another chunk the holder `first` would be asked first for.
        fn another_asking_first(&self, first: SocketAddr) -> ChunkId {
            *self.ids[1..].iter().find(|id| self.order(id)[0] == first).expect("one of seven chunks")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_costs_its_share_then_the_next_answers_and_goes_last_for_a_while() {
        let (s, silent, serving) = first_behaves(Behaviour::Silent);
        let id = s.ids[0];
        let started = tokio::time::Instant::now();
        let got = s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect("the second holder serves");
        assert_eq!(Some(got.as_ref().clone()), s.stored(&id), "verified and stored");
        // Two complete holders weigh the same: the first is given half the deadline.
        assert_eq!(started.elapsed(), DEADLINE / 2);
        assert_eq!(s.asked(), vec![silent, serving]);
        assert!(s.peers.forgotten.lock().is_empty(), "a silent peer keeps its connection");
        // A chunk it would be asked first for: now it is asked last.
        let other = s.another_asking_first(silent);
        s.fetcher.fetch(other, DEADLINE, Priority::Demand).await.expect("served");
        assert_eq!(s.asked()[2..], [serving], "the penalised holder goes last");
        assert_eq!(s.metrics.fetch_failures.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_liar_is_caught_counted_penalised_and_disconnected() {
        let (s, liar, honest) = first_behaves(Behaviour::Lie);
        let id = s.ids[0];
        let got = s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect("the honest holder serves");
        assert_eq!(got.as_ref(), &s.peers.chunks[&id], "the true bytes");
        assert_eq!(s.metrics.bad_chunks.get(), 1);
        assert_eq!(*s.peers.forgotten.lock(), vec![liar]);
        assert_eq!(s.asked(), vec![liar, honest]);
        s.fetcher.fetch(s.another_asking_first(liar), DEADLINE, Priority::Demand).await.expect("served");
        assert_eq!(s.asked()[2..], [honest], "the liar goes last");
    }

    #[tokio::test(start_paused = true)]
    async fn every_holder_failing_ends_exhausted_naming_each() {
        let s = setup(1, &[("a", 1, Behaviour::Refuse), ("b", 2, Behaviour::Missing)]);
        let err = s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("nobody gives it");
        let FetchError::Exhausted { tried, .. } = &err else { panic!("{err:?}") };
        assert!(tried.contains("a (error 3: busy)") && tried.contains("b (does not hold it)"), "{tried}");
        assert_eq!(s.metrics.fetch_failures.get(), 1);
        assert_eq!(*s.peers.forgotten.lock(), vec![addr(1)], "a refusal penalises; a miss does not");
        assert!(s.stored(&s.ids[0]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_holder_the_directory_is_asked_again_until_the_deadline() {
        let s = setup(1, &[]);
        let started = tokio::time::Instant::now();
        let err = s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("no holder");
        assert!(matches!(err, FetchError::NoHolder { .. }), "{err:?}");
        // Once to choose the flight, then every NO_HOLDER_RETRY while one
        // more retry fits the deadline: it gives up one retry before it.
        let retries = (DEADLINE.as_millis() / NO_HOLDER_RETRY.as_millis()) as usize;
        assert_eq!(*s.directory.lookups.lock(), 1 + retries);
        assert_eq!(started.elapsed(), NO_HOLDER_RETRY * (retries as u32 - 1));
        assert_eq!(s.fetcher.in_flight(), 0);
    }

    /// The kernel reads a page again at once when its read-ahead failed:
    /// the second read of a chunk nobody has fails at once, so a failed
    /// read costs one deadline, not two; after UNAVAILABLE_MEMORY the chunk
    /// is fetched anew.
    #[tokio::test(start_paused = true)]
    async fn a_chunk_just_found_unavailable_fails_again_at_once() {
        let s = setup(1, &[]);
        s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("no holder");
        let lookups = *s.directory.lookups.lock();
        let started = tokio::time::Instant::now();
        let err = s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("still no holder");
        assert!(matches!(err, FetchError::NoHolder { .. }), "{err:?}");
        assert_eq!(started.elapsed(), Duration::ZERO, "no second wait");
        assert_eq!(*s.directory.lookups.lock(), lookups, "nobody asked again");
        assert_eq!(s.metrics.fetch_failures.get(), 1);

        tokio::time::advance(UNAVAILABLE_MEMORY).await;
        s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("no holder, asked again");
        assert!(*s.directory.lookups.lock() > lookups, "fetched anew once the memory lapsed");
        assert_eq!(s.metrics.fetch_failures.get(), 2);
    }

    /// Finding the holders is part of the deadline: a lookup that takes a
    /// second (its directory node died) leaves the holders the rest.
    #[tokio::test(start_paused = true)]
    async fn a_slow_lookup_comes_out_of_the_deadline() {
        let s = setup(1, &[("a", 1, Behaviour::Silent)]);
        *s.directory.lookup_time.lock() = Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("a silent holder");
        assert!(started.elapsed() <= DEADLINE + FLIGHT_MARGIN, "{:?}", started.elapsed());
        // Lookups longer than the whole deadline (layer after layer of dead
        // directory nodes) end at it too.
        tokio::time::advance(UNAVAILABLE_MEMORY).await;
        *s.directory.lookup_time.lock() = DEADLINE * 3;
        let started = tokio::time::Instant::now();
        let err = s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect_err("no plan in time");
        assert!(matches!(err, FetchError::Deadline(_)), "{err:?}");
        assert_eq!(started.elapsed(), DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_in_no_known_layer_fails_at_once() {
        let s = setup(0, &[("a", 1, Behaviour::Serve)]);
        let id = ChunkId::of(b"unknown");
        let err = s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect_err("unknown");
        assert!(matches!(err, FetchError::NotInAnyLayer), "{err:?}");
        assert!(s.asked().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn many_callers_share_one_flight_and_the_layer_becomes_whole_once() {
        let s = setup(2, &[("a", 1, Behaviour::Slow(Duration::from_millis(300)))]);
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..10 {
            for id in s.ids.clone() {
                let fetcher = s.fetcher.clone();
                callers.spawn(async move { fetcher.fetch(id, DEADLINE, Priority::Demand).await });
            }
        }
        while let Some(done) = callers.join_next().await {
            done.expect("task").expect("fetched");
        }
        assert_eq!(s.asked().len(), 2, "one request per chunk for twenty callers");
        assert_eq!(*s.whole.lock(), vec![s.layer], "the layer is whole, said once");
        assert_eq!(s.fetcher.in_flight(), 0);
        // Held now: no peer is asked again.
        s.fetcher.fetch(s.ids[0], DEADLINE, Priority::Demand).await.expect("from the store");
        assert_eq!(s.asked().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_joining_a_prefetch_asks_again_as_demand_and_both_get_the_chunk() {
        let s = setup(1, &[("a", 1, Behaviour::DemandFirst)]);
        let id = s.ids[0];
        let prefetch = s.prefetch_asked(id).await;
        let started = tokio::time::Instant::now();
        let read = s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect("the read is served");
        // No round-trip time known: a tenth of the deadline, then the demand ask.
        assert_eq!(
            started.elapsed(),
            raise_grace(None, DEADLINE),
            "the read did not wait behind the prefetch"
        );
        assert_eq!(prefetch.await.expect("task").expect("the prefetch too"), read);
        let priorities: Vec<Priority> = s
            .peers
            .asked
            .lock()
            .iter()
            .map(|(_, r)| match r {
                PeerRequest::FetchChunks(_, p) | PeerRequest::RelayChunks(_, p) => *p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(priorities, vec![Priority::Prefetch, Priority::Demand]);
    }

    /// A prefetch (four deadlines long) asks a silent holder first; a read
    /// joins: the silent holder keeps only a demand fetch's share from then
    /// on, and the other holder serves the read within its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_read_joining_a_prefetch_stuck_on_a_silent_holder_moves_on_at_a_demand_share() {
        let (s, silent, serving) = first_behaves(Behaviour::Silent);
        let id = s.ids[0];
        let prefetch = s.prefetch_asked(id).await;
        let started = tokio::time::Instant::now();
        s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect("the read is served");
        // Two complete holders: the first is given half of a demand deadline.
        assert_eq!(started.elapsed(), DEADLINE / 2, "not half of the prefetch's");
        assert_eq!(s.asked(), vec![silent, silent, serving], "asked again as demand, then the next");
        prefetch.await.expect("task").expect("the prefetch too");
    }

    /// A prefetch answered within the grace after a read joins brings the
    /// chunk once: no second ask.
    #[tokio::test(start_paused = true)]
    async fn a_prefetch_answering_within_the_grace_is_not_asked_again() {
        let s = setup(1, &[("a", 1, Behaviour::Slow(raise_grace(None, DEADLINE) / 2))]);
        let id = s.ids[0];
        let prefetch = s.prefetch_asked(id).await;
        s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect("the read is served");
        prefetch.await.expect("task").expect("the prefetch too");
        assert_eq!(s.asked().len(), 1, "one ask");
        assert_eq!(raise_grace(Some(Duration::from_millis(150)), DEADLINE), Duration::from_millis(300));
        assert_eq!(raise_grace(Some(Duration::from_millis(1)), DEADLINE), DEADLINE / 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gives_up_at_its_deadline_while_the_flight_goes_on() {
        let s = setup(1, &[("a", 1, Behaviour::Slow(DEADLINE * 2))]);
        let id = s.ids[0];
        let prefetch = s.prefetch_asked(id).await;
        let started = tokio::time::Instant::now();
        let err = s.fetcher.fetch(id, DEADLINE, Priority::Demand).await.expect_err("too slow for the read");
        assert!(matches!(err, FetchError::Deadline(d) if d == DEADLINE), "{err:?}");
        assert_eq!(started.elapsed(), DEADLINE + FLIGHT_MARGIN);
        prefetch.await.expect("task").expect("the prefetch ends with the chunk");
        assert!(s.stored(&id).is_some());
    }

    /// The requests made, as (holder, chunks asked, priority).
    fn requests(s: &Setup) -> Vec<(SocketAddr, usize, Priority)> {
        s.peers
            .asked
            .lock()
            .iter()
            .map(|(a, r)| match r {
                PeerRequest::FetchChunks(ids, p) | PeerRequest::RelayChunks(ids, p) => (*a, ids.len(), *p),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_asks_each_holder_once_for_its_share_and_stores_every_chunk() {
        let s = setup(200, &[("a", 1, Behaviour::Serve), ("b", 2, Behaviour::Serve)]);
        let outcome = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!(outcome.fetched, 200);
        assert_eq!(outcome.requests, 2, "one request per holder");
        let requests = requests(&s);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests.iter().map(|(_, n, _)| n).sum::<usize>(), 200);
        assert!(requests.iter().all(|(_, n, p)| *n > 20 && *p == Priority::Prefetch), "{requests:?}");
        assert!(s.ids.iter().all(|id| s.stored(id).as_ref() == Some(&s.peers.chunks[id])));
        assert_eq!(*s.whole.lock(), vec![s.layer], "the layer is whole, said once");
        assert_eq!(s.fetcher.in_flight(), 0);
        // Held now: a second batch asks nobody, and looks for no holder
        // (it used to wait a fetch deadline for holders of no layer).
        let before = tokio::time::Instant::now();
        let again = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!((again.fetched, again.skipped, again.requests), (0, 200, 0));
        assert_eq!(before.elapsed(), Duration::ZERO, "a batch of held chunks returns at once");
        assert_eq!(s.asked().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn more_chunks_than_a_request_carries_take_more_requests_not_more_round_trips_per_chunk() {
        let s = setup(MAX_KEYS + 10, &[("a", 1, Behaviour::Serve)]);
        let outcome = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!((outcome.fetched, outcome.requests), (MAX_KEYS + 10, 2));
        let mut sizes: Vec<usize> = requests(&s).iter().map(|(_, n, _)| *n).collect();
        sizes.sort();
        assert_eq!(sizes, vec![10, MAX_KEYS]);
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_a_holder_lacks_go_to_the_next_holder_in_one_more_batch() {
        let s = setup(200, &[("a", 1, Behaviour::Missing), ("b", 2, Behaviour::Serve)]);
        let outcome = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!(outcome.fetched, 200);
        assert!(outcome.failed.is_empty());
        let requests = requests(&s);
        // Round one: each holder its share; round two: a's share to b.
        assert_eq!(requests.len(), 3, "{requests:?}");
        assert!(requests.iter().all(|(_, n, _)| *n > 1), "no chunk went alone: {requests:?}");
        assert!(s.peers.forgotten.lock().is_empty(), "lacking a chunk is no fault");
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_lying_in_a_batch_is_penalised_and_only_true_bytes_are_kept() {
        let s = setup(100, &[("a", 1, Behaviour::Lie), ("b", 2, Behaviour::Serve)]);
        let outcome = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!(outcome.fetched, 100);
        assert!(s.ids.iter().all(|id| s.stored(id).as_ref() == Some(&s.peers.chunks[id])), "true bytes only");
        assert_eq!(s.metrics.bad_chunks.get(), 1);
        assert_eq!(*s.peers.forgotten.lock(), vec![addr(1)], "the liar is cut off");
        assert_eq!(requests(&s).iter().filter(|(a, _, _)| *a == addr(1)).count(), 1, "and not asked again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_wanting_a_batched_chunk_is_served_at_demand_priority_without_waiting_for_the_batch() {
        let s = setup(50, &[("a", 1, Behaviour::DemandFirst)]);
        let fetcher = s.fetcher.clone();
        let ids = s.ids.clone();
        let batch = tokio::spawn(async move { fetcher.fetch_batch(ids, Priority::Prefetch, true).await });
        while s.asked().is_empty() {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        let read = s.fetcher.fetch(s.ids[7], DEADLINE, Priority::Demand).await.expect("the read is served");
        assert_eq!(started.elapsed(), Duration::ZERO, "asked at once, alone, at demand priority");
        assert_eq!(read.as_ref(), &s.peers.chunks[&s.ids[7]]);
        let outcome = batch.await.expect("task");
        assert_eq!(outcome.raised, 1);
        // The holder never answers prefetch: the rest fail, typed, after
        // the batch's silence and each chunk's own deadline.
        assert_eq!(outcome.failed.len(), 49);
        assert!(!outcome.failed.contains(&s.ids[7]));
        assert_eq!(s.fetcher.in_flight(), 0, "no flight stranded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_skips_chunks_another_flight_is_fetching() {
        let s = setup(10, &[("a", 1, Behaviour::Slow(Duration::from_millis(100)))]);
        let single = s.prefetch_asked(s.ids[0]).await;
        let outcome = s.fetcher.fetch_batch(s.ids.clone(), Priority::Prefetch, true).await;
        assert_eq!((outcome.fetched, outcome.skipped), (9, 1));
        single.await.expect("task").expect("the single flight ends with its chunk");
        assert_eq!(requests(&s).iter().map(|(_, n, _)| n).sum::<usize>(), 10, "each chunk asked once");
    }
}
