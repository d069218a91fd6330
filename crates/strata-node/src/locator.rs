//! Who is in the cluster and who holds what: gossip membership, the
//! directory entries placed on this node, announcing what this node holds
//! to each key's directory nodes (rendezvous over the live members), and
//! looking up who holds a key (answers reused briefly: [`LookupCache`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_net::Pool;
use strata_placement::Ring;
use strata_proto::v1::{ClaimReply, Holder as ProtoHolder, Holders, LookupReply};
use strata_types::NodeId;
use strata_wire::response::Kind;
use strata_wire::{Announcement, ClaimRequest, PeerRequest, MAX_KEYS};

use crate::directory::{ClaimState, Directory, Holder};
use crate::lookup_cache::{Cached, LookupCache, FRESH};
use crate::membership::{Member, MemberState, MemberView, Membership};
use crate::metrics::Metrics;

/// A directory key: a LayerId's bytes, or [`crate::name_key`] of an image name.
pub type Key = [u8; 32];

/// How long an announcement to one directory node may take.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time holders learnt from an announcement's answers are used
/// without asking again (on a fast link the fetch needs a moment to plan).
const MIN_LEARNT_FRESH: Duration = Duration::from_millis(100);

/// How long a claim lasts unless its holder renews it (see
/// [`Locator::claim`]); holders renew every third of it.
pub const CLAIM_LEASE: Duration = Duration::from_secs(15);

/// A partial key's group as an announcement learns it: the remote
/// directory nodes asked, those that answered, and the holders named.
#[derive(Default)]
struct Group {
    asked: HashSet<SocketAddr>,
    answered: HashSet<SocketAddr>,
    found: Vec<Holder>,
}

/// Keys held whole and keys being fetched, as one announcement carries them.
#[derive(Default)]
struct Holdings {
    complete: Vec<Key>,
    partial: Vec<Key>,
}

/// This node's view of the cluster's members and holdings.
pub struct Locator {
    me: Member,
    membership: Membership,
    pool: Arc<Pool>,
    directory: Mutex<Directory>,
    lookups: Mutex<LookupCache>,
    /// Moves on whenever the membership does ([`Self::members_changed`]):
    /// an answer from directory nodes chosen before is not kept.
    epoch: AtomicU64,
    /// Directory nodes per key.
    replicas: usize,
    /// How long a lookup waits for one directory node.
    lookup_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Locator {
    /// Joins the cluster through `seeds` as `me`; directory entries live
    /// for `entry_ttl` unless announced again.
    pub fn start(
        me: Member,
        seeds: Vec<SocketAddr>,
        pool: Arc<Pool>,
        replicas: usize,
        entry_ttl: Duration,
        lookup_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let membership = Membership::start(me.clone(), seeds, pool.clone());
        Self {
            me,
            membership,
            pool,
            directory: Mutex::new(Directory::new(entry_ttl)),
            lookups: Mutex::default(),
            epoch: AtomicU64::new(0),
            replicas: replicas.max(1),
            lookup_timeout,
            metrics,
        }
    }

    pub fn members(&self) -> Vec<MemberView> {
        self.membership.view()
    }

    /// Membership changes, as they happen.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Vec<MemberView>> {
        self.membership.subscribe()
    }

    pub fn live_count(&self) -> usize {
        self.membership.live().len()
    }

    /// A gossip datagram from a peer.
    pub fn receive_gossip(&self, data: bytes::Bytes) {
        self.membership.receive(data);
    }

    /// Tells the cluster this node leaves.
    pub async fn leave(&self) {
        self.membership.leave().await;
    }

