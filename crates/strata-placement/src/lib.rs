//! Placement and fetch scheduling for a Strata cluster, with no central
//! tracker: pure functions of the live membership and what peers reported,
//! testable without sockets.
//!
//! - [`Ring`]: rendezvous (highest-random-weight) hashing of a key (a
//!   [`strata_types::LayerId`] or [`strata_types::ChunkId`]) over the live
//!   members. The key's *directory nodes* are the `replicas` members with the
//!   highest BLAKE3(member ‖ key) scores; they track who holds the key, kept
//!   fresh by holders' announcements. Every node computes the same directory
//!   from the same membership, and when a member joins or leaves only the keys
//!   whose top `replicas` it enters or leaves move.
//! - [`plan_fetch`]: whom a node asks for one chunk of a layer that several
//!   nodes fetch at once: its designated fetcher in the group (by rendezvous
//!   hash) relays it, so each chunk leaves the complete holders once.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod plan;
mod ring;
#[cfg(test)]
mod test_ids;

pub use plan::{plan_fetch, time_share, Ask, LayerHolder};
pub use ring::Ring;
