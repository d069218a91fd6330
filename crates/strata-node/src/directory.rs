//! The holders table a directory node keeps for the keys placed on it: who
//! announced holding each layer (whole, or being fetched) or image name, and
//! when. Pure and clock-driven, so it is tested without sockets.
//!
//! Entries live for a TTL (several announce intervals) unless refreshed, and
//! go at once when gossip declares their node down.
//!
//! A directory node also arbitrates claims: the right to fetch what a key
//! names from outside the cluster (an image from its registry) for
//! everyone, so that nodes asked for one image at the same moment pull it
//! once. The first asker holds a claim for a lease; it ends when renewed no
//! more, released, made moot by a complete holder, or its node goes down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_wire::Announcement;

/// A node holding a key, as a directory node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub node: String,
    pub addr: SocketAddr,
    /// Holds every chunk of the layer (else: fetching it).
    pub complete: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    complete: bool,
    seen: Instant,
}

/// Most holders kept per key: enough to spread load, bounded memory.
const MAX_HOLDERS: usize = 64;

/// What a claim on a key comes to, as the key's directory node decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// Nodes hold the key whole: take it from them, nobody needs a claim.
    Complete(Vec<Holder>),
    /// The asker holds the claim, for the lease unless renewed.
    Granted,
    /// Another node holds it (by name): wait for it to finish.
    HeldBy(String),
}

#[derive(Clone, Debug)]
struct Claim {
    node: String,
    expires: Instant,
}

#[derive(Debug)]
pub struct Directory {
    ttl: Duration,
    keys: HashMap<[u8; 32], HashMap<String, Entry>>,
    claims: HashMap<[u8; 32], Claim>,
}

