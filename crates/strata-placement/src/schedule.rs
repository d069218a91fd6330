use std::collections::{BTreeMap, BTreeSet};

use strata_types::{ChunkId, NodeId};

/// Where chunks are fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Peer(NodeId),
    /// The image's origin (its registry or the importing node's upstream):
    /// only for chunks no reachable peer holds.
    Origin,
}

/// One request to make: these chunks, from this source, in read order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub source: Source,
    pub chunks: Vec<ChunkId>,
}

/// Assigns each wanted chunk (with the peers known to hold it, in read
/// order) to a source: a holder that is not penalised, else a penalised
/// holder, else the origin. Among eligible holders the one given the fewest
/// chunks so far wins (ties broken by a per-chunk rendezvous score), so the
/// chunks of one layer come from all its holders at once. Peers come first in
/// the result, the origin last.
pub fn schedule(wanted: &[(ChunkId, Vec<NodeId>)], penalised: &BTreeSet<NodeId>) -> Vec<Assignment> {
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut by_source: BTreeMap<Source, Vec<ChunkId>> = BTreeMap::new();
    for (chunk, holders) in wanted {
        let trusted: Vec<&NodeId> = holders.iter().filter(|h| !penalised.contains(h)).collect();
        let eligible = if trusted.is_empty() { holders.iter().collect() } else { trusted };
        let source = eligible
            .into_iter()
            .min_by_key(|peer| {
                (
                    load.get(*peer).copied().unwrap_or(0),
                    std::cmp::Reverse(crate::ring::score(peer, chunk.as_bytes())),
                )
            })
            .map_or(Source::Origin, |peer| {
                *load.entry(*peer).or_default() += 1;
                Source::Peer(*peer)
            });
        by_source.entry(source).or_default().push(*chunk);
    }
    // `Source::Peer` sorts before `Source::Origin`.
    by_source.into_iter().map(|(source, chunks)| Assignment { source, chunks }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_ids::{chunk, node};

    fn count(plan: &[Assignment], source: Source) -> usize {
        plan.iter().filter(|a| a.source == source).map(|a| a.chunks.len()).sum()
    }

    #[test]
    fn a_layer_held_by_three_peers_comes_from_all_three_evenly() {
        let holders = vec![node(1), node(2), node(3)];
        let wanted: Vec<_> = (0..100).map(|i| (chunk(i), holders.clone())).collect();
        let plan = schedule(&wanted, &BTreeSet::new());
        let counts: Vec<usize> = holders.iter().map(|h| count(&plan, Source::Peer(*h))).collect();
        assert_eq!(counts.iter().sum::<usize>(), 100);
        assert!(counts.iter().all(|c| (33..=34).contains(c)), "{counts:?}");
        assert_eq!(count(&plan, Source::Origin), 0, "held chunks never go to the origin");
    }

    #[test]
    fn penalised_peers_are_a_last_resort_and_the_origin_takes_what_nobody_holds() {
        let liar = node(9);
        let penalised: BTreeSet<_> = [liar].into();
        let wanted = vec![
            (chunk(0), vec![liar, node(1)]),
            (chunk(1), vec![liar]),
            (chunk(2), vec![]),
            (chunk(3), vec![node(1), liar]),
        ];
        let plan = schedule(&wanted, &penalised);
        assert_eq!(plan.len(), 3);
        assert_eq!(count(&plan, Source::Peer(node(1))), 2);
        assert_eq!(count(&plan, Source::Peer(liar)), 1, "only the chunk nobody else holds");
        assert_eq!(
            plan.last(),
            Some(&Assignment { source: Source::Origin, chunks: vec![chunk(2)] }),
            "origin last"
        );
    }

    proptest::proptest! {
        #[test]
        fn every_chunk_goes_once_to_a_holder_if_any_holds_it(
            holders in proptest::collection::vec(proptest::collection::vec(0u32..6, 0..4), 1..60),
            penalised in proptest::collection::btree_set(0u32..6, 0..3),
        ) {
            let wanted: Vec<_> = holders
                .iter()
                .enumerate()
                .map(|(i, hs)| (chunk(i as u32), hs.iter().map(|h| node(*h)).collect::<Vec<_>>()))
                .collect();
            let penalised: BTreeSet<NodeId> = penalised.into_iter().map(node).collect();
            let plan = schedule(&wanted, &penalised);
            let mut seen = BTreeSet::new();
            for assignment in &plan {
                for c in &assignment.chunks {
                    proptest::prop_assert!(seen.insert(*c), "chunk assigned twice");
                    let (_, hs) = wanted.iter().find(|(w, _)| w == c).expect("a wanted chunk");
                    match assignment.source {
                        Source::Origin => proptest::prop_assert!(hs.is_empty()),
                        Source::Peer(p) => {
                            proptest::prop_assert!(hs.contains(&p));
                            let clean = hs.iter().any(|h| !penalised.contains(h));
                            proptest::prop_assert!(!clean || !penalised.contains(&p), "a penalised peer chosen over a clean one");
                        }
                    }
                }
            }
            proptest::prop_assert_eq!(seen.len(), wanted.len());
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_plan_and_read_order_is_kept() {
        let wanted: Vec<_> = (0..50).map(|i| (chunk(i), vec![node(i % 4), node((i + 1) % 4)])).collect();
        let plan = schedule(&wanted, &BTreeSet::new());
        assert_eq!(plan, schedule(&wanted, &BTreeSet::new()));
        for assignment in &plan {
            let positions: Vec<usize> =
                assignment.chunks.iter().filter_map(|c| wanted.iter().position(|(w, _)| w == c)).collect();
            assert_eq!(positions.len(), assignment.chunks.len());
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "chunks keep their read order per source");
        }
    }
}
