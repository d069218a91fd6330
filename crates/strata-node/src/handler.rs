use std::sync::Arc;

use prost::Message;
use strata_net::Handler;
use strata_proto::v1::{
    ChunkReply, End, Holder as ProtoHolder, Holders, ImageReply, LayerIndexReply, LookupReply,
};
use strata_store::StoreSource;
use strata_store::{Store, StoreError};
use strata_types::ChunkId;
use strata_wire::response::Kind;
use strata_wire::{ErrorCode, PeerRequest, Response};

/// Serves chunks, layer indexes and images from a store.
pub struct StoreHandler {
    store: Backing,
}

/// A store this process owns, or a read-only view beside another process's
/// writer (reopened when the writer's compaction removes a file it named).
enum Backing {
    Owned(Arc<Store>),
    View(Arc<StoreSource>),
}

impl Backing {
    fn read<T>(&self, read: impl Fn(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self {
            Backing::Owned(store) => read(store),
            Backing::View(view) => view.with_store(read),
        }
    }
}

impl StoreHandler {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store: Backing::Owned(store) }
    }

    pub fn from_view(view: Arc<StoreSource>) -> Self {
        Self { store: Backing::View(view) }
    }
}

pub(crate) fn reply(kind: Kind) -> Response {
    Response { kind: Some(kind) }
}

pub(crate) fn error(code: ErrorCode, message: impl ToString) -> Response {
    reply(Kind::Error(strata_proto::v1::Error { code: code as i32, message: message.to_string() }))
}

pub(crate) fn end() -> Response {
    reply(Kind::End(End {}))
}

impl Handler for StoreHandler {
    fn handle(&self, _from: std::net::SocketAddr, request: PeerRequest) -> Vec<Response> {
        match request {
            PeerRequest::FetchChunks(ids) | PeerRequest::RelayChunks(ids) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                for id in ids {
                    match self.store.read(|s| s.get_stored_chunk(&id)) {
                        Ok(stored) => out.push(reply(Kind::Chunk(ChunkReply {
                            id: id.as_bytes().to_vec(),
                            missing: stored.is_none(),
                            stored: stored.unwrap_or_default(),
                        }))),
                        Err(e) => {
                            out.push(error(ErrorCode::Internal, e));
                            return out;
                        }
                    }
                }
                out.push(end());
                out
            }
            PeerRequest::FetchLayerIndex(layer) => {
                match (self.store.read(|s| s.layer_index(&layer)), self.store.read(|s| s.layer(&layer))) {
                    (Ok(index), Ok(record)) => {
                        vec![
                            reply(Kind::LayerIndex(LayerIndexReply { index: index.encode_to_vec(), record })),
                            end(),
                        ]
                    }
                    (Err(StoreError::MissingLayer(_)), _) => {
                        vec![error(ErrorCode::NotFound, layer)]
                    }
                    (Err(e), _) | (_, Err(e)) => vec![error(ErrorCode::Internal, e)],
                }
            }
            PeerRequest::ResolveImage(reference) => match self.store.read(|s| s.resolve(&reference)) {
                Ok((id, record)) => {
                    vec![
                        reply(Kind::Image(ImageReply {
                            image_id: id.as_bytes().to_vec(),
                            record: Some(record),
                            startup_profile: self
                                .store
                                .read(|s| s.profile(&id))
                                .ok()
                                .flatten()
                                .map(|p| strata_types::encode_chunk_list(&p))
                                .unwrap_or_default(),
                        })),
                        end(),
                    ]
                }
                Err(StoreError::NoSuchImage(name)) => vec![error(ErrorCode::NotFound, name)],
                Err(e) => vec![error(ErrorCode::Internal, e)],
            },
            PeerRequest::Announce { .. } | PeerRequest::Lookup(_) => {
                vec![error(ErrorCode::UnknownRequest, "this node keeps no directory")]
            }
            PeerRequest::OfferProfile { .. } => {
                vec![error(ErrorCode::UnknownRequest, "this node keeps no startup profiles")]
            }
        }
    }
}

/// A running node's answers to peers: chunks (relayed when asked and
/// lacking), directory announcements and lookups, gossip datagrams; indexes
/// and images as [`StoreHandler`] serves them. Replies are paced by the
/// node's bandwidth caps.
pub struct NodeHandler {
    node: std::sync::Weak<crate::Node>,
    store: StoreHandler,
}

