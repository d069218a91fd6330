//! Directory answers reused for a moment. A group of nodes fetching one
//! layer forms within a second of their starts, and a node that goes on
//! using an answer from before its peers announced fetches from the origin
//! what a peer is designated to relay. So an answer is fresh only briefly;
//! after that one caller refreshes it while the others go on with the
//! stale answer, and none is used past [`MAX_AGE`]. A node's own join of a
//! group (its announcement answered with the group) is used by the first
//! plan after it even when that comes later than [`FRESH`] (the image's
//! indexes were still crossing): it is no staler than a lookup asked
//! when the join was, and the plans after it ask again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::directory::Holder;

/// Used without asking again.
pub(crate) const FRESH: Duration = Duration::from_millis(250);
/// Used at all (while one caller refreshes it).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(2);

/// A directory key: a LayerId's bytes, or a name key.
type Key = [u8; 32];

struct Entry {
    /// When the answer was current: when a lookup's arrived, or when an
    /// announcement whose replies carried it was sent.
    at: Instant,
    /// How long after `at` it is used without asking again.
    fresh: Duration,
    holders: Vec<Holder>,
    refreshing: bool,
    /// A join's answer no caller has used yet: used once within
    /// [`MAX_AGE`], fresh or not.
    joined: bool,
}

/// What a caller does about a key.
#[derive(Debug, PartialEq)]
pub(crate) enum Cached {
    /// Use these holders.
    Use(Vec<Holder>),
    /// Ask the directory, then [`LookupCache::put`] the answer.
    Ask,
}

#[derive(Default)]
pub(crate) struct LookupCache {
    entries: HashMap<Key, Entry>,
}

impl LookupCache {
    pub(crate) fn get(&mut self, key: &Key, now: Instant) -> Cached {
        let Some(entry) = self.entries.get_mut(key) else { return Cached::Ask };
        let age = now.saturating_duration_since(entry.at);
        if age < entry.fresh || (age < MAX_AGE && (entry.refreshing || entry.joined)) {
            entry.joined = false;
            return Cached::Use(entry.holders.clone());
        }
        if age < MAX_AGE {
            // This caller refreshes it; the others go on with it meanwhile.
            entry.refreshing = true;
        }
        Cached::Ask
    }

    /// Keeps a directory answer current at `at`, fresh for [`FRESH`].
    /// One that names no node but `me` may be a directory still filling:
    /// it replaces nothing and is not kept, so the next caller asks again.
    /// An answer current before the one kept is dropped.
    pub(crate) fn put(&mut self, key: Key, holders: Vec<Holder>, me: &str, at: Instant) {
        self.put_fresh_for(key, holders, me, at, FRESH);
    }

    /// [`Self::put`], fresh for `fresh` (at most [`FRESH`]) after `at`.
    pub(crate) fn put_fresh_for(
        &mut self,
        key: Key,
        holders: Vec<Holder>,
        me: &str,
        at: Instant,
        fresh: Duration,
    ) {
        if self.entries.get(&key).is_some_and(|e| e.at > at) {
            return;
        }
        if holders.iter().any(|h| h.node != me) {
            let fresh = fresh.min(FRESH);
            self.entries.insert(key, Entry { at, fresh, holders, refreshing: false, joined: false });
        } else {
            self.entries.remove(&key);
        }
    }

