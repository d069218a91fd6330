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
use std::time::Duration;

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
/// When `me` is the designated fetcher (or relaying), the partial holder
/// that was designated before `me` joined is asked first, without relay:
/// a node that joins a group late takes over chunks the group may already
/// hold. Penalised nodes go after the others, keeping their relative order.
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
        by_score(holders.iter().filter(|h| !h.complete && h.node != me).map(|h| h.node).collect());
    let mut asks = Vec::new();
    // The first of the others: the designated fetcher when it is not me,
    // else the one that was before I joined the group (it may have fetched
    // the chunk already: asked before the origin, it saves a second copy
    // from the origin).
    let others_first = partial.first().copied().filter(|_| !complete.is_empty());
    if let Some(first) = others_first {
        let mut group = partial.clone();
        group.push(me);
        let designated_is_me = by_score(group).first() == Some(&me);
        asks.push(if relay && !designated_is_me { Ask::Relay(first) } else { Ask::Fetch(first) });
    }
    asks.extend(by_score(complete).into_iter().map(Ask::Fetch));
    asks.extend(partial.into_iter().filter(|n| Some(*n) != others_first).map(Ask::Fetch));
    asks.sort_by_key(|a| penalised.contains(&a.node()));
    asks
}

/// How much of the time `left` a fetch gives the first of the asks still
/// to make, `rest`: the time is shared out by weight. The designated
/// fetcher weighs most (asking the origin past it is a second copy from
/// the origin), a complete holder next (it holds the chunk, however busy),
/// a partial holder little (it may well not hold it, and says so fast).
pub fn time_share(left: Duration, rest: &[Ask], holders: &[LayerHolder]) -> Duration {
    let weight = |ask: &Ask| -> u32 {
        match ask {
            Ask::Relay(_) => 16,
            Ask::Fetch(n) if holders.iter().any(|h| h.node == *n && h.complete) => 8,
            Ask::Fetch(_) => 1,
        }
    };
    let Some(first) = rest.first() else { return left };
    let total: u32 = rest.iter().map(weight).sum();
    left * weight(first) / total.max(1)
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
                // Who would go to the origin for this chunk, relaying nothing?
                let direct: Vec<u32> = (1..=n)
                    .filter(|i| {
                        let plan = plan_fetch(&chunk(c), node(*i), &holders, &BTreeSet::new(), true);
                        plan.iter().all(|a| matches!(a, Ask::Fetch(_)))
                    })
                    .collect();
                assert_eq!(direct.len(), 1, "n={n} chunk {c}: {direct:?}");
                let plan = plan_fetch(&chunk(c), node(direct[0]), &holders, &BTreeSet::new(), true);
                let origin_at = usize::from(n > 1);
                assert_eq!(plan[origin_at], Ask::Fetch(node(0)), "n={n}: {plan:?}");
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
            assert!(plan.iter().all(|a| matches!(a, Ask::Fetch(_))));
            assert_eq!(plan[1], Ask::Fetch(node(0)), "the origin right after the first of the group");
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

    #[test]
    fn the_designated_fetcher_and_complete_holders_get_most_of_the_deadline() {
        let holders = group(15);
        let left = Duration::from_secs(5);
        let plan = plan_fetch(&chunk(7), node(3), &holders, &BTreeSet::new(), true);
        assert!(matches!(plan[0], Ask::Relay(_)));
        // The relay, then the origin, then the 13 other partial holders.
        assert_eq!(plan.len(), 15);
        assert!(time_share(left, &plan, &holders) >= left * 2 / 5);
        assert!(time_share(left, &plan[1..], &holders) >= left / 3, "the origin among 13 partials");
        assert_eq!(time_share(left, &plan[2..], &holders), left / 13, "partials share alike");
        assert_eq!(time_share(left, &plan[14..], &holders), left, "the last ask gets what is left");
        assert_eq!(time_share(left, &[], &holders), left);
    }

    #[test]
    fn a_node_that_joins_late_asks_the_previous_designated_fetcher_before_the_origin() {
        // Nodes 1..=4 fetched together; node 5 joins: for the chunks it is
        // now designated for, it first asks whoever was before.
        let before = group(4);
        let after = group(5);
        let mut taken = 0;
        for c in 0..400 {
            let plan = plan_fetch(&chunk(c), node(5), &after, &BTreeSet::new(), true);
            if matches!(plan[0], Ask::Relay(_)) {
                continue;
            }
            taken += 1;
            let previous = (1..=4)
                .find(|i| {
                    plan_fetch(&chunk(c), node(*i), &before, &BTreeSet::new(), true)
                        .iter()
                        .all(|a| matches!(a, Ask::Fetch(_)))
                })
                .expect("a designated fetcher before");
            assert_eq!(plan[0], Ask::Fetch(node(previous)), "chunk {c}");
            assert_eq!(plan[1], Ask::Fetch(node(0)), "then the origin");
        }
        assert!((40..130).contains(&taken), "node 5 took {taken} of 400 chunks");
    }
}
