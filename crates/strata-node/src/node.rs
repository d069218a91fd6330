//! The node: its store, its QUIC endpoint, gossip membership, the directory
//! entries placed on it, and the fetch path that brings chunks from peers
//! (verified, stored, then served on to others).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use strata_net::quinn::Endpoint;
use strata_net::Pool;
use strata_store::{LayerId, Store};
use strata_tls::Identity;
use strata_types::ChunkId;
use strata_wire::Priority;

use crate::directory::Holder;
use crate::fetcher::{Fetcher, FetcherParts, StoreChunks};
use crate::handler::NodeHandler;
use crate::locator::{Key, Locator};
use crate::membership::{Member, MemberState, MemberView};
use crate::metrics::Metrics;
use crate::penalties::Penalties;
use crate::progress::LayerProgress;
use crate::throttle::{Caps, Throttle};
use crate::NodeError;

mod announce;
mod background;
mod cache;
mod claim;
mod profile;
mod pull;

pub use background::{BackgroundConfig, JobState, JobStatus, Start, Window};
pub use cache::{CacheConfig, Evicted, InUse};
pub use claim::{ClaimGuard, Claimed};
pub use pull::ImageCheck;

use announce::announce_loop;

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
    /// What the node fetches beyond reads, and how fast.
    pub background: BackgroundConfig,
    /// The disk cap and what it evicts.
    pub cache: CacheConfig,
    /// Settings of its QUIC connections (accepted and dialled).
    pub transport: strata_net::TransportSettings,
}

/// Relayed batches a node fetches for its peers at once.
const RELAY_BATCHES: usize = 8;

/// Directory entries outlive this many missed announcements.
const TTL_INTERVALS: u32 = 3;

