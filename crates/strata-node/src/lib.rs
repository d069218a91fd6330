//! A Strata node's cluster side.
//!
//! - [`Node`]: the running node: its store, its QUIC endpoint (mutual TLS),
//!   gossip membership (`strata-membership`, SWIM by foca over QUIC datagrams),
//!   the directory entries placed on it ([`directory`]), and the fetch path:
//!   a chunk missing here is asked of the holders its layer's directory
//!   nodes name, in the order `strata_placement::plan_fetch` gives (the
//!   chunk's designated fetcher in the group first), verified against its
//!   id, stored, and from then on served to others. One fetch per chunk
//!   however many readers wait. Serving is paced by bandwidth caps
//!   ([`throttle`]); [`metrics`] counts it all for Prometheus.
//! - [`StoreHandler`]: a store served to peers without a node (chunks,
//!   layer indexes, images).
//! - [`PeerSource`]: a mount's chunk source over a fixed list of peers, for
//!   mounts made without a node; [`fetch_image`] brings an image's record
//!   and layer indexes from a peer, checked against their ids.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod directory;
pub mod fetch;
pub mod fetcher;
mod handler;
pub mod locator;
mod lookup_cache;
pub mod metrics;
mod node;
mod peer_source;
pub mod penalties;
pub mod progress;
mod remote;
pub mod throttle;

pub use directory::Holder;
pub use fetch::{FetchError, PeerFailure};
pub use fetcher::BatchOutcome;
pub use handler::{NodeHandler, StoreHandler};
pub use node::{
    chain_key, name_key, BackgroundConfig, CacheConfig, ClaimGuard, Claimed, Evicted, ImageCheck, InUse,
    JobState, JobStatus, Node, NodeConfig, NodeImages, Start, Window,
};
pub use peer_source::{Peer, PeerSource, DEFAULT_DEADLINE};
pub use remote::{fetch_image, fetch_image_then, indexes, RemoteImage, RemoteLayer};
pub use strata_membership as membership;
pub use strata_membership::{MemberState, MemberView};
pub use throttle::Caps;

/// What a node operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Net(#[from] strata_net::NetError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error("starting the node: {0}")]
    Setup(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("unavailable: chunk {id}: {source}")]
    Fetch {
        id: strata_types::ChunkId,
        #[source]
        source: fetch::FetchError,
    },
}
