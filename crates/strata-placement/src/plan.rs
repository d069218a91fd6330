//! Whom a node asks for one chunk, and how, given the holders of its layer.
//!
//! The nodes fetching a layer at the same time (its *partial* holders, this
//! node among them) split its chunks by rendezvous hashing: each chunk has
//! one *designated* fetcher in the group. A node asks the designated fetcher
//! to relay the chunk (it fetches it once from a complete holder, stores
//! it, serves everyone who asks); only the designated node itself goes to a
//! complete holder (the origin role) directly. So when N nodes start one
//! image together, each chunk leaves the origin about once, and a node's
//! reads come from the whole group at once. When the designated node fails,
//! the complete holders are next, then any other partial holder.

use std::collections::BTreeSet;

use strata_types::{ChunkId, NodeId};

use crate::Ring;

/// A holder of the chunk's layer, as the directory reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerHolder {
    pub node: NodeId,
    /// Holds every chunk of the layer.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Ask for the chunk it holds (or tell us it does not).
    Fetch(NodeId),
    /// Ask it to fetch the chunk for the group if it lacks it.
    Relay(NodeId),
}

impl Ask {
    pub fn node(&self) -> NodeId {
        match self {
            Ask::Fetch(n) | Ask::Relay(n) => *n,
        }
    }
}

/// The order in which `me` asks for `chunk`. `relay` is false when `me` is
/// itself fetching on another node's behalf (a relay never relays again).
/// Penalised nodes go after the others, keeping their relative order.
pub fn plan_fetch(
    chunk: &ChunkId,
    me: NodeId,
    holders: &[LayerHolder],
    penalised: &BTreeSet<NodeId>,
    relay: bool,
) -> Vec<Ask> {
    let key = chunk.as_bytes();
    let by_score = |nodes: Vec<NodeId>| {
        let ring = Ring::new(nodes);
        ring.directory(key, ring.len())
    };
    let complete: Vec<NodeId> =
        holders.iter().filter(|h| h.complete && h.node != me).map(|h| h.node).collect();
    let partial: Vec<NodeId> =
        holders.iter().filter(|h| !h.complete && h.node != me).map(|h| h.node).collect();
    let mut asks = Vec::new();
    let mut designated = None;
    if relay && !partial.is_empty() && !complete.is_empty() {
        let mut group = partial.clone();
        group.push(me);
        let first = by_score(group).first().copied();
        if let Some(node) = first.filter(|n| *n != me) {
            designated = Some(node);
            asks.push(Ask::Relay(node));
        }
    }
    asks.extend(by_score(complete).into_iter().map(Ask::Fetch));
    asks.extend(by_score(partial).into_iter().filter(|n| Some(*n) != designated).map(Ask::Fetch));
    asks.sort_by_key(|a| penalised.contains(&a.node()));
    asks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{chunk, node};

    /// Origin 0 holds the layer; nodes 1..=n fetch it together.
    fn group(n: u32) -> Vec<LayerHolder> {
        let mut h = vec![LayerHolder { node: node(0), complete: true }];
        h.extend((1..=n).map(|i| LayerHolder { node: node(i), complete: false }));
        h
    }

    #[test]
    fn alone_a_node_fetches_from_complete_holders_spread_by_chunk() {
        let holders =
            [LayerHolder { node: node(0), complete: true }, LayerHolder { node: node(9), complete: true }];
        let mut first = std::collections::BTreeMap::new();
        for c in 0..1000 {
            let plan = plan_fetch(&chunk(c), node(1), &holders, &BTreeSet::new(), true);
            assert_eq!(plan.len(), 2);
            assert!(plan.iter().all(|a| matches!(a, Ask::Fetch(_))));
            *first.entry(plan[0].node()).or_insert(0) += 1;
        }
        assert!(first.values().all(|n| (400..600).contains(n)), "{first:?}");
    }

    #[test]
    fn each_chunk_leaves_the_origin_once_for_n_nodes() {
        for n in [1u32, 2, 4, 8, 16] {
            let holders = group(n);
            for c in 0..500 {
                // Who would go to the origin for this chunk first?
                let direct: Vec<u32> = (1..=n)
                    .filter(|i| {
                        let plan = plan_fetch(&chunk(c), node(*i), &holders, &BTreeSet::new(), true);
                        plan[0] == Ask::Fetch(node(0))
                    })
                    .collect();
                assert_eq!(direct.len(), 1, "n={n} chunk {c}: {direct:?}");
                // Everyone else asks that node to relay.
                for i in (1..=n).filter(|i| *i != direct[0]) {
                    let plan = plan_fetch(&chunk(c), node(i), &holders, &BTreeSet::new(), true);
                    assert_eq!(plan[0], Ask::Relay(node(direct[0])));
                    assert_eq!(plan[1], Ask::Fetch(node(0)), "the origin is the fallback");
                }
            }
        }
    }

    #[test]
    fn designated_fetchers_share_the_layer() {
        let holders = group(4);
        let mut load = std::collections::BTreeMap::new();
        for c in 0..4000 {
            let plan = plan_fetch(&chunk(c), node(1), &holders, &BTreeSet::new(), true);
            let fetcher = match plan[0] {
                Ask::Relay(n) => n,
                Ask::Fetch(_) => node(1),
            };
            *load.entry(fetcher).or_insert(0) += 1;
        }
        assert_eq!(load.len(), 4);
        assert!(load.values().all(|n| (850..1150).contains(n)), "{load:?}");
    }

    #[test]
    fn a_relay_never_relays_again() {
        let holders = group(8);
        for c in 0..200 {
            let plan = plan_fetch(&chunk(c), node(3), &holders, &BTreeSet::new(), false);
            assert_eq!(plan[0], Ask::Fetch(node(0)));
            assert!(plan.iter().all(|a| matches!(a, Ask::Fetch(_))));
        }
    }

    #[test]
    fn penalised_nodes_are_asked_last_and_partial_holders_are_the_last_resort() {
        let holders = group(3);
        let penalised: BTreeSet<NodeId> = [node(0)].into();
        for c in 0..200 {
            let plan = plan_fetch(&chunk(c), node(1), &holders, &penalised, true);
            assert_eq!(plan.last().map(Ask::node), Some(node(0)));
            let asked: BTreeSet<NodeId> = plan.iter().map(Ask::node).collect();
            assert_eq!(asked.len(), plan.len(), "no node twice");
            assert_eq!(asked, [node(0), node(2), node(3)].into(), "every other holder, never itself");
        }
    }

    #[test]
    fn without_a_complete_holder_partial_holders_are_asked_directly() {
        let holders =
            [LayerHolder { node: node(2), complete: false }, LayerHolder { node: node(3), complete: false }];
        let plan = plan_fetch(&chunk(1), node(1), &holders, &BTreeSet::new(), true);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|a| matches!(a, Ask::Fetch(_))));
    }
}