    /// Membership moved: holders gossip declared down are forgotten, stale
    /// entries expire, and lookups are asked afresh.
    pub fn members_changed(&self, view: &[MemberView], now: Instant) {
        {
            let mut directory = self.directory.lock();
            for m in view.iter().filter(|m| m.state == MemberState::Down) {
                directory.forget_node(&m.name);
            }
            directory.expire(now);
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.metrics.lookup_cache_clears.inc();
        self.lookups.lock().clear();
    }

    /// A peer's announcement to this node as a directory node.
    pub fn record(&self, announcement: &Announcement, now: Instant) {
        self.directory.lock().record(announcement, now);
    }

    /// The reply to a peer's lookup: the holders this node's directory
    /// entries name for each key, in order, as many keys as fit half a
    /// frame ([`strata_wire::MAX_FRAME`]); the asker takes keys left out
    /// as unanswered.
    pub fn lookup_reply(&self, keys: &[Key], now: Instant) -> LookupReply {
        let directory = self.directory.lock();
        let mut holders = Vec::new();
        let mut bytes = 0;
        for key in keys {
            let entry = Holders {
                key: key.to_vec(),
                holders: directory
                    .holders(key, now)
                    .into_iter()
                    .map(|h| ProtoHolder { node: h.node, addr: h.addr.to_string(), complete: h.complete })
                    .collect(),
            };
            bytes += prost::Message::encoded_len(&entry) + 4;
            if bytes > strata_wire::MAX_FRAME / 2 {
                break;
            }
            holders.push(entry);
        }
        LookupReply { holders }
    }

    /// The reply to a peer's claim (or release) as this key's directory node.
    pub fn claim_reply(&self, claim: &ClaimRequest, now: Instant) -> ClaimReply {
        let mut directory = self.directory.lock();
        if claim.release {
            directory.release(&claim.key, &claim.node);
            return ClaimReply { claimer: String::new(), lease_ms: 0, complete: Vec::new() };
        }
        let lease_ms = CLAIM_LEASE.as_millis() as u64;
        match directory.claim(&claim.key, &claim.node, now, CLAIM_LEASE) {
            ClaimState::Complete(holders) => ClaimReply {
                claimer: String::new(),
                lease_ms: 0,
                complete: holders
                    .into_iter()
                    .map(|h| ProtoHolder { node: h.node, addr: h.addr.to_string(), complete: true })
                    .collect(),
            },
            ClaimState::Granted => ClaimReply { claimer: claim.node.clone(), lease_ms, complete: Vec::new() },
            ClaimState::HeldBy(node) => ClaimReply { claimer: node, lease_ms, complete: Vec::new() },
        }
    }

    /// Asks the first live directory node of `key` for the claim on it (or
    /// renews this node's), or gives it up with `release`. A directory node
    /// that does not answer within the lookup timeout is passed over for
    /// the next; `None` when none answers. Nodes that see different members
    /// may ask different directory nodes for a while, and then both be
    /// granted: a claim saves duplicate work, it does not exclude.
    pub async fn claim(&self, key: &Key, release: bool) -> Option<ClaimState> {
        let live = self.live();
        let request = ClaimRequest { key: *key, node: self.me.name.clone(), addr: self.me.addr, release };
        let asking = PeerRequest::Claim(request.clone());
        for node in self.directory_nodes(key, &live) {
            if node.name == self.me.name {
                return Some(claim_state(self.claim_reply(&request, Instant::now()), &self.me.name));
            }
            let asked = self.pool.request(node.addr, &asking);
            match tokio::time::timeout(self.lookup_timeout, asked).await {
                Ok(Ok(replies)) => match replies.first().and_then(|r| r.kind.clone()) {
                    Some(Kind::Claim(reply)) => return Some(claim_state(reply, &self.me.name)),
                    other => {
                        // A node that does not know claims (an older
                        // version) is passed over; its connection is fine.
                        tracing::debug!(peer = %node.addr, reply = ?other, "a claim answered out of turn");
                        continue;
                    }
                },
                Ok(Err(e)) => tracing::debug!(peer = %node.addr, error = %e, "claim not answered"),
                Err(_) => tracing::debug!(peer = %node.addr, "claim timed out"),
            }
            self.pool.forget(node.addr);
        }
        None
    }

    /// The live members by id, this node included.
    fn live(&self) -> HashMap<NodeId, Member> {
        self.membership.live().into_iter().map(|m| (m.node_id(), m)).collect()
    }

    fn directory_nodes(&self, key: &Key, live: &HashMap<NodeId, Member>) -> Vec<Member> {
        let ring = Ring::new(live.keys().copied());
        ring.directory(key, self.replicas).into_iter().filter_map(|id| live.get(&id).cloned()).collect()
    }

    /// Tells the keys' directory nodes that this node holds them (whole, or
    /// in part while it fetches them).
    pub async fn announce(&self, complete: &[Key], partial: &[Key]) {
        self.announce_learning(complete, partial, false).await
    }

    /// [`Self::announce`] as a node joining the groups of `partial` keys
    /// (it starts fetching them): directory nodes answer an announcement
    /// of partial keys with the keys' holders, and where every directory
    /// node of a key answered, the merged answer is kept as a lookup
    /// ([`LookupCache`]), fresh for about one more round trip, so the fetch
    /// that follows needs no round trip of its own to find its group. An
    /// announcement that took [`FRESH`] or longer, or during which the
    /// membership moved, keeps nothing.
    pub async fn join(&self, complete: &[Key], partial: &[Key]) {
        self.announce_learning(complete, partial, true).await
    }

    async fn announce_learning(&self, complete: &[Key], partial: &[Key], learn: bool) {
        let (epoch, sent) = (self.epoch.load(Ordering::SeqCst), Instant::now());
        let live = self.live();
        let mut per_node: HashMap<SocketAddr, (Member, Holdings)> = HashMap::new();
        // Per partial key: the remote directory nodes asked, and what
        // answered (with this node's own directory entries).
        let mut groups: HashMap<Key, Group> = HashMap::new();
        for (keys, is_complete) in [(complete, true), (partial, false)] {
            for key in keys {
                for node in self.directory_nodes(key, &live) {
                    if !is_complete && learn && node.name != self.me.name {
                        groups.entry(*key).or_default().asked.insert(node.addr);
                    }
                    let (_, holdings) =
                        per_node.entry(node.addr).or_insert_with(|| (node.clone(), Holdings::default()));
                    if is_complete { &mut holdings.complete } else { &mut holdings.partial }.push(*key);
                }
            }
        }
        let mut sends = tokio::task::JoinSet::new();
        for (addr, (node, holdings)) in per_node {
            for batch in batches(holdings) {
                let a = Announcement {
                    node: self.me.name.clone(),
                    addr: self.me.addr,
                    complete: batch.complete,
                    partial: batch.partial,
                };
                if node.name == self.me.name {
                    let now = Instant::now();
                    self.record(&a, now);
                    let directory = self.directory.lock();
                    for key in a.partial.iter().filter(|_| learn) {
                        groups.entry(*key).or_default().found.extend(directory.holders(key, now));
                    }
                    continue;
                }
                self.metrics.announcements.inc();
                let pool = self.pool.clone();
                sends.spawn(async move {
                    let request = PeerRequest::Announce(a);
                    match tokio::time::timeout(ANNOUNCE_TIMEOUT, pool.request(addr, &request)).await {
                        Ok(Ok(replies)) => (addr, holders_by_key(&replies)),
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "announcement not delivered");
                            (addr, Vec::new())
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "announcement timed out");
                            (addr, Vec::new())
                        }
                    }
                });
            }
        }
        while let Some(joined) = sends.join_next().await {
            let Ok((addr, answer)) = joined else { continue };
            take_answer(&mut groups, addr, answer);
        }
        let took = sent.elapsed();
        if !learn || took >= FRESH || self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let learnt = learnt(groups, &self.me.name, &live);
        // Fresh for one more round trip from now, and for the fetch's first
        // plan whenever it comes ([`LookupCache::put_joined`]); nodes
        // joining meanwhile are seen from its next plan on.
        let fresh = (took * 2).max(MIN_LEARNT_FRESH);
        let mut lookups = self.lookups.lock();
        for (key, holders) in learnt {
            lookups.put_joined(key, holders, &self.me.name, sent, fresh);
        }
    }

    /// Who holds `key`, as its directory nodes say (this node included when
    /// it announced it); holders gossip says are gone are left out.
    pub async fn lookup(&self, key: &Key) -> Vec<Holder> {
        if let Cached::Use(holders) = self.lookups.lock().get(key, Instant::now()) {
            return holders;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let live = self.live();
        // Every directory node of the key, at once; their answers merged (a
        // directory node that just took the key may not know every holder yet).
        let mut asks = tokio::task::JoinSet::new();
        let mut found: Vec<Holder> = Vec::new();
        for node in self.directory_nodes(key, &live) {
            if node.name == self.me.name {
                found.extend(self.directory.lock().holders(key, Instant::now()));
                continue;
            }
            self.metrics.directory_lookups.inc();
            let (pool, request, timeout) =
                (self.pool.clone(), PeerRequest::Lookup(vec![*key]), self.lookup_timeout);
            asks.spawn(async move {
                match tokio::time::timeout(timeout, pool.request(node.addr, &request)).await {
                    Ok(Ok(replies)) => holders_of(&replies),
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %node.addr, error = %e, "directory lookup failed");
                        pool.forget(node.addr);
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::debug!(peer = %node.addr, "directory lookup timed out");
                        pool.forget(node.addr);
                        Vec::new()
                    }
                }
            });
        }
        while let Some(answer) = asks.join_next().await {
            found.extend(answer.unwrap_or_default());
        }
        let merged = merge(found, &self.me.name, &live);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            self.lookups.lock().put(*key, merged.clone(), &self.me.name, Instant::now());
        }
        merged
    }
}

