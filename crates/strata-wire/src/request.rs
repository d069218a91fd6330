use prost::Message;
use std::net::SocketAddr;
use strata_proto::v1::{
    request, Announce, Claim, FetchChunks, FetchLayerIndex, ListImages, Lookup, OfferProfile, Request,
    ResolveImage,
};

use strata_types::{ChunkId, ImageId, LayerId, MAX_PROFILE_CHUNKS};

use crate::WireError;

/// The protocol version this node speaks.
pub const VERSION: u32 = 1;
/// Most ids or keys one request may carry.
pub const MAX_KEYS: usize = 1024;
const MAX_REFERENCE: usize = 1024;
const MAX_NODE_NAME: usize = 253;

/// Whether chunks are wanted by a read that waits for them or ahead of
/// reads (wire: `FetchChunks.prefetch`). Servers answer demand first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Read-ahead, a startup profile's prefetch, background fetching.
    Prefetch,
    /// A read is waiting.
    #[default]
    Demand,
}

/// A request as a server acts on it: ids checked and typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    FetchChunks(Vec<ChunkId>, Priority),
    /// FetchChunks with `relay` set: chunks the server lacks it fetches from
    /// their complete holders on the asker's behalf.
    RelayChunks(Vec<ChunkId>, Priority),
    FetchLayerIndex(LayerId),
    /// An image by name, id or id prefix; with `with_layer_indexes`, its layer
    /// indexes follow its record in the same reply, zstd-compressed where
    /// that is smaller if `zstd_indexes` ([`crate::compress_index`]).
    ResolveImage {
        reference: String,
        with_layer_indexes: bool,
        zstd_indexes: bool,
    },
    /// Answered, for its partial keys, with their holders.
    Announce(Announcement),
    /// Keys are LayerIds or ChunkIds, by their 32 bytes.
    Lookup(Vec<[u8; 32]>),
    /// A startup profile recorded for an image.
    OfferProfile {
        image: ImageId,
        chunks: Vec<ChunkId>,
    },
    /// The right to fetch what a key names from outside the cluster (an
    /// image from its registry) on the cluster's behalf, asked of the
    /// key's first directory node; renewed by asking again.
    Claim(ClaimRequest),
    /// The images the node holds (`strata images --cluster`).
    ListImages,
}

/// A claim on a key, or its release (wire: `Claim`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub key: [u8; 32],
    /// The asker, by its node name and QUIC address.
    pub node: String,
    pub addr: SocketAddr,
    /// Gives the claim up rather than asking for it.
    pub release: bool,
}

/// What a holder tells a directory node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub node: String,
    pub addr: SocketAddr,
    /// Keys held whole.
    pub complete: Vec<[u8; 32]>,
    /// Layers being fetched.
    pub partial: Vec<[u8; 32]>,
}

/// Decodes and checks the request frame that opens a stream.
pub fn decode_request(frame: &[u8]) -> Result<PeerRequest, WireError> {
    let request = Request::decode(frame).map_err(|e| WireError::BadFrame(e.to_string()))?;
    if request.version != VERSION {
        return Err(WireError::UnknownVersion(request.version));
    }
    match request.kind.ok_or(WireError::UnknownRequest)? {
        request::Kind::FetchChunks(f) => {
            let priority = if f.prefetch { Priority::Prefetch } else { Priority::Demand };
            let ids = ids(&f.ids, "chunk ids")?;
            Ok(if f.relay {
                PeerRequest::RelayChunks(ids, priority)
            } else {
                PeerRequest::FetchChunks(ids, priority)
            })
        }
        request::Kind::FetchLayerIndex(f) => Ok(PeerRequest::FetchLayerIndex(id(&f.layer)?)),
        request::Kind::ResolveImage(r) => {
            if r.reference.is_empty() || r.reference.len() > MAX_REFERENCE {
                return Err(WireError::BadFrame(format!("image reference of {} bytes", r.reference.len())));
            }
            Ok(PeerRequest::ResolveImage {
                reference: r.reference,
                with_layer_indexes: r.with_layer_indexes,
                zstd_indexes: r.zstd_indexes,
            })
        }
        request::Kind::Announce(a) => {
            let count = a.complete.len() + a.partial.len();
            if count > MAX_KEYS {
                return Err(WireError::OverLimit { what: "announced keys", count, max: MAX_KEYS });
            }
            let node = node_name(a.node)?;
            let addr = a.addr.parse().map_err(|_| WireError::BadFrame(format!("address {:?}", a.addr)))?;
            Ok(PeerRequest::Announce(Announcement {
                node,
                addr,
                complete: keys(&a.complete, "complete keys")?,
                partial: keys(&a.partial, "partial keys")?,
            }))
        }
        request::Kind::Lookup(l) => Ok(PeerRequest::Lookup(keys(&l.keys, "lookup keys")?)),
        request::Kind::Claim(c) => Ok(PeerRequest::Claim(ClaimRequest {
            key: id(&c.key)?,
            node: node_name(c.node)?,
            addr: c.addr.parse().map_err(|_| WireError::BadFrame(format!("address {:?}", c.addr)))?,
            release: c.release,
        })),
        request::Kind::OfferProfile(o) => {
            Ok(PeerRequest::OfferProfile { image: id(&o.image_id)?, chunks: profile(&o.chunks)? })
        }
        request::Kind::ListImages(ListImages {}) => Ok(PeerRequest::ListImages),
    }
}

