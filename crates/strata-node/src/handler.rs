use std::sync::Arc;

use prost::Message;
use strata_mount::StoreSource;
use strata_net::Handler;
use strata_proto::v1::{ChunkReply, End, ImageReply, LayerIndexReply};
use strata_store::{Store, StoreError};
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

fn reply(kind: Kind) -> Response {
    Response { kind: Some(kind) }
}

fn error(code: ErrorCode, message: impl ToString) -> Response {
    reply(Kind::Error(strata_proto::v1::Error { code: code as i32, message: message.to_string() }))
}

fn end() -> Response {
    reply(Kind::End(End {}))
}

impl Handler for StoreHandler {
    fn handle(&self, request: PeerRequest) -> Vec<Response> {
        match request {
            PeerRequest::FetchChunks(ids) => {
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
                        })),
                        end(),
                    ]
                }
                Err(StoreError::NoSuchImage(name)) => vec![error(ErrorCode::NotFound, name)],
                Err(e) => vec![error(ErrorCode::Internal, e)],
            },
            PeerRequest::Announce { .. } | PeerRequest::Lookup(_) => {
                vec![error(ErrorCode::UnknownRequest, "this node keeps no directory yet")]
            }
        }
    }
}
