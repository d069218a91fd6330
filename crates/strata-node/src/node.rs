//! The node: its store, its QUIC endpoint, gossip membership, the directory
//! entries placed on it, and the fetch path that brings chunks from peers
//! (verified, stored, then served on to others).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use strata_net::quinn::Endpoint;
use strata_net::Pool;
use strata_store::{ImageId, LayerId, Store, StoreError};
use strata_tls::Identity;
use strata_types::ChunkId;

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

mod announce;
mod fetcher;
mod pull;

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
}

/// Beyond a flight's deadline, how long a caller waits for its outcome.
pub(crate) const FLIGHT_MARGIN: Duration = Duration::from_millis(500);
/// How long a peer that failed is asked after the others.
/// Directory entries outlive this many missed announcements.
const TTL_INTERVALS: u32 = 3;

/// A directory key: a LayerId's bytes, or [`name_key`] of an image name.
type Key = [u8; 32];

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
