//! Layers being fetched, and how many of their chunks are still missing:
//! what a node announces as partial, and the moment a layer becomes whole
//! (announced complete from then on).

use std::collections::HashMap;

use parking_lot::Mutex;
use strata_store::{Store, StoreError};
use strata_types::LayerId;

/// Missing-chunk counts of the layers this node holds in part.
#[derive(Default)]
pub struct LayerProgress {
    missing: Mutex<HashMap<LayerId, usize>>,
}

impl LayerProgress {
    /// The layers of `store` with chunks missing, counted (at start: a
    /// restarted node goes on announcing them as partial).
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut missing = HashMap::new();
        for layer in store.layers()? {
            let count = store.missing_chunks(&layer.id)?.len();
            if count > 0 {
                missing.insert(layer.id, count);
            }
        }
        Ok(Self { missing: Mutex::new(missing) })
    }

    /// Layers just stored with chunks missing (a pulled image's).
    pub fn add(&self, layers: HashMap<LayerId, usize>) {
        self.missing.lock().extend(layers);
    }

    /// Sets how many chunks `layer` lacks (0: whole, forgotten here).
    pub fn set(&self, layer: LayerId, missing: usize) {
        let mut all = self.missing.lock();
        if missing == 0 {
            all.remove(&layer);
        } else {
            all.insert(layer, missing);
        }
    }

    /// Whether any of `layers` has chunks missing.
    pub fn any_partial<'a>(&self, mut layers: impl Iterator<Item = &'a LayerId>) -> bool {
        let missing = self.missing.lock();
        layers.any(|l| missing.contains_key(l))
    }

    /// A chunk of `layers` was stored for the first time: the layers it
    /// made whole, each returned once.
    pub fn chunk_arrived(&self, layers: &[LayerId]) -> Vec<LayerId> {
        let mut missing = self.missing.lock();
        let mut finished = Vec::new();
        for layer in layers {
            if let Some(count) = missing.get_mut(layer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    missing.remove(layer);
                    finished.push(*layer);
                }
            }
        }
        finished
    }

    /// Splits `layers` (those the store holds; others are forgotten here)
    /// into whole ones and partial ones.
    pub fn split(&self, layers: &[LayerId]) -> (Vec<LayerId>, Vec<LayerId>) {
        let mut missing = self.missing.lock();
        missing.retain(|l, _| layers.contains(l));
        layers.iter().copied().partition(|l| !missing.contains_key(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerId {
        LayerId::from_slice(&[n; 32]).unwrap()
    }

    #[test]
    fn a_layer_is_whole_when_its_last_chunk_arrives_and_is_said_so_once() {
        let progress = LayerProgress::default();
        progress.add(HashMap::from([(layer(1), 2), (layer(2), 1)]));
        assert!(progress.any_partial([layer(3), layer(2)].iter()));
        // A chunk shared by both layers.
        assert_eq!(progress.chunk_arrived(&[layer(1), layer(2)]), vec![layer(2)]);
        assert_eq!(progress.chunk_arrived(&[layer(1)]), vec![layer(1)]);
        assert!(progress.chunk_arrived(&[layer(1)]).is_empty(), "said once");
        assert!(!progress.any_partial([layer(1), layer(2)].iter()));
    }

    #[test]
    fn split_forgets_layers_the_store_no_longer_holds() {
        let progress = LayerProgress::default();
        progress.add(HashMap::from([(layer(1), 2), (layer(9), 1)]));
        let (whole, partial) = progress.split(&[layer(1), layer(2)]);
        assert_eq!((whole, partial), (vec![layer(2)], vec![layer(1)]));
        assert!(!progress.any_partial([layer(9)].iter()), "removed layer forgotten");
    }
}
