use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;
use strata_chunk::ChunkDecoder;
use strata_net::quinn::{Connection, Endpoint};
use strata_store::{ChunkSource, SourceError};
use strata_types::ChunkId;
use strata_wire::response::Kind;
use strata_wire::PeerRequest;

use crate::penalties::Penalties;

/// A peer to fetch from: its address and, if known, its node name.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub name: Option<String>,
}

/// How long a fetch may take, all peers together, unless set otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Chunks from peers, tried in order. Every chunk is decoded and checked
/// against its id before it is returned; a peer that sends bytes that do not
/// match, or fails, is skipped for the rest of this fetch and the next one
/// is asked. A fetch never outlives its deadline: each peer gets an equal
/// share of the time left, so a silent peer costs its share and the next is
/// asked; when none answers in time the fetch fails, naming the peers tried.
pub struct PeerSource {
    runtime: tokio::runtime::Handle,
    endpoint: Endpoint,
    peers: Vec<Peer>,
    deadline: Duration,
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// Peers that lied, failed or stayed silent, and since when: asked last
    /// for a while.
    penalties: Penalties,
    /// Chunks a read could not get, when and why: asked for again within
    /// [`crate::fetcher::UNAVAILABLE_MEMORY`], they fail at once (the
    /// kernel reads a page again right after its read-ahead failed).
    unavailable: Mutex<HashMap<ChunkId, (std::time::Instant, String)>>,
}

impl PeerSource {
    pub fn new(runtime: tokio::runtime::Handle, endpoint: Endpoint, peers: Vec<Peer>) -> Self {
        Self {
            runtime,
            endpoint,
            peers,
            deadline: DEFAULT_DEADLINE,
            connections: Mutex::new(HashMap::new()),
            penalties: Penalties::default(),
            unavailable: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The peers in the order to ask them: those in good standing first.
    fn order(&self) -> Vec<Peer> {
        let penalised = self.penalties.penalised(std::time::Instant::now());
        let mut order = self.peers.clone();
        order.sort_by_key(|p| penalised.contains(&p.addr));
        order
    }

    fn penalise(&self, peer: &Peer) {
        self.penalties.penalise(peer.addr, std::time::Instant::now());
        self.connections.lock().remove(&peer.addr);
    }

    async fn connection(&self, peer: &Peer) -> Result<Connection, String> {
        if let Some(c) = self.connections.lock().get(&peer.addr).filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let connection = strata_net::connect(&self.endpoint, peer.addr, peer.name.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        self.connections.lock().insert(peer.addr, connection.clone());
        Ok(connection)
    }

    async fn fetch_from(
        &self,
        peer: &Peer,
        id: &ChunkId,
        priority: strata_wire::Priority,
    ) -> Result<Option<Vec<u8>>, String> {
        let connection = self.connection(peer).await?;
        let replies = strata_net::request(&connection, &PeerRequest::FetchChunks(vec![*id], priority))
            .await
            .map_err(|e| e.to_string())?;
        match replies.first().and_then(|r| r.kind.as_ref()) {
            Some(Kind::Chunk(c)) if c.id == id.as_bytes() && c.missing => Ok(None),
            Some(Kind::Chunk(c)) if c.id == id.as_bytes() => {
                let mut decoder = ChunkDecoder::new().map_err(|e| e.to_string())?;
                decoder.decode(id, &c.stored).map(Some).map_err(|e| format!("sent bad bytes: {e}"))
            }
            Some(Kind::Error(e)) => Err(format!("error {}: {}", e.code, e.message)),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}

impl ChunkSource for PeerSource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        let memory = crate::fetcher::UNAVAILABLE_MEMORY;
        if let Some((when, reason)) = self.unavailable.lock().get(id) {
            if when.elapsed() < memory {
                return Err(SourceError::Failed { id: *id, reason: reason.clone() });
            }
        }
        let result = self.fetch_as(id, strata_wire::Priority::Demand);
        if let Err(SourceError::Failed { reason, .. }) = &result {
            let mut unavailable = self.unavailable.lock();
            unavailable.retain(|_, (when, _)| when.elapsed() < memory);
            unavailable.insert(*id, (std::time::Instant::now(), reason.clone()));
        }
        result
    }

    fn fetch_ahead(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.fetch_as(id, strata_wire::Priority::Prefetch)
    }
}

impl PeerSource {
    fn fetch_as(&self, id: &ChunkId, priority: strata_wire::Priority) -> Result<Vec<u8>, SourceError> {
        self.runtime.block_on(async {
            let until = tokio::time::Instant::now() + self.deadline;
            let mut tried = Vec::new();
            let order = self.order();
            for (i, peer) in order.iter().enumerate() {
                // Each peer gets an equal share of the time left, so a silent
                // one costs a retry elsewhere, not the whole deadline.
                let share = until.saturating_duration_since(tokio::time::Instant::now()) / (order.len() - i) as u32;
                match tokio::time::timeout(share, self.fetch_from(peer, id, priority)).await {
                    Ok(Ok(Some(bytes))) => return Ok(bytes),
                    Ok(Ok(None)) => tried.push(format!("{} (does not hold it)", peer.addr)),
                    Ok(Err(reason)) => {
                        tracing::warn!(chunk = %id, peer = %peer.addr, reason, "peer failed; trying the next");
                        self.penalise(peer);
                        tried.push(format!("{} ({reason})", peer.addr));
                    }
                    Err(_) => {
                        self.penalise(peer);
                        tracing::warn!(chunk = %id, peer = %peer.addr, ?share, "peer silent; trying the next");
                        tried.push(format!("{} (no answer within {share:?} of the {:?} deadline)", peer.addr, self.deadline));
                    }
                }
            }
            let reason = format!("no peer gave it; tried {}", tried.join(", "));
            tracing::warn!(chunk = %id, reason, "chunk unavailable");
            Err(SourceError::Failed { id: *id, reason })
        })
    }
}
