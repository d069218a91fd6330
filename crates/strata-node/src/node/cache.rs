//! The disk cap: the chunk store kept under `max_bytes` (stored bytes, as
//! the store's running totals count them) and the disk above a free-space
//! floor, by evicting chunks the node can fetch again.
//!
//! Eviction starts above the high watermark (a fraction of `max_bytes`)
//! or below the free-space floor, and goes down to the low watermark, so
//! it runs seldom and in bulk (overlaybd's cache does the same). It runs
//! every `interval`, and at once when a background fetch would cross the
//! cap (the fetch waits for room, and pauses when none can be made: the
//! store never grows past the cap for work nobody waits on; a read is
//! always served, the cap notwithstanding).
//!
//! What may go, least recently used image first (`FetchState::last_used`:
//! a pull, a container start, a background fetch):
//! - a layer of an image that no live mount uses, that is not pinned
//!   (imported or committed here: perhaps the only copy), and that was not
//!   used within the grace period (so an eviction never races a pull, a
//!   mount about to start, a fetch or an import: imports also pin their
//!   chunks in the store until they commit);
//! - only if another live node announces the layer complete: the node can
//!   fetch it again;
//! - and of its chunks only those no protected layer also lists.
//!
//! An evicted layer stays (its index and records): it is announced
//! partial, and a read fetches its chunks again. Chunk, meta entry and
//! totals go in one batch: a crash midway leaves every chunk whole or
//! gone, and a restarted node counts what each layer lacks from the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strata_store::{Store, StoreError};
use strata_types::{CacheVerdict, ChunkId, ImageId, LayerId};

use super::Node;

/// How a node caps its store (`[cache]` settings).
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Stored chunk bytes at most; `None`: no cap.
    pub max_bytes: Option<u64>,
    /// Free bytes the store's filesystem keeps at least; `None`: no floor.
    pub min_free_bytes: Option<u64>,
    /// Fractions of `max_bytes`: eviction starts above `high`, stops at `low`.
    pub high: f64,
    pub low: f64,
    /// Images used more recently than this are never evicted.
    pub grace: Duration,
    /// How often the cap is checked.
    pub interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: None,
            min_free_bytes: None,
            high: 0.95,
            low: 0.80,
            grace: Duration::from_secs(60),
            interval: Duration::from_secs(30),
        }
    }
}

/// The images live mounts use, as the daemon knows them; `None` when it
/// cannot tell (then nothing is evicted).
pub type InUse = Box<dyn Fn() -> Option<HashSet<ImageId>> + Send + Sync>;

/// A layer's missing count while its chunks are evicted: no arrival brings
/// it to zero before the true count is set.
const EVICTING: usize = usize::MAX / 2;

/// What an eviction run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub layers: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
}

