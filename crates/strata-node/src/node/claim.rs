//! One pull from outside the cluster per image: before a node pulls an
//! image from its registry it claims the image's key at the key's first
//! directory node; a node that finds the claim held waits for its holder
//! to announce the image and then takes it from the cluster.

use std::sync::Weak;
use std::time::Duration;

use super::*;
use crate::directory::ClaimState;
use crate::locator::CLAIM_LEASE;

/// How often a node waiting on another node's claim asks again.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// What a node asked for an image not yet in the cluster does.
#[derive(Debug)]
pub enum Claimed {
    /// Pull it from outside the cluster: this node holds the claim while
    /// the guard lives.
    Pull(ClaimGuard),
    /// Take it from these nodes, which hold it whole.
    Holders(Vec<Holder>),
}

/// This node's claim on a key: renewed in the background every third of
/// [`CLAIM_LEASE`], released when dropped. Announce what was pulled
/// before dropping it, so that nodes waiting on the claim find it.
#[derive(Debug)]
pub struct ClaimGuard {
    key: Key,
    node: Weak<Node>,
    renew: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            node.claims.lock().remove(&self.key);
        }
        let Some(renew) = self.renew.take() else { return };
        renew.abort();
        if let Some(node) = self.node.upgrade() {
            let key = self.key;
            node.runtime.clone().spawn(async move {
                node.locator.claim(&key, true).await;
            });
        }
    }
}

/// One pull counted in `claims_waiting` while this lives.
struct Waiting(Arc<crate::metrics::Metrics>);

impl Waiting {
    fn new(metrics: &Arc<crate::metrics::Metrics>) -> Self {
        metrics.claims_waiting.inc();
        Self(metrics.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.claims_waiting.dec();
    }
}

impl Node {
    /// Waits until this node may fetch what `key` names from outside the
    /// cluster for everyone, or nodes hold it whole. While another node's
    /// claim runs, the directory node is asked again every 200 ms; a claim
    /// whose holder stops renewing it (it failed, or left) passes to a
    /// waiter within [`CLAIM_LEASE`]. With no directory node answering,
    /// the claim is this node's (it pulls alone rather than not at all).
    /// Cancelled by dropping the future.
    pub async fn claim(self: &Arc<Self>, key: Key) -> Claimed {
        let mut waited_on: Option<String> = None;
        // Counted in `claims_waiting` from the first wait until this
        // returns or is dropped.
        let mut waiting: Option<Waiting> = None;
        loop {
            // A pull of this image already runs here: wait for it as other
            // nodes do (the directory grants a node's claim to it again).
            if !self.claims.lock().insert(key) {
                waiting.get_or_insert_with(|| Waiting::new(&self.metrics));
                tokio::time::sleep(CLAIM_POLL).await;
                continue;
            }
            // Reserved here until the directory answers (given back if this
            // future is dropped meanwhile): kept when the claim is this
            // node's, given back otherwise.
            let reserved = ClaimGuard { key, node: Arc::downgrade(self), renew: None };
            match self.locator.claim(&key, false).await {
                Some(ClaimState::Complete(holders)) => {
                    let holders: Vec<Holder> =
                        holders.into_iter().filter(|h| h.node != self.me.name).collect();
                    if !holders.is_empty() {
                        return Claimed::Holders(holders);
                    }
                    // Only this node holds it (a restart): pull again.
                    return Claimed::Pull(self.hold_claim(reserved));
                }
                Some(ClaimState::Granted) => return Claimed::Pull(self.hold_claim(reserved)),
                None => {
                    tracing::warn!("no directory node answered a claim: pulling without one");
                    return Claimed::Pull(reserved);
                }
                Some(ClaimState::HeldBy(other)) => {
                    drop(reserved);
                    if waited_on.as_deref() != Some(other.as_str()) {
                        tracing::info!(claimer = %other, "another node is pulling this image: waiting for it");
                        waited_on = Some(other);
                    }
                    waiting.get_or_insert_with(|| Waiting::new(&self.metrics));
                    tokio::time::sleep(CLAIM_POLL).await;
                }
            }
        }
    }

    /// `reserved` made this node's claim: renewed until dropped.
    fn hold_claim(self: &Arc<Self>, mut reserved: ClaimGuard) -> ClaimGuard {
        let (key, node) = (reserved.key, reserved.node.clone());
        let renew = self.runtime.spawn({
            async move {
                loop {
                    tokio::time::sleep(CLAIM_LEASE / 3).await;
                    let Some(node) = node.upgrade() else { return };
                    match node.locator.claim(&key, false).await {
                        Some(ClaimState::Granted) | None => {}
                        Some(other) => {
                            tracing::warn!(state = ?other, "the claim passed to another node while pulling");
                            return;
                        }
                    }
                }
            }
        });
        reserved.renew = Some(renew);
        reserved
    }
}
