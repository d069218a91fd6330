use std::net::SocketAddr;
use std::sync::Arc;

use strata_net::{Answering, Handler, NetError, Replies};
use strata_proto::v1::{ChunkReply, End, ImageReply, LayerIndexReply};
use strata_store::StoreSource;
use strata_store::{ImageId, ImageRecord, Store, StoreError};
use strata_types::{ChunkId, LayerId};
use strata_wire::response::Kind;
use strata_wire::{ErrorCode, PeerRequest, Priority, Response};

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::throttle::Pace;

/// Serves chunks, layer indexes and images from a store.
pub struct StoreHandler {
    store: Backing,
    /// Layer indexes as last sent compressed (an index never changes: its
    /// id is its hash), so that nodes starting one image together cost
    /// one compression; empty where compressing did not shrink it.
    compressed: Arc<Cache<LayerId, Arc<Vec<u8>>, ByLength>>,
}

/// Bytes of compressed layer indexes kept ([`StoreHandler`]): python's
/// come to well under a MiB.
const COMPRESSED_INDEX_CACHE: u64 = 32 << 20;

#[derive(Clone)]
struct ByLength;

impl Weighter<LayerId, Arc<Vec<u8>>> for ByLength {
    fn weight(&self, _key: &LayerId, value: &Arc<Vec<u8>>) -> u64 {
        value.len().max(1) as u64
    }
}

/// A store this process owns, or a read-only view beside another process's
/// writer (reopened when the writer's compaction removes a file it named).
#[derive(Clone)]
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

    /// [`read`](Self::read) on the blocking pool: store reads may wait on disk.
    async fn read_async<T: Send + 'static>(
        &self,
        read: impl Fn(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read(read))
            .await
            .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("a store read panicked: {e}"))))
    }
}

impl StoreHandler {
    pub fn new(store: Arc<Store>) -> Self {
        Self::with(Backing::Owned(store))
    }

    pub fn from_view(view: Arc<StoreSource>) -> Self {
        Self::with(Backing::View(view))
    }

    fn with(store: Backing) -> Self {
        let compressed = Cache::with_weighter(64, COMPRESSED_INDEX_CACHE, ByLength);
        Self { store, compressed: Arc::new(compressed) }
    }

    /// Chunks as stored, one reply frame each, then `End`.
    async fn chunks(&self, ids: Vec<ChunkId>, replies: &mut Replies) -> Result<(), NetError> {
        for id in ids {
            match self.store.read_async(move |s| s.get_stored_chunk(&id)).await {
                Ok(stored) => replies.send(&chunk_reply(&id, stored)).await?,
                Err(e) => return replies.send(&error(ErrorCode::Internal, e)).await,
            }
        }
        replies.send(&end()).await
    }

    /// The reply to anything but chunks, whole (an index, an image, an error).
    async fn metadata(&self, request: PeerRequest) -> Vec<Response> {
        match request {
            PeerRequest::FetchLayerIndex(layer) => {
                let read = self
                    .store
                    .read_async(move |s| Ok((s.layer_index_bytes(&layer)?, s.layer(&layer)?)))
                    .await;
                match read {
                    Ok((index, Some(record))) => {
                        let found = LayerIndexReply { index, record: Some(record), index_zstd: Vec::new() };
                        vec![reply(Kind::LayerIndex(found)), end()]
                    }
                    Ok((_, None)) | Err(StoreError::MissingLayer(_)) => {
                        vec![error(ErrorCode::NotFound, layer)]
                    }
                    Err(e) => vec![error(ErrorCode::Internal, e)],
                }
            }
            PeerRequest::ResolveImage { reference, .. } => {
                let read = self
                    .store
                    .read_async(move |s| {
                        let (id, record) = resolve(s, &reference)?;
                        let profile = s.profile(&id).ok().flatten();
                        Ok((id, record, profile))
                    })
                    .await;
                match read {
                    Ok((id, record, profile)) => vec![
                        reply(Kind::Image(ImageReply {
                            image_id: id.as_bytes().to_vec(),
                            record: Some(record),
                            startup_profile: profile
                                .map(|p| strata_types::encode_chunk_list(&p))
                                .unwrap_or_default(),
                        })),
                        end(),
                    ],
                    Err(StoreError::NoSuchImage { reference: name, .. }) => {
                        vec![error(ErrorCode::NotFound, name)]
                    }
                    Err(e) => vec![error(ErrorCode::Internal, e)],
                }
            }
            PeerRequest::Announce { .. } | PeerRequest::Lookup(_) | PeerRequest::Claim(_) => {
                vec![error(ErrorCode::UnknownRequest, "this node keeps no directory")]
            }
            PeerRequest::OfferProfile { .. } => {
                vec![error(ErrorCode::UnknownRequest, "this node keeps no startup profiles")]
            }
            PeerRequest::ListImages => match self.store.read_async(list_images).await {
                Ok(list) => vec![reply(Kind::ImageList(list)), end()],
                Err(e) => vec![error(ErrorCode::Internal, e)],
            },
            PeerRequest::FetchChunks(..) | PeerRequest::RelayChunks(..) => {
                vec![error(ErrorCode::Internal, "chunks are streamed, not answered whole")]
            }
        }
    }
}

