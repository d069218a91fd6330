//! The directory as this node uses it: announcing what it holds to each
//! key's directory nodes (rendezvous over the live members), looking up who
//! holds a key, and announcing again as time passes and membership moves.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

use strata_placement::Ring;
use strata_proto::v1::LookupReply;
use strata_store::{LayerId, StoreError};
use strata_types::NodeId;
use strata_wire::response::Kind;
use strata_wire::{Announcement, PeerRequest, MAX_KEYS};

use super::*;

/// Keys held whole and keys being fetched, as one announcement carries them.
#[derive(Default)]
pub(super) struct Holdings {
    complete: Vec<Key>,
    partial: Vec<Key>,
}

impl Node {
    /// The live members by id, this node included.
    pub(super) fn live(&self) -> HashMap<NodeId, Member> {
        self.membership.live().into_iter().map(|m| (m.node_id(), m)).collect()
    }

    pub(super) fn directory_nodes(&self, key: &Key, live: &HashMap<NodeId, Member>) -> Vec<Member> {
        let ring = Ring::new(live.keys().copied());
        ring.directory(key, self.config.directory_replicas.max(1))
            .into_iter()
            .filter_map(|id| live.get(&id).cloned())
            .collect()
    }

    /// Tells the keys' directory nodes that this node holds them.
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
                    self.directory.lock().record(&a, Instant::now());
                    continue;
                }
                self.metrics.announcements.inc();
                let pool = self.pool.clone();
                sends.spawn(async move {
                    let request = PeerRequest::Announce(a);
                    match tokio::time::timeout(Duration::from_secs(2), pool.request(addr, &request)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "announcement not delivered"),
                        Err(_) => tracing::debug!(peer = %addr, "announcement timed out"),
                    }
                });
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Announces everything the store holds: whole layers and image names
    /// as complete, layers being fetched as partial.
    pub async fn announce_all(&self) -> Result<(), NodeError> {
        let store = self.store.clone();
        let (layers, names) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let layers: Vec<LayerId> = store.layers()?.into_iter().map(|l| l.id).collect();
            let names: Vec<String> = store.images()?.into_iter().map(|i| i.name).collect();
            Ok((layers, names))
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let (complete, partial) = {
            let mut partial = self.partial.lock();
            partial.retain(|l, _| layers.contains(l));
            let mut complete: Vec<Key> =
                layers.iter().filter(|l| !partial.contains_key(l)).map(|l| *l.as_bytes()).collect();
            complete.extend(names.iter().map(|n| name_key(n)));
            (complete, partial.keys().map(|l| *l.as_bytes()).collect::<Vec<_>>())
        };
        self.announce(&complete, &partial).await;
        Ok(())
    }

    /// Who holds `key`, as its directory nodes say (this node included when
    /// it announced it). Answers are reused for a moment ([`LookupCache`]).
    pub async fn lookup(&self, key: &Key) -> Vec<Holder> {
        if let Cached::Use(holders) = self.lookups.lock().get(key, Instant::now()) {
            return holders;
        }
        let live = self.live();
        let per_node = (self.config.fetch_deadline / 4).min(Duration::from_secs(1));
        // Every directory node of the key, at once; their answers merged (a
        // directory node that just took the key may not know every holder yet).
        let mut asks = tokio::task::JoinSet::new();
        let mut found: Vec<Holder> = Vec::new();
        for node in self.directory_nodes(key, &live) {
            if node.name == self.me.name {
                found.extend(self.directory.lock().holders(key, Instant::now()));
                continue;
            }
            let (pool, request) = (self.pool.clone(), PeerRequest::Lookup(vec![*key]));
            asks.spawn(async move {
                match tokio::time::timeout(per_node, pool.request(node.addr, &request)).await {
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
        let mut merged: Vec<Holder> = Vec::new();
        for holder in found {
            // Holders the gossip says are gone are not worth asking.
            if holder.node != self.me.name && !live.values().any(|m| m.name == holder.node) {
                continue;
            }
            match merged.iter_mut().find(|h| h.node == holder.node) {
                Some(known) => known.complete |= holder.complete,
                None => merged.push(holder),
            }
        }
        self.lookups.lock().put(*key, merged.clone(), &self.me.name, Instant::now());
        merged
    }
}

pub(super) fn holders_of(replies: &[strata_wire::Response]) -> Vec<Holder> {
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
pub(super) fn batches(holdings: Holdings) -> Vec<Holdings> {
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

/// Announces holdings every interval, and soon after the membership
/// changes (the directory moves with it); forgets holders gossip declared
/// down; expires stale directory entries.
pub(super) async fn announce_loop(node: Weak<Node>) {
    let (mut members, mut stopping, interval) = match node.upgrade() {
        Some(n) => (n.membership.subscribe(), n.stopping.subscribe(), n.config.announce_interval),
        None => return,
    };
    loop {
        let previous: BTreeSet<String> = {
            let Some(node) = node.upgrade() else { return };
            let view = members.borrow_and_update().clone();
            {
                let mut directory = node.directory.lock();
                for m in view.iter().filter(|m| m.state == MemberState::Down) {
                    directory.forget_node(&m.name);
                }
                directory.expire(Instant::now());
            }
            node.lookups.lock().clear();
            if let Err(e) = node.announce_all().await {
                tracing::warn!(error = %e, "announcing holdings");
            }
            view.iter().filter(|m| m.state != MemberState::Down).map(|m| m.name.clone()).collect()
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = async {
                loop {
                    if members.changed().await.is_err() {
                        return false;
                    }
                    let now: BTreeSet<String> = members
                        .borrow()
                        .iter()
                        .filter(|m| m.state != MemberState::Down)
                        .map(|m| m.name.clone())
                        .collect();
                    if now != previous {
                        return true;
                    }
                }
            } => {
                if !changed { return; }
                // Let a burst of joins settle before re-announcing.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = stopping.changed() => return,
        }
    }
}
