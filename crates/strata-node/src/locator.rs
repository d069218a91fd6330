//! Who is in the cluster and who holds what: gossip membership, the
//! directory entries placed on this node, announcing what this node holds
//! to each key's directory nodes (rendezvous over the live members), and
//! looking up who holds a key (answers reused briefly: [`LookupCache`]).

use std::collections::HashMap;
use std::net::SocketAddr;
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
use crate::lookup_cache::{Cached, LookupCache};
use crate::membership::{Member, MemberState, MemberView, Membership};
use crate::metrics::Metrics;

/// A directory key: a LayerId's bytes, or [`crate::name_key`] of an image name.
pub type Key = [u8; 32];

/// How long an announcement to one directory node may take.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a claim lasts unless its holder renews it (see
/// [`Locator::claim`]); holders renew every third of it.
pub const CLAIM_LEASE: Duration = Duration::from_secs(15);

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
        self.lookups.lock().clear();
    }

    /// A peer's announcement to this node as a directory node.
    pub fn record(&self, announcement: &Announcement, now: Instant) {
        self.directory.lock().record(announcement, now);
    }

    /// The reply to a peer's lookup: the holders this node's directory
    /// entries name for each key.
    pub fn lookup_reply(&self, keys: &[Key], now: Instant) -> LookupReply {
        let directory = self.directory.lock();
        let holders = keys
            .iter()
            .map(|key| Holders {
                key: key.to_vec(),
                holders: directory
                    .holders(key, now)
                    .into_iter()
                    .map(|h| ProtoHolder { node: h.node, addr: h.addr.to_string(), complete: h.complete })
                    .collect(),
            })
            .collect();
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
        let live = self.live();
        let mut per_node: HashMap<SocketAddr, (Member, Holdings)> = HashMap::new();
        for (keys, is_complete) in [(complete, true), (partial, false)] {
            for key in keys {
                for node in self.directory_nodes(key, &live) {
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
                    self.record(&a, Instant::now());
                    continue;
                }
                self.metrics.announcements.inc();
                let pool = self.pool.clone();
                sends.spawn(async move {
                    let request = PeerRequest::Announce(a);
                    match tokio::time::timeout(ANNOUNCE_TIMEOUT, pool.request(addr, &request)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "announcement not delivered"),
                        Err(_) => tracing::debug!(peer = %addr, "announcement timed out"),
                    }
                });
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Who holds `key`, as its directory nodes say (this node included when
    /// it announced it); holders gossip says are gone are left out.
    pub async fn lookup(&self, key: &Key) -> Vec<Holder> {
        if let Cached::Use(holders) = self.lookups.lock().get(key, Instant::now()) {
            return holders;
        }
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
        self.lookups.lock().put(*key, merged.clone(), &self.me.name, Instant::now());
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
    let Some(Kind::Lookup(LookupReply { holders })) = replies.first().and_then(|r| r.kind.clone()) else {
        return Vec::new();
    };
    holders
        .into_iter()
        .flat_map(|h| h.holders)
        .filter_map(|h| Some(Holder { node: h.node, addr: h.addr.parse().ok()?, complete: h.complete }))
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
    fn announcements_carry_at_most_max_keys_each() {
        let holdings =
            Holdings { complete: vec![[1; 32]; MAX_KEYS + 1], partial: vec![[2; 32]; MAX_KEYS * 2] };
        let sizes: Vec<(usize, usize)> =
            batches(holdings).iter().map(|b| (b.complete.len(), b.partial.len())).collect();
        assert_eq!(sizes, vec![(MAX_KEYS, 0), (1, 0), (0, MAX_KEYS), (0, MAX_KEYS)]);
    }
}