/// A running node, made of parts with one room each: the [`Locator`]
/// (membership, directory, lookups), the [`Fetcher`] (single flight,
/// plans, penalties, verification), the [`LayerProgress`] of partial
/// layers, the [`Throttle`] of what it serves, its [`Metrics`]; pulls and
/// startup profiles are its own methods over those parts.
pub struct Node {
    config: NodeConfig,
    me: Member,
    store: Arc<Store>,
    endpoint: Endpoint,
    pool: Arc<Pool>,
    pub(crate) locator: Arc<Locator>,
    pub(crate) fetcher: Arc<Fetcher>,
    /// Layers being fetched, with how many of their chunks are still missing.
    progress: Arc<LayerProgress>,
    /// Background fetches (startup profiles, whole images).
    jobs: background::Jobs,
    /// The images live mounts use (set by the daemon).
    in_use: Mutex<Option<InUse>>,
    /// One eviction run at a time.
    evicting: tokio::sync::Mutex<()>,
    /// Wakes the cache's task (a fetched chunk crossed the cap).
    cache_wake: tokio::sync::Notify,
    /// Batches fetched on peers' behalf (relayed batches) at once, at most.
    pub(crate) relay_batches: Arc<tokio::sync::Semaphore>,
    /// Keys this node holds the claim on (see [`Node::claim`]): a second
    /// pull of one image here waits on the first, as other nodes do.
    claims: Mutex<std::collections::HashSet<Key>>,
    /// Seeds as they were written that did not resolve to an address (so
    /// gossip never asks them): shown by `strata peers`.
    unresolved_seeds: Mutex<Vec<String>>,
    pub(crate) throttle: Throttle,
    pub(crate) metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The directory key of an image name.
pub fn name_key(name: &str) -> Key {
    *blake3::hash(format!("image-name:{name}").as_bytes()).as_bytes()
}

/// The directory key of a layer chain by its ChainID (OCI image-spec): a
/// node announces one for every layer prefix of every image it holds, so
/// containerd's snapshotter on another node finds a chain by the only name
/// containerd gives it.
pub fn chain_key(chain: &strata_types::OciDigest) -> Key {
    *blake3::hash(format!("image-chain:{chain}").as_bytes()).as_bytes()
}

/// What one node said it holds ([`Node::cluster_images`]).
#[derive(Clone, Debug)]
pub struct NodeImages {
    pub node: String,
    pub addr: SocketAddr,
    /// Its image names, or why it gave none.
    pub images: Result<strata_proto::v1::ImageList, String>,
}

/// The ImageList in a reply to ListImages, or what the node said instead.
fn image_list(replies: Vec<strata_wire::Response>) -> Result<strata_proto::v1::ImageList, String> {
    for reply in replies {
        match reply.kind {
            Some(strata_wire::response::Kind::ImageList(list)) => return Ok(list),
            Some(strata_wire::response::Kind::Error(e))
                if e.code == strata_wire::ErrorCode::UnknownRequest as i32 =>
            {
                return Err("a node too old to list its images".into())
            }
            Some(strata_wire::response::Kind::Error(e)) => return Err(e.message),
            _ => {}
        }
    }
    Err("no image list in its answer".into())
}

impl Node {
    /// Starts the node: binds the endpoint, joins the cluster through the
    /// seeds, serves peers, and announces what the store holds.
    pub async fn start(
        config: NodeConfig,
        identity: &Identity,
        store: Arc<Store>,
    ) -> Result<Arc<Node>, NodeError> {
        let endpoint = strata_net::server_endpoint_with(config.listen, identity, config.transport)?;
        let bound = endpoint.local_addr().map_err(|e| NodeError::Setup(e.to_string()))?;
        let advertise = config.advertise.unwrap_or_else(|| advertised(bound, &config.seeds));
        let me = Member { name: config.name.clone(), addr: advertise, incarnation: incarnation() };
        let progress = tokio::task::spawn_blocking({
            let store = store.clone();
            move || LayerProgress::load(&store)
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let progress = Arc::new(progress);
        let (stopping, _) = tokio::sync::watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let handler = Arc::new(NodeHandler::new(weak.clone(), store.clone()));
            let pool = Arc::new(Pool::new(endpoint.clone(), handler.clone()));
            let locator = Arc::new(Locator::start(
                me.clone(),
                config.seeds.clone(),
                pool.clone(),
                config.directory_replicas,
                config.announce_interval * TTL_INTERVALS,
                (config.fetch_deadline / 4).min(Duration::from_secs(1)),
                metrics.clone(),
            ));
            let announcer = weak.clone();
            let reader = weak.clone();
            let capped = weak.clone();
            let fetcher = Arc::new(Fetcher::new(FetcherParts {
                me: me.node_id(),
                store: Box::new(StoreChunks(store.clone())),
                holders: locator.clone(),
                peers: pool.clone(),
                progress: progress.clone(),
                metrics: metrics.clone(),
                deadline: config.fetch_deadline,
                penalties: Penalties::default(),
                on_whole: Box::new(move |layers: Vec<LayerId>| {
                    let Some(node) = announcer.upgrade() else { return };
                    let keys: Vec<Key> = layers.iter().map(|l| *l.as_bytes()).collect();
                    tokio::spawn(async move { node.locator.announce(&keys, &[]).await });
                }),
                on_miss: Box::new(move |chunk: ChunkId, layers: &[LayerId]| {
                    if let Some(node) = reader.upgrade() {
                        node.read_missed(chunk, layers);
                    }
                }),
                before_put: Box::new(move |bytes| {
                    let node = capped.upgrade();
                    Box::pin(async move {
                        if let Some(node) = node {
                            node.room_for_fetched(bytes).await;
                        }
                    })
                }),
            }));
            tokio::spawn(strata_net::serve(endpoint.clone(), handler));
            Node {
                throttle: Throttle::new(config.caps),
                config,
                me,
                store,
                endpoint,
                pool,
                locator,
                fetcher,
                progress,
                jobs: background::Jobs::default(),
                in_use: Mutex::default(),
                evicting: tokio::sync::Mutex::default(),
                cache_wake: tokio::sync::Notify::new(),
                relay_batches: Arc::new(tokio::sync::Semaphore::new(RELAY_BATCHES)),
                claims: Mutex::default(),
                unresolved_seeds: Mutex::default(),
                metrics,
                runtime: tokio::runtime::Handle::current(),
                stopping,
            }
        });
        tokio::spawn(announce_loop(Arc::downgrade(&node)));
        node.resume_background().await;
        tokio::spawn(node.clone().cache_loop());
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
        self.locator.members()
    }

    /// Notes seeds that did not resolve (see [`Node::unresolved_seeds`]).
    pub fn set_unresolved_seeds(&self, seeds: Vec<String>) {
        *self.unresolved_seeds.lock() = seeds;
    }

    /// Seeds as written that did not resolve when the node started.
    pub fn unresolved_seeds(&self) -> Vec<String> {
        self.unresolved_seeds.lock().clone()
    }

