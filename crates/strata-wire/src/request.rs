use prost::Message;
use strata_proto::v1::{request, Announce, FetchChunks, FetchLayerIndex, Lookup, Request, ResolveImage};
use strata_types::{ChunkId, LayerId, NodeId};

use crate::WireError;

/// The protocol version this node speaks.
pub const VERSION: u32 = 1;
/// Most ids or keys one request may carry.
pub const MAX_KEYS: usize = 1024;
const MAX_REFERENCE: usize = 1024;

/// A request as a server acts on it: ids checked and typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    FetchChunks(Vec<ChunkId>),
    FetchLayerIndex(LayerId),
    ResolveImage(String),
    Announce {
        node: NodeId,
        layers: Vec<LayerId>,
        chunks: Vec<ChunkId>,
    },
    /// Keys are LayerIds or ChunkIds, by their 32 bytes.
    Lookup(Vec<[u8; 32]>),
}

/// Decodes and checks the request frame that opens a stream.
pub fn decode_request(frame: &[u8]) -> Result<PeerRequest, WireError> {
    let request = Request::decode(frame).map_err(|e| WireError::BadFrame(e.to_string()))?;
    if request.version != VERSION {
        return Err(WireError::UnknownVersion(request.version));
    }
    match request.kind.ok_or(WireError::UnknownRequest)? {
        request::Kind::FetchChunks(f) => Ok(PeerRequest::FetchChunks(ids(&f.ids, "chunk ids")?)),
        request::Kind::FetchLayerIndex(f) => Ok(PeerRequest::FetchLayerIndex(id(&f.layer)?)),
        request::Kind::ResolveImage(r) => {
            if r.reference.is_empty() || r.reference.len() > MAX_REFERENCE {
                return Err(WireError::BadFrame(format!("image reference of {} bytes", r.reference.len())));
            }
            Ok(PeerRequest::ResolveImage(r.reference))
        }
        request::Kind::Announce(a) => {
            if a.layers.len() + a.chunks.len() > MAX_KEYS {
                let count = a.layers.len() + a.chunks.len();
                return Err(WireError::OverLimit { what: "announced keys", count, max: MAX_KEYS });
            }
            Ok(PeerRequest::Announce {
                node: id(&a.node)?,
                layers: ids(&a.layers, "layers")?,
                chunks: ids(&a.chunks, "chunks")?,
            })
        }
        request::Kind::Lookup(l) => {
            let keys: Vec<ChunkId> = ids(&l.keys, "lookup keys")?;
            Ok(PeerRequest::Lookup(keys.iter().map(|k| *k.as_bytes()).collect()))
        }
    }
}

/// The request frame for `request`.
pub fn encode_request(request: &PeerRequest) -> Result<Vec<u8>, WireError> {
    let bytes = |v: &[ChunkId]| v.iter().map(|i| i.as_bytes().to_vec()).collect();
    let kind = match request {
        PeerRequest::FetchChunks(ids) => request::Kind::FetchChunks(FetchChunks { ids: bytes(ids) }),
        PeerRequest::FetchLayerIndex(layer) => {
            request::Kind::FetchLayerIndex(FetchLayerIndex { layer: layer.as_bytes().to_vec() })
        }
        PeerRequest::ResolveImage(reference) => {
            request::Kind::ResolveImage(ResolveImage { reference: reference.clone() })
        }
        PeerRequest::Announce { node, layers, chunks } => request::Kind::Announce(Announce {
            node: node.as_bytes().to_vec(),
            layers: layers.iter().map(|l| l.as_bytes().to_vec()).collect(),
            chunks: bytes(chunks),
        }),
        PeerRequest::Lookup(keys) => {
            request::Kind::Lookup(Lookup { keys: keys.iter().map(|k| k.to_vec()).collect() })
        }
    };
    crate::encode_frame(&Request { version: VERSION, kind: Some(kind) })
}

fn id<T: From<[u8; 32]>>(raw: &[u8]) -> Result<T, WireError> {
    let bytes: [u8; 32] =
        raw.try_into().map_err(|_| WireError::BadFrame(format!("an id of {} bytes, not 32", raw.len())))?;
    Ok(T::from(bytes))
}

fn ids<T: From<[u8; 32]>>(raw: &[Vec<u8>], what: &'static str) -> Result<Vec<T>, WireError> {
    if raw.len() > MAX_KEYS {
        return Err(WireError::OverLimit { what, count: raw.len(), max: MAX_KEYS });
    }
    raw.iter().map(|r| id(r)).collect()
}