impl NodeHandler {
    pub(crate) fn new(node: std::sync::Weak<crate::Node>, store: Arc<Store>) -> Self {
        Self { node, store: StoreHandler::new(store) }
    }

    fn chunks(
        &self,
        node: &Arc<crate::Node>,
        from: std::net::SocketAddr,
        ids: Vec<ChunkId>,
        relay: bool,
    ) -> Vec<Response> {
        let mut out = Vec::with_capacity(ids.len() + 1);
        let mut bytes = 0u64;
        for id in ids {
            let stored = match node.store().get_stored_chunk(&id) {
                Ok(Some(stored)) => Some(stored),
                Ok(None) if relay => {
                    // This node is the chunk's designated fetcher for the group.
                    // Bounded like a fetch of the node's own: the flight
                    // it joins may be a prefetch's, with a longer deadline.
                    let deadline = node.fetch_deadline();
                    let relayed = node.runtime().block_on(async {
                        tokio::time::timeout(
                            deadline + crate::node::FLIGHT_MARGIN,
                            node.single_flight(id, false, deadline),
                        )
                        .await
                        .unwrap_or(Err(crate::FetchError::Deadline(deadline)))
                    });
                    match relayed {
                        Ok(stored) => {
                            node.metrics.relays_served.inc();
                            Some(stored.as_ref().clone())
                        }
                        Err(reason) => {
                            tracing::debug!(chunk = %id, %reason, "relay failed");
                            None
                        }
                    }
                }
                Ok(None) => None,
                Err(e) => {
                    out.push(error(ErrorCode::Internal, e));
                    return out;
                }
            };
            #[cfg(feature = "fault-injection")]
            let stored = stored.map(corrupt_if_asked);
            if let Some(s) = &stored {
                bytes += s.len() as u64;
                node.metrics.chunks_served.inc();
                node.metrics.chunk_bytes_served.inc_by(s.len() as u64);
            }
            out.push(reply(Kind::Chunk(ChunkReply {
                id: id.as_bytes().to_vec(),
                missing: stored.is_none(),
                stored: stored.unwrap_or_default(),
            })));
        }
        let wait = node.throttle.delay(from, bytes, std::time::Instant::now());
        if !wait.is_zero() {
            node.metrics.throttle_waits.inc();
            // A blocking-pool thread: the wait holds back this reply only.
            std::thread::sleep(wait);
        }
        out.push(end());
        out
    }
}

impl Handler for NodeHandler {
    fn handle(&self, from: std::net::SocketAddr, request: PeerRequest) -> Vec<Response> {
        let Some(node) = self.node.upgrade() else {
            return vec![error(ErrorCode::Internal, "node stopping")];
        };
        match request {
            PeerRequest::FetchChunks(ids) => self.chunks(&node, from, ids, false),
            PeerRequest::RelayChunks(ids) => self.chunks(&node, from, ids, true),
            PeerRequest::Announce(announcement) => {
                node.directory().lock().record(&announcement, std::time::Instant::now());
                vec![end()]
            }
            PeerRequest::Lookup(keys) => {
                let now = std::time::Instant::now();
                let directory = node.directory().lock();
                let holders = keys
                    .iter()
                    .map(|key| Holders {
                        key: key.to_vec(),
                        holders: directory
                            .holders(key, now)
                            .into_iter()
                            .map(|h| ProtoHolder {
                                node: h.node,
                                addr: h.addr.to_string(),
                                complete: h.complete,
                            })
                            .collect(),
                    })
                    .collect();
                vec![reply(Kind::Lookup(LookupReply { holders })), end()]
            }
            PeerRequest::OfferProfile { image, chunks } => match node.keep_profile(image, &chunks) {
                Ok(_) => vec![end()],
                Err(e) => vec![error(ErrorCode::Internal, e)],
            },
            other => self.store.handle(from, other),
        }
    }

    fn datagram(&self, _from: std::net::SocketAddr, data: bytes::Bytes) {
        if let Some(node) = self.node.upgrade() {
            node.receive_gossip(data);
        }
    }
}

/// Fault injection for tests: with STRATA_FAULT_CORRUPT_CHUNKS set, every
/// chunk this node serves has its last byte flipped.
#[cfg(feature = "fault-injection")]
fn corrupt_if_asked(mut stored: Vec<u8>) -> Vec<u8> {
    if std::env::var_os("STRATA_FAULT_CORRUPT_CHUNKS").is_some() {
        if let Some(last) = stored.last_mut() {
            *last ^= 0xff;
        }
    }
    stored
}