/// An image that may lose chunks, and its layers no protected image uses.
struct Candidate {
    image: ImageId,
    last_used: u64,
    layers: Vec<LayerId>,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Node {
    /// Tells the node which images live mounts use (the cache never evicts
    /// their chunks).
    pub fn set_in_use(&self, in_use: InUse) {
        *self.in_use.lock() = Some(in_use);
    }

    fn images_in_use(&self) -> Option<HashSet<ImageId>> {
        match self.in_use.lock().as_ref() {
            Some(f) => f(),
            None => Some(HashSet::new()),
        }
    }

    /// How many stored bytes must go now to meet the cap and the floor
    /// (0: none), given `adding` bytes about to be stored.
    fn over_cap(&self, adding: u64) -> Result<u64, StoreError> {
        let cache = &self.config.cache;
        let mut need = 0;
        if let Some(max) = cache.max_bytes {
            let used = self.store.stored_bytes()? + adding;
            if used as f64 > max as f64 * cache.high {
                need = used.saturating_sub((max as f64 * cache.low) as u64);
            }
        }
        if let Some(floor) = cache.min_free_bytes {
            let free = free_bytes(self.store.path()).unwrap_or(u64::MAX).saturating_sub(adding);
            if free < floor {
                need = need.max(floor - free);
            }
        }
        Ok(need)
    }

    /// Before a fetched chunk of `bytes` is kept (whoever waits on it):
    /// evicts first when it would cross the cap, so the store stays under
    /// it while anything can go. The chunk is kept either way.
    pub(crate) async fn room_for_fetched(self: &Arc<Self>, bytes: u64) {
        if self.config.cache.max_bytes.is_none() && self.config.cache.min_free_bytes.is_none() {
            return;
        }
        if matches!(self.over_cap(bytes), Ok(need) if need > 0) {
            // The cache's task evicts; the read does not wait for it.
            self.cache_wake.notify_one();
        }
    }

    /// Whether `bytes` more may be stored by work nobody waits on: makes
    /// room by evicting when it would cross the cap; false when none could
    /// be made.
    pub(crate) async fn make_room(self: &Arc<Self>, bytes: u64) -> bool {
        if self.config.cache.max_bytes.is_none() && self.config.cache.min_free_bytes.is_none() {
            return true;
        }
        match self.over_cap(bytes) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the store's size failed");
                return true;
            }
        }
        if let Err(e) = self.enforce_cap().await {
            tracing::warn!(error = %e, "eviction failed");
        }
        // Room enough for the bytes themselves (not down to the low mark).
        let cache = &self.config.cache;
        let used = self.store.stored_bytes().unwrap_or(0) + bytes;
        let under_max = cache.max_bytes.is_none_or(|max| used <= max);
        let above_floor = cache.min_free_bytes.is_none_or(|floor| {
            free_bytes(self.store.path()).unwrap_or(u64::MAX).saturating_sub(bytes) >= floor
        });
        under_max && above_floor
    }

    /// Evicts, least recently used image first, until the store is under
    /// the low watermark and above the free-space floor, or nothing more
    /// may go. One run at a time.
    pub async fn enforce_cap(self: &Arc<Self>) -> Result<Evicted, StoreError> {
        let _one = self.evicting.lock().await;
        let need = self.over_cap(0)?;
        let mut evicted = Evicted::default();
        if need == 0 {
            return Ok(evicted);
        }
        // Which images mounts use: unknown (their records unreadable), nothing goes.
        let Some(in_use) = self.images_in_use() else {
            tracing::warn!("the mounts' images are unknown: nothing evicted");
            return Ok(evicted);
        };
        let (store, grace) = (self.store.clone(), self.config.cache.grace);
        let Candidates { open: candidates, protected, .. } =
            tokio::task::spawn_blocking(move || candidates(&store, &in_use, unix_now(), grace))
                .await
                .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))??;
        let protected = Arc::new(protected);
        'images: for candidate in candidates {
            for layer in candidate.layers.iter().rev() {
                if evicted.stored_bytes >= need {
                    break 'images;
                }
                // A mount that started since the candidates were chosen.
                if self.images_in_use().is_none_or(|now| now.contains(&candidate.image)) {
                    continue 'images;
                }
                // Only where a copy stays: another node holds the layer
                // whole and sorts before this one (the first complete
                // holder by name never evicts, so two nodes evicting at
                // once cannot both drop the last copies).
                if !self.keeps_a_copy(&self.lookup(layer.as_bytes()).await) {
                    continue;
                }
                let freed = self.evict_layer(*layer, protected.clone()).await?;
                if freed.chunks > 0 {
                    tracing::info!(image = %candidate.image, %layer, chunks = freed.chunks, bytes = freed.stored_bytes, last_used = candidate.last_used, "layer evicted");
                    evicted.layers += 1;
                    evicted.chunks += freed.chunks;
                    evicted.stored_bytes += freed.stored_bytes;
                }
            }
        }
        if evicted.chunks > 0 {
            self.metrics.evicted_chunks.inc_by(evicted.chunks);
            self.metrics.evicted_bytes.inc_by(evicted.stored_bytes);
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.compact_chunks()).await.ok();
        }
        if evicted.stored_bytes < need {
            tracing::warn!(need, freed = evicted.stored_bytes, "the cache cap cannot be met: what is left is in use, pinned, recent or held by no other node");
        }
        Ok(evicted)
    }

    /// Whether `holders` (of a layer) keep a copy if this node evicts it:
    /// another live node holds it whole and sorts before this one by name
    /// (the first complete holder never evicts, so two nodes evicting at
    /// once cannot both drop the last copies).
    fn keeps_a_copy(&self, holders: &[crate::directory::Holder]) -> bool {
        holders.iter().any(|h| h.complete && h.node.as_str() < self.me.name.as_str())
    }

    /// What the cache would do with each image in the store now
    /// ([`CacheVerdict`], for `strata status`), by [`Self::enforce_cap`]'s
    /// rules: pinned, used by a live mount (all of them when the mounts'
    /// images are unknown: then nothing is evicted), used within the
    /// grace period, every layer shared with such an image, or else
    /// evictable if another live node keeps a copy of one of its layers
    /// (asked of the directory, as eviction asks), only-copy if none.
    ///
    /// Errors: the store's.
    pub async fn cache_verdicts(self: &Arc<Self>) -> Result<HashMap<ImageId, CacheVerdict>, StoreError> {
        let in_use = self.images_in_use();
        let (store, grace) = (self.store.clone(), self.config.cache.grace);
        let Candidates { open, kept: mut verdicts, .. } = tokio::task::spawn_blocking(move || {
            // The mounts' images unknown: every image counts as mounted.
            let in_use = match in_use {
                Some(in_use) => in_use,
                None => store.images()?.into_iter().map(|i| i.id).collect(),
            };
            candidates(&store, &in_use, unix_now(), grace)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))??;
        for candidate in open {
            let mut verdict =
                if candidate.layers.is_empty() { CacheVerdict::Shared } else { CacheVerdict::OnlyCopy };
            for layer in &candidate.layers {
                if self.keeps_a_copy(&self.lookup(layer.as_bytes()).await) {
                    verdict = CacheVerdict::Evictable;
                    break;
                }
            }
            verdicts.insert(candidate.image, verdict);
        }
        Ok(verdicts)
    }

    /// Evicts the chunks of `layer` that no protected layer lists: the
    /// layer is announced partial first (peers stop counting on it here),
    /// then its chunks go.
    async fn evict_layer(
        self: &Arc<Self>,
        layer: LayerId,
        protected: Arc<HashSet<LayerId>>,
    ) -> Result<Evicted, StoreError> {
        // Partial from now on: no arrival can bring the count to zero (and
        // the layer announced complete) while its chunks go.
        self.progress.set(layer, EVICTING);
        self.locator.announce(&[], &[*layer.as_bytes()]).await;
        let store = self.store.clone();
        let freed =
            tokio::task::spawn_blocking(move || -> Result<(Evicted, Vec<(LayerId, usize)>), StoreError> {
                let mut chunks = Vec::new();
                let mut touched = HashSet::from([layer]);
                for id in layer_chunks(&store, &layer)? {
                    let layers = store.chunk_layers(&id)?;
                    if !layers.iter().any(|l| protected.contains(l)) && store.has_chunk(&id)? {
                        touched.extend(layers);
                        chunks.push(id);
                    }
                }
                let report = store.evict_chunks(&chunks)?;
                // Every layer that lists an evicted chunk lacks it now.
                let mut counts = Vec::new();
                for l in touched {
                    counts.push((l, store.missing_chunks(&l)?.len()));
                }
                let evicted = Evicted {
                    layers: 1,
                    chunks: report.chunks_deleted,
                    stored_bytes: report.stored_bytes_deleted,
                };
                Ok((evicted, counts))
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))?;
        let (evicted, counts) = match freed {
            Ok(freed) => freed,
            Err(e) => {
                // Counted from the store again: what went, went.
                let store = self.store.clone();
                let missing =
                    tokio::task::spawn_blocking(move || store.missing_chunks(&layer).map(|m| m.len())).await;
                self.progress.set(layer, missing.ok().and_then(Result::ok).unwrap_or(EVICTING));
                return Err(e);
            }
        };
        let mut partial = Vec::new();
        for (l, missing) in counts {
            self.progress.set(l, missing);
            if missing > 0 && l != layer {
                partial.push(*l.as_bytes());
            }
        }
        if !partial.is_empty() {
            self.locator.announce(&[], &partial).await;
        }
        Ok(evicted)
    }

    /// Checks the cap every `interval` until the node stops.
    pub(crate) async fn cache_loop(self: Arc<Self>) {
        let cache = self.config.cache;
        if cache.max_bytes.is_none() && cache.min_free_bytes.is_none() {
            return;
        }
        let mut stopping = self.stopping.subscribe();
        // After a run that could free nothing, only the interval wakes it
        // (not every chunk stored meanwhile).
        let mut stuck = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(cache.interval) => {}
                () = self.cache_wake.notified(), if !stuck => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            match self.enforce_cap().await {
                Ok(evicted) => stuck = evicted.chunks == 0 && !matches!(self.over_cap(0), Ok(0)),
                Err(e) => {
                    tracing::warn!(error = %e, "eviction failed");
                    stuck = true;
                }
            }
        }
    }

    /// Notes that `image` was used now (the cache's LRU order).
    pub fn touch(&self, image: ImageId) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.update_fetch_state(&image, |s| s.last_used = unix_now()) {
                tracing::debug!(%image, error = %e, "noting an image's use failed");
            }
        });
    }
}

