//! Ids the tests use: member `i` and chunk `i`.

use strata_types::{ChunkId, NodeId};

pub fn node(i: u32) -> NodeId {
    NodeId::of(format!("node-{i}").as_bytes())
}

pub fn chunk(i: u32) -> ChunkId {
    ChunkId::of(&i.to_le_bytes())
}