/// Names listed in one [`ImageList`] at most: with names of up to 256
/// bytes, the reply stays well under a frame (4 MiB).
pub const MAX_LISTED_IMAGES: usize = 8192;

/// The store's image names for [`PeerRequest::ListImages`], sorted.
pub(crate) fn list_images(store: &Store) -> Result<strata_proto::v1::ImageList, StoreError> {
    let entries = store.images()?;
    let truncated = entries.len() > MAX_LISTED_IMAGES;
    let mut sizes: std::collections::HashMap<strata_types::ImageId, u64> = std::collections::HashMap::new();
    let mut images = Vec::new();
    for entry in entries.into_iter().take(MAX_LISTED_IMAGES) {
        let size = match sizes.get(&entry.id) {
            Some(size) => *size,
            None => {
                let mut size = 0;
                for raw in &entry.record.layers {
                    let Ok(layer) = LayerId::from_slice(raw) else { continue };
                    size += store.layer(&layer)?.map_or(0, |l| l.content_bytes);
                }
                sizes.insert(entry.id, size);
                size
            }
        };
        images.push(strata_proto::v1::ListedImage {
            name: entry.name,
            image_id: entry.id.as_bytes().to_vec(),
            layers: entry.record.layers.len() as u32,
            size,
        });
    }
    Ok(strata_proto::v1::ImageList { images, truncated })
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

fn chunk_reply(id: &ChunkId, stored: Option<Vec<u8>>) -> Response {
    reply(Kind::Chunk(ChunkReply {
        id: id.as_bytes().to_vec(),
        missing: stored.is_none(),
        stored: stored.unwrap_or_default(),
    }))
}

impl StoreHandler {
    /// The reply to anything but chunks, sent. An image asked for with its
    /// layer indexes goes frame by frame: its record, then each distinct
    /// layer's index this store holds (in the record's order; the asker
    /// asks for any left out on its own), then `End`, one index in memory
    /// at a time.
    async fn answer(&self, request: PeerRequest, replies: &mut Replies) -> Result<(), NetError> {
        let PeerRequest::ResolveImage { reference, with_layer_indexes: true, zstd_indexes } = request else {
            return replies.send_all(&self.metadata(request).await).await;
        };
        let image = self
            .metadata(PeerRequest::ResolveImage { reference, with_layer_indexes: false, zstd_indexes: false })
            .await;
        let layers = match image.first().and_then(|r| r.kind.as_ref()) {
            Some(Kind::Image(ImageReply { record: Some(record), .. })) => record.layers.clone(),
            _ => return replies.send_all(&image).await,
        };
        // The record; its End follows the indexes.
        replies.send(&image[0]).await?;
        let mut sent = std::collections::HashSet::new();
        for raw in layers {
            let Ok(layer) = LayerId::from_slice(&raw) else { continue };
            if !sent.insert(layer) {
                continue;
            }
            // Read and compressed on the blocking pool (a few ms per MiB).
            let cache = self.compressed.clone();
            let read = self
                .store
                .read_async(move |s| {
                    let record = s.layer(&layer)?;
                    let compressed = match (zstd_indexes, cache.get(&layer)) {
                        (false, _) => None,
                        (true, Some(kept)) => Some(kept),
                        (true, None) => {
                            let index = s.layer_index_bytes(&layer)?;
                            let kept = Arc::new(strata_wire::compress_index(&index).unwrap_or_default());
                            cache.insert(layer, kept.clone());
                            Some(kept)
                        }
                    };
                    // Empty: compressing did not shrink it.
                    Ok(match compressed.filter(|c| !c.is_empty()) {
                        Some(kept) => {
                            LayerIndexReply { index: Vec::new(), record, index_zstd: kept.to_vec() }
                        }
                        None => LayerIndexReply {
                            index: s.layer_index_bytes(&layer)?,
                            record,
                            index_zstd: Vec::new(),
                        },
                    })
                })
                .await;
            if let Ok(found @ LayerIndexReply { record: Some(_), .. }) = read {
                replies.send(&reply(Kind::LayerIndex(found))).await?;
            }
        }
        replies.send(&end()).await
    }
}

impl Handler for StoreHandler {
    fn handle<'a>(
        &'a self,
        _from: SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        Box::pin(async move {
            match request {
                PeerRequest::FetchChunks(ids, _) | PeerRequest::RelayChunks(ids, _) => {
                    self.chunks(ids, replies).await
                }
                other => self.answer(other, replies).await,
            }
        })
    }
}

