//! The node: its store, its QUIC endpoint, gossip membership, the directory
//! entries placed on it, and the fetch path that brings chunks from peers
//! (verified, stored, then served on to others).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_chunk::ChunkDecoder;
use strata_net::quinn::Endpoint;
use strata_net::Pool;
use strata_placement::{plan_fetch, time_share, Ask, LayerHolder, Ring};
use strata_proto::v1::LookupReply;
use strata_store::{ImageId, LayerId, Store, StoreError};
use strata_tls::Identity;
use strata_types::{ChunkId, NodeId};
use strata_wire::response::Kind;
use strata_wire::{Announcement, PeerRequest, Priority, MAX_KEYS};

use crate::directory::{Directory, Holder};
use crate::fetch::{FetchError, Flights, Joined, PeerFailure};
use crate::penalties::Penalties;

/// Chunk fetches under way, by (chunk, whether the fetch may relay): the
/// stored forms they end with.
type ChunkFlights = Flights<(ChunkId, bool), Arc<Vec<u8>>>;
use crate::handler::NodeHandler;
use crate::lookup_cache::{Cached, LookupCache};
use crate::membership::{Member, MemberState, MemberView, Membership};
use crate::metrics::{FromLabel, Metrics};
use crate::throttle::{Caps, Throttle};
use crate::NodeError;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name: its certificate's.
    pub name: String,
    pub listen: SocketAddr,
    /// The address peers reach this node on; needed when `listen` is a
    /// wildcard address and there is more than one way in.
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    /// A chunk fetch, all peers together, fails after this long.
    pub fetch_deadline: Duration,
    /// Holdings are announced again this often (and when the directory moves).
    pub announce_interval: Duration,
    /// Directory nodes per key.
    pub directory_replicas: usize,
    pub caps: Caps,
}

/// How often a fetch that found no holder asks the directory again.
const NO_HOLDER_RETRY: Duration = Duration::from_millis(250);
/// Beyond a flight's deadline, how long a caller waits for its outcome.
pub(crate) const FLIGHT_MARGIN: Duration = Duration::from_millis(500);
/// How long a peer that failed is asked after the others.
/// Directory entries outlive this many missed announcements.
const TTL_INTERVALS: u32 = 3;

/// A directory key: a LayerId's bytes, or [`name_key`] of an image name.
type Key = [u8; 32];

/// A chunk's layers, their holders, and whom to ask in which order.
struct FetchPlan {
    layers: Vec<LayerId>,
    holders: HashMap<NodeId, Holder>,
    refs: Vec<LayerHolder>,
    asks: Vec<Ask>,
}

/// Keys held whole and keys being fetched, as one announcement carries them.
#[derive(Default)]
struct Holdings {
    complete: Vec<Key>,
    partial: Vec<Key>,
}

pub struct Node {
    config: NodeConfig,
    me: Member,
    store: Arc<Store>,
    endpoint: Endpoint,
    pool: Arc<Pool>,
    membership: Membership,
    directory: Mutex<Directory>,
    lookups: Mutex<LookupCache>,
    /// Fetches under way, by chunk and whether they may relay: every reader
    /// of a chunk waits on one fetch.
    flights: Arc<ChunkFlights>,
    /// Layers being fetched, with how many of their chunks are still missing.
    partial: Mutex<HashMap<LayerId, usize>>,
    penalties: Penalties,
    /// Images whose startup profile is being prefetched.
    prefetching: Mutex<std::collections::HashSet<ImageId>>,
    pub(crate) throttle: Throttle,
    pub(crate) metrics: Metrics,
    runtime: tokio::runtime::Handle,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The directory key of an image name.
pub fn name_key(name: &str) -> Key {
    *blake3::hash(format!("image-name:{name}").as_bytes()).as_bytes()
}

impl Node {
    /// Starts the node: binds the endpoint, joins the cluster through the
    /// seeds, serves peers, and announces what the store holds.
    pub async fn start(
        config: NodeConfig,
        identity: &Identity,
        store: Arc<Store>,
    ) -> Result<Arc<Node>, NodeError> {
        let endpoint = strata_net::server_endpoint(config.listen, identity)?;
        let bound = endpoint.local_addr().map_err(|e| NodeError::Setup(e.to_string()))?;
        let advertise = config.advertise.unwrap_or_else(|| advertised(bound, &config.seeds));
        let me = Member { name: config.name.clone(), addr: advertise, incarnation: incarnation() };
        let partial = tokio::task::spawn_blocking({
            let store = store.clone();
            move || partial_layers(&store)
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let (stopping, _) = tokio::sync::watch::channel(false);
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let handler = Arc::new(NodeHandler::new(weak.clone(), store.clone()));
            let pool = Arc::new(Pool::new(endpoint.clone(), handler.clone()));
            let membership = Membership::start(me.clone(), config.seeds.clone(), pool.clone());
            tokio::spawn(strata_net::serve(endpoint.clone(), handler));
            Node {
                directory: Mutex::new(Directory::new(config.announce_interval * TTL_INTERVALS)),
                throttle: Throttle::new(config.caps),
                config,
                me,
                store,
                endpoint,
                pool,
                membership,
                lookups: Mutex::default(),
                flights: Arc::default(),
                partial: Mutex::new(partial),
                penalties: Penalties::default(),
                prefetching: Mutex::default(),
                metrics: Metrics::new(),
                runtime: tokio::runtime::Handle::current(),
                stopping,
            }
        });
        tokio::spawn(announce_loop(Arc::downgrade(&node)));
        tracing::info!(node = %node.me.name, addr = %node.me.addr, seeds = ?node.config.seeds, "node started");
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// The address peers reach this node on.
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn members(&self) -> Vec<MemberView> {
        self.membership.view()
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.members_live.set(self.membership.live().len() as i64);
        self.metrics.encode()
    }

    /// The runtime the node runs on: blocking callers (control requests,
    /// peer handlers) wait on node futures through it.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub(crate) fn receive_gossip(&self, data: bytes::Bytes) {
        self.membership.receive(data);
    }