fn claim_state(reply: ClaimReply, me: &str) -> ClaimState {
    let complete: Vec<Holder> = reply
        .complete
        .into_iter()
        .filter_map(|h| Some(Holder { node: h.node, addr: h.addr.parse().ok()?, complete: true }))
        .collect();
    if !complete.is_empty() {
        ClaimState::Complete(complete)
    } else if reply.claimer == me || reply.claimer.is_empty() {
        ClaimState::Granted
    } else {
        ClaimState::HeldBy(reply.claimer)
    }
}

/// A directory node's answer to an announcement, taken for the keys it
/// was asked about, once per node.
fn take_answer(groups: &mut HashMap<Key, Group>, from: SocketAddr, answer: Vec<(Key, Vec<Holder>)>) {
    for (key, holders) in answer {
        if let Some(group) = groups.get_mut(&key) {
            if group.asked.contains(&from) && group.answered.insert(from) {
                group.found.extend(holders);
            }
        }
    }
}

/// The groups every directory node of the key answered for, merged. A
/// directory node that did not answer (or predates the answer) may know
/// holders the others do not: those keys are asked afresh.
fn learnt(groups: HashMap<Key, Group>, me: &str, live: &HashMap<NodeId, Member>) -> Vec<(Key, Vec<Holder>)> {
    groups
        .into_iter()
        .filter(|(_, g)| g.answered.len() == g.asked.len())
        .map(|(key, g)| (key, merge(g.found, me, live)))
        .collect()
}