/// QUIC stream priority of demand replies over prefetch ones.
fn stream_priority(priority: Priority) -> i32 {
    match priority {
        Priority::Demand => strata_net::DEMAND_PRIORITY,
        Priority::Prefetch => strata_net::PREFETCH_PRIORITY,
    }
}

/// A running node's answers to peers: chunks (relayed when asked and
/// lacking), directory announcements and lookups, gossip datagrams; indexes
/// and images as [`StoreHandler`] serves them. Chunk replies stream one
/// frame per chunk, each paced by the node's bandwidth caps on a tokio
/// timer; demand replies go first (stream priority, and the caps' budget:
/// `throttle`).
pub struct NodeHandler {
    node: std::sync::Weak<crate::Node>,
    store: StoreHandler,
}

impl NodeHandler {
    pub(crate) fn new(node: std::sync::Weak<crate::Node>, store: Arc<Store>) -> Self {
        Self { node, store: StoreHandler::new(store) }
    }

    async fn chunks(
        &self,
        node: &Arc<crate::Node>,
        from: SocketAddr,
        ids: Vec<ChunkId>,
        relay: bool,
        priority: Priority,
        replies: &mut Replies,
    ) -> Result<(), NetError> {
        replies.set_priority(stream_priority(priority));
        if relay && ids.len() > 1 {
            // A batch relayed: the chunks this node lacks come in one batch
            // of its own (a few such at once; past that, one by one); each
            // is sent on as its flight lands.
            if let Ok(permit) = node.relay_batches.clone().try_acquire_owned() {
                let (node, ids) = (node.clone(), ids.clone());
                tokio::spawn(async move {
                    node.fetcher.fetch_batch(ids, priority, false).await;
                    drop(permit);
                });
            }
        }
        for id in ids {
            let stored = match self.store.store.read_async(move |s| s.get_stored_chunk(&id)).await {
                Ok(Some(stored)) => Some(stored),
                Ok(None) if relay => {
                    // This node is the chunk's designated fetcher for the group.
                    // Bounded like a fetch of the node's own: the flight
                    // it joins may be a prefetch's, with a longer deadline.
                    let relayed = node.fetcher.relay(id, node.fetcher.deadline(), priority).await;
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
                Err(e) => return replies.send(&error(ErrorCode::Internal, e)).await,
            };
            if let Some(s) = &stored {
                if !pace(node, from, s.len() as u64, priority, replies).await {
                    // The asker gave up: the stream and its chunk go now.
                    return Ok(());
                }
                node.metrics.chunks_served.inc();
                node.metrics.chunk_bytes_served.inc_by(s.len() as u64);
            }
            match replies.send(&chunk_reply(&id, stored)).await {
                // A chunk stored by an old version, longer than a frame
                // carries (`strata_chunk::MAX_DECODED_LEN`): said missing,
                // so the asker tries elsewhere and keeps this connection.
                Err(NetError::Wire(strata_wire::WireError::TooLarge { len, max })) => {
                    tracing::warn!(chunk = %id, len, max, "chunk too large for a reply frame: answered missing");
                    replies.send(&chunk_reply(&id, None)).await?;
                }
                other => other?,
            }
        }
        replies.send(&end()).await
    }
}

/// Waits until the bandwidth caps let `bytes` go to `from` (a tokio timer:
/// only this reply waits). A prefetch reply that has waited half a fetch
/// deadline is paced as demand from then on: it may not starve, and a read
/// that came to wait on its flight is not held up for long. Returns false,
/// at once, when the asker stops reading the reply.
async fn pace(
    node: &crate::Node,
    from: SocketAddr,
    bytes: u64,
    priority: Priority,
    replies: &Replies,
) -> bool {
    let started = tokio::time::Instant::now();
    let aged = node.fetcher.deadline() / 2;
    let mut priority = priority;
    let mut counted = false;
    let stopped = replies.stopped();
    tokio::pin!(stopped);
    loop {
        if priority == Priority::Prefetch && started.elapsed() >= aged {
            priority = Priority::Demand;
        }
        let (wait, done) = match node.throttle.pace(from, bytes, priority, std::time::Instant::now()) {
            Pace::SendAfter(wait) => (wait, true),
            Pace::RetryAfter(wait) => {
                (wait.min(aged.saturating_sub(started.elapsed())).max(MIN_RETRY), false)
            }
        };
        if !wait.is_zero() {
            if !counted {
                node.metrics.throttle_waits.inc();
                counted = true;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stopped => return false,
            }
        }
        if done {
            return true;
        }
    }
}

/// The shortest wait before a prefetch reply asks the caps again.
const MIN_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

impl Handler for NodeHandler {
    fn handle<'a>(
        &'a self,
        from: SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        Box::pin(async move {
            let Some(node) = self.node.upgrade() else {
                return replies.send(&error(ErrorCode::Internal, "node stopping")).await;
            };
            let out = match request {
                PeerRequest::FetchChunks(ids, priority) => {
                    return self.chunks(&node, from, ids, false, priority, replies).await
                }
                PeerRequest::RelayChunks(ids, priority) => {
                    return self.chunks(&node, from, ids, true, priority, replies).await
                }
                PeerRequest::Announce(announcement) => {
                    let now = std::time::Instant::now();
                    node.locator.record(&announcement, now);
                    if announcement.partial.is_empty() {
                        vec![end()]
                    } else {
                        // The group the announcer joins, in the same round trip.
                        let holders = node.locator.lookup_reply(&announcement.partial, now);
                        vec![reply(Kind::Lookup(holders)), end()]
                    }
                }
                PeerRequest::Lookup(keys) => {
                    let holders = node.locator.lookup_reply(&keys, std::time::Instant::now());
                    vec![reply(Kind::Lookup(holders)), end()]
                }
                PeerRequest::Claim(claim) => {
                    let answer = node.locator.claim_reply(&claim, std::time::Instant::now());
                    vec![reply(Kind::Claim(answer)), end()]
                }
                PeerRequest::OfferProfile { image, chunks } => {
                    let node = node.clone();
                    let kept =
                        tokio::task::spawn_blocking(move || node.keep_profile(image, &chunks).map(drop))
                            .await
                            .unwrap_or_else(|e| {
                                Err(crate::NodeError::Setup(format!("keeping a profile panicked: {e}")))
                            });
                    match kept {
                        Ok(()) => vec![end()],
                        Err(e) => vec![error(ErrorCode::Internal, e)],
                    }
                }
                other => return self.store.answer(other, replies).await,
            };
            replies.send_all(&out).await
        })
    }

    fn datagram(&self, _from: SocketAddr, data: bytes::Bytes) {
        if let Some(node) = self.node.upgrade() {
            node.locator.receive_gossip(data);
        }
    }
}

/// The image a peer asks for: by name (as given, or as docker normalises
/// it: `busybox` is `busybox:latest`) or id, or, for a chain's name
/// (`chain:sha256:<hex>`, [`strata_oci::chain_name`]), the image holding
/// that layer chain ([`strata_oci::image_by_chain`]).
fn resolve(store: &Store, reference: &str) -> Result<(ImageId, ImageRecord), StoreError> {
    let Some(chain) = strata_oci::chain_of_name(reference) else {
        return strata_oci::find_image(store, reference).map(|found| (found.id, found.record));
    };
    let missing = || StoreError::no_such_image(reference);
    let (id, _) = strata_oci::image_by_chain(store, &chain)?.ok_or_else(missing)?;
    let record = store.image(&id)?.ok_or_else(missing)?;
    Ok((id, record))
}