    pub(crate) fn directory(&self) -> &Mutex<Directory> {
        &self.directory
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn prefetching(&self) -> &Mutex<std::collections::HashSet<ImageId>> {
        &self.prefetching
    }

    pub(crate) fn fetch_deadline(&self) -> Duration {
        self.config.fetch_deadline
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Leaves the cluster and closes the endpoint; in-flight fetches fail.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        self.membership.leave().await;
        self.endpoint.close(0u32.into(), b"node stopping");
        self.endpoint.wait_idle().await;
    }

    /// The live members by id, this node included.
    fn live(&self) -> HashMap<NodeId, Member> {
        self.membership.live().into_iter().map(|m| (m.node_id(), m)).collect()
    }

    fn directory_nodes(&self, key: &Key, live: &HashMap<NodeId, Member>) -> Vec<Member> {
        let ring = Ring::new(live.keys().copied());
        ring.directory(key, self.config.directory_replicas.max(1))
            .into_iter()
            .filter_map(|id| live.get(&id).cloned())
            .collect()
    }

    /// Tells the keys' directory nodes that this node holds them.
    pub async fn announce(&self, complete: &[Key], partial: &[Key]) {
        let live = self.live();
        let mut per_node: HashMap<SocketAddr, (Member, Holdings)> = HashMap::new();
        for (keys, is_complete) in [(complete, true), (partial, false)] {
            for key in keys {
                for node in self.directory_nodes(key, &live) {
                    let (_, holdings) =
                        per_node.entry(node.addr).or_insert_with(|| (node.clone(), Holdings::default()));
                    if is_complete { &mut holdings.complete } else { &mut holdings.partial }.push(*key);
                }
            }
        }
        let mut sends = tokio::task::JoinSet::new();
        for (addr, (node, holdings)) in per_node {
            for batch in batches(holdings) {
                let a = Announcement {
                    node: self.me.name.clone(),
                    addr: self.me.addr,
                    complete: batch.complete,
                    partial: batch.partial,
                };
                if node.name == self.me.name {
                    self.directory.lock().record(&a, Instant::now());
                    continue;
                }
                self.metrics.announcements.inc();
                let pool = self.pool.clone();
                sends.spawn(async move {
                    let request = PeerRequest::Announce(a);
                    match tokio::time::timeout(Duration::from_secs(2), pool.request(addr, &request)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "announcement not delivered"),
                        Err(_) => tracing::debug!(peer = %addr, "announcement timed out"),
                    }
                });
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Announces everything the store holds: whole layers and image names
    /// as complete, layers being fetched as partial.
    pub async fn announce_all(&self) -> Result<(), NodeError> {
        let store = self.store.clone();
        let (layers, names) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let layers: Vec<LayerId> = store.layers()?.into_iter().map(|l| l.id).collect();
            let names: Vec<String> = store.images()?.into_iter().map(|i| i.name).collect();
            Ok((layers, names))
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let (complete, partial) = {
            let mut partial = self.partial.lock();
            partial.retain(|l, _| layers.contains(l));
            let mut complete: Vec<Key> =
                layers.iter().filter(|l| !partial.contains_key(l)).map(|l| *l.as_bytes()).collect();
            complete.extend(names.iter().map(|n| name_key(n)));
            (complete, partial.keys().map(|l| *l.as_bytes()).collect::<Vec<_>>())
        };
        self.announce(&complete, &partial).await;
        Ok(())
    }

    /// Who holds `key`, as its directory nodes say (this node included when
    /// it announced it). Answers are reused for a moment ([`LookupCache`]).
    pub async fn lookup(&self, key: &Key) -> Vec<Holder> {
        if let Cached::Use(holders) = self.lookups.lock().get(key, Instant::now()) {
            return holders;
        }
        let live = self.live();
        let per_node = (self.config.fetch_deadline / 4).min(Duration::from_secs(1));
        // Every directory node of the key, at once; their answers merged (a
        // directory node that just took the key may not know every holder yet).
        let mut asks = tokio::task::JoinSet::new();
        let mut found: Vec<Holder> = Vec::new();
        for node in self.directory_nodes(key, &live) {
            if node.name == self.me.name {
                found.extend(self.directory.lock().holders(key, Instant::now()));
                continue;
            }
            let (pool, request) = (self.pool.clone(), PeerRequest::Lookup(vec![*key]));
            asks.spawn(async move {
                match tokio::time::timeout(per_node, pool.request(node.addr, &request)).await {
                    Ok(Ok(replies)) => holders_of(&replies),
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %node.addr, error = %e, "directory lookup failed");
                        pool.forget(node.addr);
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::debug!(peer = %node.addr, "directory lookup timed out");
                        pool.forget(node.addr);
                        Vec::new()
                    }
                }
            });
        }
        while let Some(answer) = asks.join_next().await {
            found.extend(answer.unwrap_or_default());
        }
        let mut merged: Vec<Holder> = Vec::new();
        for holder in found {
            // Holders the gossip says are gone are not worth asking.
            if holder.node != self.me.name && !live.values().any(|m| m.name == holder.node) {
                continue;
            }
            match merged.iter_mut().find(|h| h.node == holder.node) {
                Some(known) => known.complete |= holder.complete,
                None => merged.push(holder),
            }
        }
        self.lookups.lock().put(*key, merged.clone(), &self.me.name, Instant::now());
        merged
    }

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
                let partial = self.partial.lock();
                if record
                    .layers
                    .iter()
                    .any(|l| LayerId::from_slice(l).is_ok_and(|l| partial.contains_key(&l)))
                {
                    drop(partial);
                    self.start_prefetch(id);
                }
                return Ok(id);
            }
            Err(StoreError::NoSuchImage(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let holders: Vec<Holder> =
            self.lookup(&name_key(reference)).await.into_iter().filter(|h| h.node != self.me.name).collect();
        if holders.is_empty() {
            return Err(NodeError::NotFound(format!("no live node announces an image named {reference:?}")));
        }
        let mut errors = Vec::new();
        for holder in &holders {
            let fetched = async {
                let connection = self.pool.get(holder.addr).await.map_err(|e| e.to_string())?;
                crate::fetch_image(&connection, reference).await
            };
            match tokio::time::timeout(self.config.fetch_deadline, fetched).await {
                Ok(Ok(crate::RemoteImage { id, record, layers, profile })) => {
                    self.metrics
                        .image_metadata_bytes_fetched
                        .inc_by(crate::remote::metadata_bytes(&record, &layers) + 32 * profile.len() as u64);
                    let store = self.store.clone();
                    let name = reference.to_owned();
                    let missing = tokio::task::spawn_blocking(move || {
                        store_remote_image(&store, id, record, layers, name)
                    })
                    .await
                    .map_err(|e| NodeError::Setup(e.to_string()))??;
                    let partial: Vec<Key> = missing.keys().map(|l| *l.as_bytes()).collect();
                    self.partial.lock().extend(missing);
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
                    // chunk from the origin once.
                    let node = self.clone();
                    let name = name_key(reference);
                    tokio::spawn(async move {
                        node.announce(&[name], &partial).await;
                        node.start_prefetch(id);
                    });
                    return Ok(id);
                }
                Ok(Err(e)) => errors.push(format!("{} ({e})", holder.node)),
                Err(_) => errors
                    .push(format!("{} (no answer within {:?})", holder.node, self.config.fetch_deadline)),
            }
        }
        Err(NodeError::Unavailable(format!(
            "image {reference:?}: every holder failed: {}",
            errors.join(", ")
        )))
    }

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

    fn penalise(&self, addr: SocketAddr) {
        self.penalties.penalise(addr, Instant::now());
        self.pool.forget(addr);
    }

    async fn blocking<T: Send + 'static>(
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
    async fn plan(&self, id: ChunkId, relay: bool) -> Result<FetchPlan, FetchError> {
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

    async fn fetch_uncached(
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
    async fn keep(&self, id: ChunkId, stored: &[u8], layers: &[LayerId], from: &'static str) {
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
fn verified(
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

fn holders_of(replies: &[strata_wire::Response]) -> Vec<Holder> {
    let Some(Kind::Lookup(LookupReply { holders })) = replies.first().and_then(|r| r.kind.clone()) else {
        return Vec::new();
    };
    holders
        .into_iter()
        .flat_map(|h| h.holders)
        .filter_map(|h| Some(Holder { node: h.node, addr: h.addr.parse().ok()?, complete: h.complete }))
        .collect()
}

/// Splits holdings into announcements of at most MAX_KEYS keys.
fn batches(holdings: Holdings) -> Vec<Holdings> {
    let mut out: Vec<Holdings> = holdings
        .complete
        .chunks(MAX_KEYS)
        .map(|c| Holdings { complete: c.to_vec(), partial: Vec::new() })
        .collect();
    out.extend(
        holdings.partial.chunks(MAX_KEYS).map(|p| Holdings { complete: Vec::new(), partial: p.to_vec() }),
    );
    out
}

fn short_list(layers: &[LayerId]) -> String {
    layers.iter().map(|l| l.short()).collect::<Vec<_>>().join(", ")
}

/// Layers with chunks still missing, and how many.
fn partial_layers(store: &Store) -> Result<HashMap<LayerId, usize>, StoreError> {
    let mut out = HashMap::new();
    for layer in store.layers()? {
        let missing = store.missing_chunks(&layer.id)?.len();
        if missing > 0 {
            out.insert(layer.id, missing);
        }
    }
    Ok(out)
}

/// Stores a pulled image's record and indexes (its chunks follow on
/// demand); returns the layers with chunks missing and how many.
fn store_remote_image(
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

/// An incarnation that grows across restarts, so a restarted node wins
/// over the identity the cluster remembers for its address.
fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1)
}

/// The address to advertise for an endpoint bound to `bound`: itself when
/// specific, else the local address the OS would use to reach the first
/// seed (or loopback with no seeds).
fn advertised(bound: SocketAddr, seeds: &[SocketAddr]) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = seeds
        .iter()
        .find_map(|seed| {
            let socket = std::net::UdpSocket::bind((bound.ip(), 0)).ok()?;
            socket.connect(seed).ok()?;
            socket.local_addr().ok().map(|a| a.ip())
        })
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    SocketAddr::new(ip, bound.port())
}

/// Announces holdings every interval, and soon after the membership
/// changes (the directory moves with it); forgets holders gossip declared
/// down; expires stale directory entries.
async fn announce_loop(node: Weak<Node>) {
    let (mut members, mut stopping, interval) = match node.upgrade() {
        Some(n) => (n.membership.subscribe(), n.stopping.subscribe(), n.config.announce_interval),
        None => return,
    };
    loop {
        let previous: BTreeSet<String> = {
            let Some(node) = node.upgrade() else { return };
            let view = members.borrow_and_update().clone();
            {
                let mut directory = node.directory.lock();
                for m in view.iter().filter(|m| m.state == MemberState::Down) {
                    directory.forget_node(&m.name);
                }
                directory.expire(Instant::now());
            }
            node.lookups.lock().clear();
            if let Err(e) = node.announce_all().await {
                tracing::warn!(error = %e, "announcing holdings");
            }
            view.iter().filter(|m| m.state != MemberState::Down).map(|m| m.name.clone()).collect()
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = async {
                loop {
                    if members.changed().await.is_err() {
                        return false;
                    }
                    let now: BTreeSet<String> = members
                        .borrow()
                        .iter()
                        .filter(|m| m.state != MemberState::Down)
                        .map(|m| m.name.clone())
                        .collect();
                    if now != previous {
                        return true;
                    }
                }
            } => {
                if !changed { return; }
                // Let a burst of joins settle before re-announcing.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = stopping.changed() => return,
        }
    }
}
