//! A node's peer side: [`StoreHandler`] serves the local store to peers over
//! `strata-net`; [`PeerSource`] is the mount's chunk source that fetches
//! from peers, verifying every chunk against its id before returning it and
//! trying the next peer when one lies or fails; [`fetch_image`] brings an
//! image's record and layer indexes from a peer, checked against their ids,
//! so a node can mount an image it has never seen.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod handler;
mod peer_source;
mod remote;

pub use handler::StoreHandler;
pub use peer_source::{Peer, PeerSource, DEFAULT_DEADLINE};
pub use remote::fetch_image;