/// The request frame for `request`.
pub fn encode_request(request: &PeerRequest) -> Result<Vec<u8>, WireError> {
    let bytes = |v: &[ChunkId]| v.iter().map(|i| i.as_bytes().to_vec()).collect();
    let kind = match request {
        PeerRequest::FetchChunks(ids, priority) => request::Kind::FetchChunks(FetchChunks {
            ids: bytes(ids),
            relay: false,
            prefetch: *priority == Priority::Prefetch,
        }),
        PeerRequest::RelayChunks(ids, priority) => request::Kind::FetchChunks(FetchChunks {
            ids: bytes(ids),
            relay: true,
            prefetch: *priority == Priority::Prefetch,
        }),
        PeerRequest::FetchLayerIndex(layer) => {
            request::Kind::FetchLayerIndex(FetchLayerIndex { layer: layer.as_bytes().to_vec() })
        }
        PeerRequest::ResolveImage { reference, with_layer_indexes, zstd_indexes } => {
            request::Kind::ResolveImage(ResolveImage {
                reference: reference.clone(),
                with_layer_indexes: *with_layer_indexes,
                zstd_indexes: *zstd_indexes,
            })
        }
        PeerRequest::Announce(a) => request::Kind::Announce(Announce {
            node: a.node.clone(),
            addr: a.addr.to_string(),
            complete: a.complete.iter().map(|k| k.to_vec()).collect(),
            partial: a.partial.iter().map(|k| k.to_vec()).collect(),
        }),
        PeerRequest::Lookup(keys) => {
            request::Kind::Lookup(Lookup { keys: keys.iter().map(|k| k.to_vec()).collect() })
        }
        PeerRequest::OfferProfile { image, chunks } => request::Kind::OfferProfile(OfferProfile {
            image_id: image.as_bytes().to_vec(),
            chunks: strata_types::encode_chunk_list(chunks),
        }),
        PeerRequest::Claim(c) => request::Kind::Claim(Claim {
            key: c.key.to_vec(),
            node: c.node.clone(),
            addr: c.addr.to_string(),
            release: c.release,
        }),
        PeerRequest::ListImages => request::Kind::ListImages(ListImages {}),
    };
    crate::encode_frame(&Request { version: VERSION, kind: Some(kind) })
}

fn node_name(name: String) -> Result<String, WireError> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(WireError::BadFrame(format!("a node name of {} bytes", name.len())));
    }
    Ok(name)
}

fn id<T: From<[u8; 32]>>(raw: &[u8]) -> Result<T, WireError> {
    let bytes: [u8; 32] =
        raw.try_into().map_err(|_| WireError::BadFrame(format!("an id of {} bytes, not 32", raw.len())))?;
    Ok(T::from(bytes))
}

fn keys(raw: &[Vec<u8>], what: &'static str) -> Result<Vec<[u8; 32]>, WireError> {
    ids::<[u8; 32]>(raw, what)
}

fn ids<T: From<[u8; 32]>>(raw: &[Vec<u8>], what: &'static str) -> Result<Vec<T>, WireError> {
    if raw.len() > MAX_KEYS {
        return Err(WireError::OverLimit { what, count: raw.len(), max: MAX_KEYS });
    }
    raw.iter().map(|r| id(r)).collect()
}

/// A startup profile's chunk ids (32 bytes each, at most MAX_PROFILE_CHUNKS).
pub fn profile(raw: &[u8]) -> Result<Vec<ChunkId>, WireError> {
    if raw.len() / 32 > MAX_PROFILE_CHUNKS {
        return Err(WireError::OverLimit {
            what: "profile chunks",
            count: raw.len() / 32,
            max: MAX_PROFILE_CHUNKS,
        });
    }
    strata_types::decode_chunk_list(raw, MAX_PROFILE_CHUNKS)
        .ok_or_else(|| WireError::BadFrame(format!("a profile of {} bytes, not a multiple of 32", raw.len())))
}