impl Directory {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, keys: HashMap::new(), claims: HashMap::new() }
    }

    /// `node` asks for the claim on `key` (or renews its own) as of `now`:
    /// granted for `lease` unless another node holding it complete makes it
    /// moot or another node's claim is still running. The asker's own entry
    /// does not count: it asks because it lacks the key (an entry left from
    /// before it removed the image or restarted is stale).
    pub fn claim(&mut self, key: &[u8; 32], node: &str, now: Instant, lease: Duration) -> ClaimState {
        let complete: Vec<Holder> =
            self.holders(key, now).into_iter().filter(|h| h.complete && h.node != node).collect();
        if !complete.is_empty() {
            self.claims.remove(key);
            return ClaimState::Complete(complete);
        }
        match self.claims.get(key) {
            Some(held) if held.node != node && held.expires > now => ClaimState::HeldBy(held.node.clone()),
            _ => {
                self.claims.insert(*key, Claim { node: node.to_owned(), expires: now + lease });
                ClaimState::Granted
            }
        }
    }

    /// `node` gives up its claim on `key` (another node's stays).
    pub fn release(&mut self, key: &[u8; 32], node: &str) {
        if self.claims.get(key).is_some_and(|c| c.node == node) {
            self.claims.remove(key);
        }
    }

    /// Records what `announcement` says, as of `now`. A node that said a key
    /// is complete stays complete until it announces otherwise.
    pub fn record(&mut self, announcement: &Announcement, now: Instant) {
        let sets = [(&announcement.complete, true), (&announcement.partial, false)];
        for (keys, complete) in sets {
            for key in keys {
                let holders = self.keys.entry(*key).or_default();
                if holders.len() >= MAX_HOLDERS && !holders.contains_key(&announcement.node) {
                    // Full: the stalest entry makes room.
                    if let Some(oldest) = holders.iter().min_by_key(|(_, e)| e.seen).map(|(n, _)| n.clone()) {
                        holders.remove(&oldest);
                    }
                }
                holders.insert(
                    announcement.node.clone(),
                    Entry { addr: announcement.addr, complete, seen: now },
                );
            }
        }
    }

    /// The fresh holders of `key`: complete ones first, then by name.
    pub fn holders(&self, key: &[u8; 32], now: Instant) -> Vec<Holder> {
        let mut out: Vec<Holder> = self
            .keys
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) < self.ttl)
            .map(|(node, e)| Holder { node: node.clone(), addr: e.addr, complete: e.complete })
            .collect();
        out.sort_by(|a, b| b.complete.cmp(&a.complete).then_with(|| a.node.cmp(&b.node)));
        out
    }

    /// Drops every entry and claim of `node` (gossip declared it down).
    pub fn forget_node(&mut self, node: &str) {
        for holders in self.keys.values_mut() {
            holders.remove(node);
        }
        self.keys.retain(|_, h| !h.is_empty());
        self.claims.retain(|_, c| c.node != node);
    }

    /// Drops entries older than the TTL and claims past their lease.
    pub fn expire(&mut self, now: Instant) {
        for holders in self.keys.values_mut() {
            holders.retain(|_, e| now.saturating_duration_since(e.seen) < self.ttl);
        }
        self.keys.retain(|_, h| !h.is_empty());
        self.claims.retain(|_, c| c.expires > now);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(node: &str, complete: &[u8], partial: &[u8]) -> Announcement {
        Announcement {
            node: node.into(),
            addr: format!("10.0.0.{}:7420", node.len()).parse().unwrap(),
            complete: complete.iter().map(|k| [*k; 32]).collect(),
            partial: partial.iter().map(|k| [*k; 32]).collect(),
        }
    }

    #[test]
    fn holders_are_listed_complete_first_and_refreshed() {
        let t0 = Instant::now();
        let mut d = Directory::new(Duration::from_secs(90));
        d.record(&announce("b", &[], &[1]), t0);
        d.record(&announce("a", &[1], &[]), t0);
        let h = d.holders(&[1; 32], t0);
        assert_eq!(
            h.iter().map(|h| (h.node.as_str(), h.complete)).collect::<Vec<_>>(),
            [("a", true), ("b", false)]
        );
        // b finished the layer.
        d.record(&announce("b", &[1], &[]), t0 + Duration::from_secs(10));
        assert!(d.holders(&[1; 32], t0 + Duration::from_secs(10)).iter().all(|h| h.complete));
    }

    #[test]
    fn entries_expire_unless_refreshed() {
        let t0 = Instant::now();
        let mut d = Directory::new(Duration::from_secs(90));
        d.record(&announce("a", &[1], &[]), t0);
        d.record(&announce("b", &[1], &[]), t0);
        d.record(&announce("b", &[1], &[]), t0 + Duration::from_secs(60));
        let later = t0 + Duration::from_secs(100);
        assert_eq!(d.holders(&[1; 32], later).len(), 1, "a went stale, b was refreshed");
        d.expire(later);
        d.expire(t0 + Duration::from_secs(200));
        assert!(d.is_empty());
    }

    #[test]
    fn a_down_node_is_forgotten_at_once() {
        let t0 = Instant::now();
        let mut d = Directory::new(Duration::from_secs(90));
        d.record(&announce("a", &[1, 2], &[]), t0);
        d.record(&announce("b", &[2], &[]), t0);
        d.forget_node("a");
        assert!(d.holders(&[1; 32], t0).is_empty());
        assert_eq!(d.holders(&[2; 32], t0).len(), 1);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn the_first_asker_holds_a_claim_until_it_lapses_is_released_or_is_moot() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(15);
        let key = [9; 32];
        let mut d = Directory::new(Duration::from_secs(90));
        assert_eq!(d.claim(&key, "a", t0, lease), ClaimState::Granted);
        assert_eq!(d.claim(&key, "b", t0, lease), ClaimState::HeldBy("a".into()));
        // a renews; b still waits past the first lease.
        assert_eq!(d.claim(&key, "a", t0 + Duration::from_secs(10), lease), ClaimState::Granted);
        assert_eq!(d.claim(&key, "b", t0 + Duration::from_secs(20), lease), ClaimState::HeldBy("a".into()));
        // a stops renewing: the claim lapses and b gets it.
        let later = t0 + Duration::from_secs(26);
        assert_eq!(d.claim(&key, "b", later, lease), ClaimState::Granted);
        // Only its holder releases a claim.
        d.release(&key, "a");
        assert_eq!(d.claim(&key, "c", later, lease), ClaimState::HeldBy("b".into()));
        d.release(&key, "b");
        assert_eq!(d.claim(&key, "c", later, lease), ClaimState::Granted);
        // c announces the key whole: everyone is sent to it.
        d.record(&announce("c", &[9], &[]), later);
        match d.claim(&key, "d", later, lease) {
            ClaimState::Complete(holders) => assert_eq!(holders[0].node, "c"),
            other => panic!("{other:?}"),
        }
        // c asking means it lost the image (removed it, or a restart): its
        // own entry does not send it to itself.
        assert_eq!(d.claim(&key, "c", later, lease), ClaimState::Granted);
        assert_eq!(d.claim(&key, "d", later, lease), ClaimState::Complete(d.holders(&key, later)));
    }

    #[test]
    fn a_claim_goes_with_its_node() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(15);
        let mut d = Directory::new(Duration::from_secs(90));
        assert_eq!(d.claim(&[1; 32], "a", t0, lease), ClaimState::Granted);
        d.forget_node("a");
        assert_eq!(d.claim(&[1; 32], "b", t0, lease), ClaimState::Granted);
        // Lapsed claims are dropped with stale entries.
        d.expire(t0 + lease);
        assert!(d.claims.is_empty());
    }

    #[test]
    fn holders_per_key_are_bounded() {
        let t0 = Instant::now();
        let mut d = Directory::new(Duration::from_secs(90));
        for i in 0..(MAX_HOLDERS + 10) {
            d.record(&announce(&format!("n{i}"), &[1], &[]), t0 + Duration::from_millis(i as u64));
        }
        let holders = d.holders(&[1; 32], t0 + Duration::from_secs(1));
        assert_eq!(holders.len(), MAX_HOLDERS);
        assert!(!holders.iter().any(|h| h.node == "n0"), "the stalest made room");
    }
}
