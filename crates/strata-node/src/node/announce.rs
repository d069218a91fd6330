//! What this node holds, told to the cluster: everything at once, every
//! announce interval and soon after membership moves (the directory moves
//! with it).

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use strata_store::StoreError;

use super::*;
use crate::membership::MemberState;

impl Node {
    /// Announces everything the store holds: whole layers, image names and
    /// the images' layer chains ([`chain_key`]) as complete, layers being
    /// fetched as partial.
    pub async fn announce_all(&self) -> Result<(), NodeError> {
        let store = self.store.clone();
        let (layers, (names, chains)) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let layers: Vec<LayerId> = store.layers()?.into_iter().map(|l| l.id).collect();
            let mut names = Vec::new();
            let mut chains = BTreeSet::new();
            let mut seen = BTreeSet::new();
            for image in store.images()? {
                if seen.insert(image.id) {
                    chains.extend(strata_oci::image_chain_ids(&image.record).iter().map(chain_key));
                }
                if let Some(chain) = strata_oci::chain_of_name(&image.name) {
                    chains.insert(chain_key(&chain));
                }
                names.push(image.name);
            }
            Ok((layers, (names, chains)))
        })
        .await
        .map_err(|e| NodeError::Setup(e.to_string()))??;
        let (whole, partial) = self.progress.split(&layers);
        let mut complete: Vec<Key> = whole.iter().map(|l| *l.as_bytes()).collect();
        complete.extend(names.iter().map(|n| name_key(n)));
        complete.extend(chains);
        let partial: Vec<Key> = partial.iter().map(|l| *l.as_bytes()).collect();
        self.locator.announce(&complete, &partial).await;
        Ok(())
    }
}

/// Announces holdings every interval, and soon after the membership
/// changes (the directory moves with it); forgets holders gossip declared
/// down; expires stale directory entries.
pub(super) async fn announce_loop(node: Weak<Node>) {
    let (mut members, mut stopping, interval) = match node.upgrade() {
        Some(n) => (n.locator.subscribe(), n.stopping.subscribe(), n.config.announce_interval),
        None => return,
    };
    loop {
        let previous: BTreeSet<String> = {
            let Some(node) = node.upgrade() else { return };
            let view = members.borrow_and_update().clone();
            node.locator.members_changed(&view, Instant::now());
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