/// Holders reported by several directory nodes, one per node (complete if
/// any said so), without nodes that are not live (this node aside).
fn merge(found: Vec<Holder>, me: &str, live: &HashMap<NodeId, Member>) -> Vec<Holder> {
    let mut merged: Vec<Holder> = Vec::new();
    for holder in found {
        if holder.node != me && !live.values().any(|m| m.name == holder.node) {
            continue;
        }
        match merged.iter_mut().find(|h| h.node == holder.node) {
            Some(known) => known.complete |= holder.complete,
            None => merged.push(holder),
        }
    }
    merged
}

fn holders_of(replies: &[strata_wire::Response]) -> Vec<Holder> {
    holders_by_key(replies).into_iter().flat_map(|(_, holders)| holders).collect()
}

/// The holders a directory node named per key (an announcement's answer;
/// keys it did not name are left out).
fn holders_by_key(replies: &[strata_wire::Response]) -> Vec<(Key, Vec<Holder>)> {
    let Some(Kind::Lookup(LookupReply { holders })) = replies.first().and_then(|r| r.kind.clone()) else {
        return Vec::new();
    };
    holders
        .into_iter()
        .filter_map(|h| {
            let key: Key = h.key.as_slice().try_into().ok()?;
            let holders = h
                .holders
                .into_iter()
                .filter_map(|h| {
                    Some(Holder { node: h.node, addr: h.addr.parse().ok()?, complete: h.complete })
                })
                .collect();
            Some((key, holders))
        })
        .collect()
}