/// What the cache may take from a store now ([`candidates`]).
struct Candidates {
    /// The images that may lose chunks, least recently used first (each
    /// with the layers no kept image shares).
    open: Vec<Candidate>,
    /// The layers of every kept image.
    protected: HashSet<LayerId>,
    /// The kept images and why: pinned, mounted or recent.
    kept: HashMap<ImageId, CacheVerdict>,
}

/// Sorts the store's images into those the cache may take chunks from and
/// those it keeps (pinned; used by a mount in `in_use`; used within
/// `grace` of `now`, in seconds since the epoch), with the kept images'
/// layers.
fn candidates(
    store: &Store,
    in_use: &HashSet<ImageId>,
    now: u64,
    grace: Duration,
) -> Result<Candidates, StoreError> {
    let mut images: HashMap<ImageId, Vec<LayerId>> = HashMap::new();
    for entry in store.images()? {
        images.entry(entry.id).or_insert_with(|| {
            entry.record.layers.iter().filter_map(|l| LayerId::from_slice(l).ok()).collect()
        });
    }
    let mut protected = HashSet::new();
    let mut open = Vec::new();
    let mut kept = HashMap::new();
    for (image, layers) in images {
        let state = store.fetch_state(&image)?;
        let verdict = if state.pinned {
            Some(CacheVerdict::Pinned)
        } else if in_use.contains(&image) {
            Some(CacheVerdict::Mounted)
        } else if now.saturating_sub(state.last_used) < grace.as_secs() {
            Some(CacheVerdict::Recent)
        } else {
            None
        };
        match verdict {
            Some(verdict) => {
                protected.extend(layers);
                kept.insert(image, verdict);
            }
            None => open.push(Candidate { image, last_used: state.last_used, layers }),
        }
    }
    for candidate in &mut open {
        candidate.layers.retain(|l| !protected.contains(l));
    }
    open.sort_by_key(|c| (c.last_used, c.image));
    Ok(Candidates { open, protected, kept })
}