    /// [`Self::put_fresh_for`] for the answer to this node's join of
    /// `key`'s group: also used by the first caller after it, within
    /// [`MAX_AGE`] of `at`, however stale.
    pub(crate) fn put_joined(
        &mut self,
        key: Key,
        holders: Vec<Holder>,
        me: &str,
        at: Instant,
        fresh: Duration,
    ) {
        self.put_fresh_for(key, holders, me, at, fresh);
        if let Some(entry) = self.entries.get_mut(&key).filter(|e| e.at == at) {
            entry.joined = true;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str) -> Holder {
        Holder { node: node.into(), addr: "127.0.0.1:1".parse().expect("addr"), complete: false }
    }

    #[test]
    fn a_fresh_answer_is_used_then_one_caller_refreshes_while_the_others_use_it() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [1; 32]);
        assert_eq!(cache.get(&key, t0), Cached::Ask);
        cache.put(key, vec![holder("a"), holder("me")], "me", t0);
        assert!(matches!(cache.get(&key, t0 + FRESH / 2), Cached::Use(h) if h.len() == 2));
        let later = t0 + FRESH;
        assert_eq!(cache.get(&key, later), Cached::Ask, "the first caller past FRESH refreshes");
        assert!(matches!(cache.get(&key, later), Cached::Use(_)), "the others go on with it");
        cache.put(key, vec![holder("a"), holder("b")], "me", later);
        assert!(matches!(cache.get(&key, later), Cached::Use(h) if h[1].node == "b"));
    }

    #[test]
    fn no_answer_is_used_past_its_max_age_even_while_refreshing() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [2; 32]);
        cache.put(key, vec![holder("a")], "me", t0);
        assert_eq!(cache.get(&key, t0 + FRESH), Cached::Ask);
        assert_eq!(cache.get(&key, t0 + MAX_AGE), Cached::Ask);
    }

    #[test]
    fn an_answer_naming_only_this_node_is_not_kept_and_drops_the_old_one() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [3; 32]);
        cache.put(key, vec![holder("a")], "me", t0);
        cache.put(key, vec![holder("me")], "me", t0);
        assert_eq!(cache.get(&key, t0), Cached::Ask);
        cache.put(key, Vec::new(), "me", t0);
        assert_eq!(cache.get(&key, t0), Cached::Ask);
    }

    #[test]
    fn an_answer_asked_for_earlier_never_replaces_a_later_one() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [4; 32]);
        let later = t0 + FRESH / 4;
        cache.put(key, vec![holder("a"), holder("b")], "me", later);
        cache.put(key, vec![holder("a")], "me", t0);
        assert!(matches!(cache.get(&key, later), Cached::Use(h) if h.len() == 2));
    }

    #[test]
    fn an_answer_kept_for_less_than_fresh_is_asked_again_after_that() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [5; 32]);
        let short = FRESH / 5;
        cache.put_fresh_for(key, vec![holder("a")], "me", t0, short);
        assert!(matches!(cache.get(&key, t0 + short / 2), Cached::Use(_)));
        assert_eq!(cache.get(&key, t0 + short), Cached::Ask);
        cache.put_fresh_for(key, vec![holder("a")], "me", t0 + short, MAX_AGE);
        assert!(
            matches!(cache.get(&key, t0 + short + FRESH / 2), Cached::Use(_)),
            "capped at FRESH, not below"
        );
        assert_eq!(cache.get(&key, t0 + short + FRESH), Cached::Ask, "and no longer than FRESH");
    }

    #[test]
    fn a_join_answer_serves_its_first_plan_however_late_then_asks_again() {
        let (mut cache, t0, key) = (LookupCache::default(), Instant::now(), [6; 32]);
        cache.put_joined(key, vec![holder("a"), holder("b")], "me", t0, FRESH / 5);
        let late = t0 + FRESH * 3;
        assert!(matches!(cache.get(&key, late), Cached::Use(h) if h.len() == 2), "the first plan uses it");
        assert_eq!(cache.get(&key, late), Cached::Ask, "the next asks again");
        cache.put_joined(key, vec![holder("a")], "me", late, FRESH);
        assert_eq!(cache.get(&key, late + MAX_AGE), Cached::Ask, "not past MAX_AGE");
        cache.put(key, vec![holder("a")], "me", late + MAX_AGE);
        let after = late + MAX_AGE + FRESH;
        assert_eq!(cache.get(&key, after), Cached::Ask, "a lookup's answer is not a join's");
    }
}