/// Splits holdings into announcements of at most MAX_KEYS keys.
fn batches(holdings: Holdings) -> Vec<Holdings> {
    let mut out: Vec<Holdings> = holdings
        .complete
        .chunks(MAX_KEYS)
        .map(|c| Holdings { complete: c.to_vec(), partial: Vec::new() })
        .collect();
    out.extend(
        holdings.partial.chunks(MAX_KEYS).map(|p| Holdings { complete: Vec::new(), partial: p.to_vec() }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> Member {
        Member { name: name.into(), addr: SocketAddr::from(([10, 0, 0, 1], port)), incarnation: 1 }
    }

    fn holder(name: &str, port: u16, complete: bool) -> Holder {
        Holder { node: name.into(), addr: SocketAddr::from(([10, 0, 0, 1], port)), complete }
    }

    #[test]
    fn answers_merge_per_node_and_leave_out_nodes_that_are_gone() {
        let live: HashMap<NodeId, Member> =
            [member("a", 1), member("b", 2)].into_iter().map(|m| (m.node_id(), m)).collect();
        let found = vec![
            holder("a", 1, false),
            holder("gone", 3, true),
            holder("a", 1, true),
            holder("me", 9, true),
            holder("b", 2, false),
        ];
        let merged = merge(found, "me", &live);
        assert_eq!(merged, vec![holder("a", 1, true), holder("me", 9, true), holder("b", 2, false)]);
    }

    #[test]
    fn a_group_is_learnt_only_when_every_directory_node_asked_answered_once() {
        let live: HashMap<NodeId, Member> =
            [member("a", 1), member("b", 2), member("c", 3)].into_iter().map(|m| (m.node_id(), m)).collect();
        let (a, b, c) = (member("a", 1).addr, member("b", 2).addr, member("c", 3).addr);
        let (both, one, mine) = ([1; 32], [2; 32], [3; 32]);
        let mut groups: HashMap<Key, Group> = HashMap::new();
        groups.entry(both).or_default().asked.extend([a, b]);
        groups.entry(one).or_default().asked.extend([a]);
        // A key only this node is the directory node of: its own entries.
        groups.entry(mine).or_default().found.push(holder("me", 9, false));
        // A answers about both keys, twice (the second is not counted); C,
        // never asked, answers about `both`; B never answers.
        take_answer(
            &mut groups,
            a,
            vec![(both, vec![holder("a", 1, true)]), (one, vec![holder("a", 1, true)])],
        );
        take_answer(&mut groups, a, vec![(both, vec![holder("a", 1, true)])]);
        take_answer(&mut groups, c, vec![(both, vec![holder("c", 3, false)])]);
        let mut learnt = learnt(groups, "me", &live);
        learnt.sort_by_key(|(k, _)| *k);
        assert_eq!(
            learnt,
            vec![(one, vec![holder("a", 1, true)]), (mine, vec![holder("me", 9, false)])],
            "`both` waits for B"
        );
    }

    #[test]
    fn announcements_carry_at_most_max_keys_each() {
        let holdings =
            Holdings { complete: vec![[1; 32]; MAX_KEYS + 1], partial: vec![[2; 32]; MAX_KEYS * 2] };
        let sizes: Vec<(usize, usize)> =
            batches(holdings).iter().map(|b| (b.complete.len(), b.partial.len())).collect();
        assert_eq!(sizes, vec![(MAX_KEYS, 0), (1, 0), (0, MAX_KEYS), (0, MAX_KEYS)]);
    }
}
