use std::collections::BTreeSet;

use strata_types::NodeId;

/// The live members of a cluster, as placement sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    members: BTreeSet<NodeId>,
}

impl Ring {
    pub fn new(members: impl IntoIterator<Item = NodeId>) -> Self {
        Self { members: members.into_iter().collect() }
    }

    pub fn insert(&mut self, member: NodeId) -> bool {
        self.members.insert(member)
    }

    pub fn remove(&mut self, member: &NodeId) -> bool {
        self.members.remove(member)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.members.iter()
    }

    /// The `replicas` members that track `key`, best first. Fewer when the
    /// cluster is smaller than that.
    pub fn directory(&self, key: &[u8; 32], replicas: usize) -> Vec<NodeId> {
        let mut scored: Vec<(u64, NodeId)> = self.members.iter().map(|m| (score(m, key), *m)).collect();
        // Highest score first; the member id breaks the (astronomically
        // unlikely) ties so that every node orders alike.
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        scored.into_iter().take(replicas).map(|(_, m)| m).collect()
    }
}

/// The rendezvous weight of `member` for `key`.
pub(crate) fn score(member: &NodeId, key: &[u8; 32]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(member.as_bytes());
    hasher.update(key);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use strata_types::ChunkId;

    use super::*;
    use crate::test_ids::node;

    fn keys(n: u32) -> Vec<[u8; 32]> {
        (0..n).map(|i| *ChunkId::of(&i.to_le_bytes()).as_bytes()).collect()
    }

    #[test]
    fn every_node_computes_the_same_directory_whatever_order_it_learned_members_in() {
        let a = Ring::new((0..10).map(node));
        let b = Ring::new((0..10).rev().map(node));
        for key in keys(200) {
            assert_eq!(a.directory(&key, 3), b.directory(&key, 3));
        }
    }

    #[test]
    fn directories_are_distinct_members_and_shrink_with_the_cluster() {
        let ring = Ring::new((0..2).map(node));
        let key = keys(1)[0];
        let dir = ring.directory(&key, 3);
        assert_eq!(dir.len(), 2);
        assert_ne!(dir[0], dir[1]);
        assert!(Ring::default().directory(&key, 3).is_empty());
    }

    #[test]
    fn keys_spread_evenly_over_members() {
        let ring = Ring::new((0..8).map(node));
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let all = keys(8000);
        for key in &all {
            for m in ring.directory(key, 3) {
                *load.entry(m).or_default() += 1;
            }
        }
        // 8000 keys × 3 replicas over 8 members: 3000 each on average.
        for (member, n) in load {
            assert!((2700..=3300).contains(&n), "{member} tracks {n} keys");
        }
    }

    #[test]
    fn a_member_leaving_moves_only_the_keys_it_tracked() {
        let before = Ring::new((0..8).map(node));
        let mut after = before.clone();
        let gone = node(3);
        after.remove(&gone);
        for key in keys(2000) {
            let (old, new) = (before.directory(&key, 3), after.directory(&key, 3));
            if old.contains(&gone) {
                // The survivors keep their places; one new member joins.
                let kept: Vec<_> = old.iter().filter(|m| **m != gone).copied().collect();
                assert_eq!(&new[..2], &kept[..]);
                assert!(!old.contains(&new[2]));
            } else {
                assert_eq!(old, new, "a key the leaver did not track must not move");
            }
        }
    }

    #[test]
    fn a_member_joining_takes_keys_only_from_others_top_places() {
        let before = Ring::new((0..8).map(node));
        let mut after = before.clone();
        let new_member = node(99);
        after.insert(new_member);
        let mut taken = 0;
        for key in keys(2000) {
            let (old, new) = (before.directory(&key, 3), after.directory(&key, 3));
            if new.contains(&new_member) {
                taken += 1;
                let others: Vec<_> = new.iter().filter(|m| **m != new_member).copied().collect();
                assert_eq!(others[..], old[..2], "the joiner pushes out only the last of the old directory");
            } else {
                assert_eq!(old, new);
            }
        }
        // It takes about 3/9 of the keys.
        assert!((550..=780).contains(&taken), "joiner took {taken} of 2000 keys");
    }
}