/// The chunks a layer's index lists (what "complete" counts). Its
/// tar-splits' stay: a holder is announced complete without them, so they
/// may be the cluster's only copy (export and push rebuild tars from them).
fn layer_chunks(store: &Store, layer: &LayerId) -> Result<Vec<ChunkId>, StoreError> {
    let mut out = HashSet::new();
    for entry in &store.layer_index(layer)?.entries {
        out.extend(entry.chunks.iter().filter_map(|c| ChunkId::from_slice(&c.id).ok()));
    }
    Ok(out.into_iter().collect())
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unpinned_unused_images_past_their_grace_are_candidates_lru_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), strata_store::OpenMode::ReadWrite).unwrap();
        let mut ids = Vec::new();
        let base = strata_sample::files_layer(&[("shared/base", b"the same base layer")]).unwrap();
        for (i, name) in ["old:1", "newer:1", "pinned:1", "mounted:1", "recent:1"].iter().enumerate() {
            let archive = dir.path().join(format!("{i}.tar"));
            let own = strata_sample::files_layer(&[(&format!("own/{i}"), &[i as u8; 10])]).unwrap();
            strata_sample::write_layers_image(&archive, name, &[base.clone(), own]).unwrap();
            let report = strata_oci::import_archive(
                &store,
                &archive,
                &strata_oci::ImportOptions::default(),
                &strata_oci::NoProgress,
            )
            .unwrap();
            ids.push(report.images[0].id);
        }
        let now = 10_000;
        let used = [(0, 100), (1, 200), (2, 50), (3, 10), (4, now - 5)];
        for (i, at) in used {
            store.update_fetch_state(&ids[i], |s| s.last_used = at).unwrap();
        }
        store.update_fetch_state(&ids[2], |s| s.pinned = true).unwrap();
        let in_use = HashSet::from([ids[3]]);
        let Candidates { open, protected, kept } =
            candidates(&store, &in_use, now, Duration::from_secs(60)).unwrap();
        let order: Vec<ImageId> = open.iter().map(|c| c.image).collect();
        assert_eq!(order, vec![ids[0], ids[1]], "least recently used first; pinned, mounted, recent kept");
        let why = HashMap::from([
            (ids[2], CacheVerdict::Pinned),
            (ids[3], CacheVerdict::Mounted),
            (ids[4], CacheVerdict::Recent),
        ]);
        assert_eq!(kept, why);
        for c in &open {
            assert_eq!(c.layers.len(), 1, "the base layer, shared with kept images, stays");
            assert!(c.layers.iter().all(|l| !protected.contains(l)));
        }
    }
}
