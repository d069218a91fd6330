//! Chunks that open import transactions rely on, so GC leaves them alone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use strata_types::ChunkId;

/// Pin counts by chunk. The lock is the serialization point between
/// transactions (pin, then look the chunk up) and deleters (check pins and
/// references, then delete, all while holding the lock).
#[derive(Default)]
pub(crate) struct PinTable {
    counts: Mutex<HashMap<ChunkId, u32>>,
}

pub(crate) type PinGuard<'a> = MutexGuard<'a, HashMap<ChunkId, u32>>;

impl PinTable {
    pub(crate) fn lock(&self) -> PinGuard<'_> {
        // A panic while holding the lock leaves counts that are still valid.
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn pin(&self, id: ChunkId) {
        *self.lock().entry(id).or_default() += 1;
    }

    pub(crate) fn unpin_all(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut counts = self.lock();
        for id in ids {
            if let Some(n) = counts.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&id);
                }
            }
        }
    }
}