    /// The seeds this node joined through, as resolved at its start, but
    /// itself (every node of a cluster may be given the same list).
    pub fn seeds(&self) -> Vec<SocketAddr> {
        self.config.seeds.iter().copied().filter(|s| *s != self.me.addr).collect()
    }

    /// The image names each live node holds (this one's from its store),
    /// asked of all at once; a node that does not answer within `patience`
    /// (or is too old to know the request) has its error instead.
    pub async fn cluster_images(self: &Arc<Self>, patience: std::time::Duration) -> Vec<NodeImages> {
        let mut asked = tokio::task::JoinSet::new();
        let me = (self.me.name.clone(), self.me.addr);
        let store = self.store.clone();
        asked.spawn(async move {
            let listed = tokio::task::spawn_blocking(move || crate::handler::list_images(&store))
                .await
                .map_err(|e| format!("listing panicked: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            (me.0, me.1, listed)
        });
        let live = self.locator.members().into_iter().filter(|m| m.state != MemberState::Down);
        for member in live {
            let pool = self.pool.clone();
            asked.spawn(async move {
                let asking = pool.request(member.addr, &strata_wire::PeerRequest::ListImages);
                let listed = match tokio::time::timeout(patience, asking).await {
                    Err(_) => Err(format!("no answer within {patience:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(replies)) => image_list(replies),
                };
                (member.name, member.addr, listed)
            });
        }
        let mut out = Vec::new();
        while let Some(done) = asked.join_next().await {
            if let Ok((node, addr, listed)) = done {
                out.push(NodeImages { node, addr, images: listed });
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.members_live.set(self.locator.live_count() as i64);
        let jobs = self.background_status();
        self.metrics.background_jobs.clear();
        for state in
            [JobState::Fetching, JobState::Paused, JobState::Capped, JobState::Retrying, JobState::Full]
        {
            let n = jobs.iter().filter(|j| j.state == state).count();
            self.metrics
                .background_jobs
                .get_or_create(&crate::metrics::StateLabel { state: state.as_str() })
                .set(n as i64);
        }
        self.metrics.background_raw_bytes_left.set(jobs.iter().map(|j| j.raw_bytes_left as i64).sum());
        self.metrics.background_rate.set(jobs.iter().map(|j| j.rate).sum());
        self.metrics.encode()
    }

    /// The chunk's stored form, from the store or else from peers (then
    /// verified and stored). Concurrent callers for one chunk share one
    /// fetch ([`Fetcher::fetch`]).
    pub async fn fetch_chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>, NodeError> {
        self.fetch_chunk_within(id, self.config.fetch_deadline, Priority::Demand).await
    }

    /// [`Self::fetch_chunk`] for a read-ahead: asked of peers with prefetch
    /// priority (they answer reads that wait first); same deadline.
    pub async fn fetch_chunk_ahead(&self, id: ChunkId) -> Result<Arc<Vec<u8>>, NodeError> {
        self.fetch_chunk_within(id, self.config.fetch_deadline, Priority::Prefetch).await
    }

    pub(crate) async fn fetch_chunk_within(
        &self,
        id: ChunkId,
        deadline: Duration,
        priority: Priority,
    ) -> Result<Arc<Vec<u8>>, NodeError> {
        self.fetcher.fetch(id, deadline, priority).await.map_err(|source| NodeError::Fetch { id, source })
    }

    /// Who holds `key` (a layer id's bytes or [`name_key`]), as its
    /// directory nodes say.
    pub async fn lookup(&self, key: &Key) -> Vec<Holder> {
        self.locator.lookup(key).await
    }

    /// Tells the keys' directory nodes that this node holds them.
    pub async fn announce(&self, complete: &[Key], partial: &[Key]) {
        self.locator.announce(complete, partial).await
    }

    /// Tells the keys' directory nodes that this node holds them, and
    /// learns from their answers who else holds the `partial` keys it
    /// starts fetching ([`Locator::join`]).
    pub async fn join(&self, complete: &[Key], partial: &[Key]) {
        self.locator.join(complete, partial).await
    }

    /// The runtime the node runs on: blocking callers (control requests,
    /// peer handlers) wait on node futures through it.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Leaves the cluster and closes the endpoint; in-flight fetches fail.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        self.locator.leave().await;
        self.endpoint.close(0u32.into(), b"node stopping");
        self.endpoint.wait_idle().await;
    }
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
