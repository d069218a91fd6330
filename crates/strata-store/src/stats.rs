use prost::Message;

use crate::schema::ChunkMeta;
use crate::{schema, LayerRecord, Store, StoreError};

/// Running totals of the chunk family, kept by a merge operator in the same
/// write batches that add or delete chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkTotals {
    pub chunks: i64,
    pub bytes: i64,
    pub stored: i64,
}

impl ChunkTotals {
    pub(crate) fn of(meta: ChunkMeta) -> Self {
        Self { chunks: 1, bytes: i64::from(meta.len), stored: i64::from(meta.stored) }
    }

    pub(crate) fn negate(self) -> Self {
        Self { chunks: -self.chunks, bytes: -self.bytes, stored: -self.stored }
    }

    pub(crate) fn add(self, o: Self) -> Self {
        Self { chunks: self.chunks + o.chunks, bytes: self.bytes + o.bytes, stored: self.stored + o.stored }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        [self.chunks, self.bytes, self.stored].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Malformed operands count as zero rather than poisoning the totals.
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let field = |i: usize| {
            bytes.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map_or(0, i64::from_le_bytes)
        };
        Self { chunks: field(0), bytes: field(1), stored: field(2) }
    }
}

/// What the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct chunks.
    pub chunks: u64,
    /// Their uncompressed bytes: each distinct piece of content once.
    pub unique_bytes: u64,
    /// Their stored bytes, after per-chunk compression.
    pub stored_bytes: u64,
    /// File content of all layers, as if each layer were kept whole.
    pub logical_bytes: u64,
    pub layers: u64,
    pub images: u64,
    pub names: u64,
    /// What RocksDB occupies on disk (SST and blob files).
    pub disk_bytes: u64,
}

impl StoreStats {
    /// logical ÷ unique: how much chunk-level dedup saves.
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.unique_bytes)
    }

    /// unique ÷ stored: how much per-chunk compression saves.
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.unique_bytes, self.stored_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

impl Store {
    /// The stored bytes of every chunk held (compressed as kept): what the
    /// cache's `max_bytes` bounds. One read of the running totals.
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        let totals = self
            .db
            .get_pinned_cf(self.cf(schema::CHUNK_META), schema::STATS_KEY)?
            .map(|v| ChunkTotals::decode(&v))
            .unwrap_or_default();
        Ok(totals.stored.max(0) as u64)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let totals = self
            .db
            .get_pinned_cf(self.cf(schema::CHUNK_META), schema::STATS_KEY)?
            .map(|v| ChunkTotals::decode(&v))
            .unwrap_or_default();
        let mut stats = StoreStats {
            chunks: totals.chunks.max(0) as u64,
            unique_bytes: totals.bytes.max(0) as u64,
            stored_bytes: totals.stored.max(0) as u64,
            ..Default::default()
        };
        let mut it = self.db.raw_iterator_cf(self.cf(schema::LAYERS));
        it.seek_to_first();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let record = LayerRecord::decode(value)
                .map_err(|e| StoreError::decode("layer record", hex_key(key), e))?;
            stats.layers += 1;
            stats.logical_bytes += record.content_bytes;
            it.next();
        }
        it.status()?;
        stats.images = self.count_keys(schema::IMAGES)?;
        stats.names = self.count_keys(schema::NAMES)?;
        for cf in schema::ALL {
            for property in ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"] {
                stats.disk_bytes += self.db.property_int_value_cf(self.cf(cf), property)?.unwrap_or(0);
            }
        }
        Ok(stats)
    }

    fn count_keys(&self, cf: &str) -> Result<u64, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }
}

pub(crate) fn hex_key(key: &[u8]) -> String {
    hex::encode(key)
}

/// How much of an image this store holds: the distinct chunks of its
/// layers' indexes and tar-splits, and their uncompressed bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub chunks: u64,
    pub bytes: u64,
    pub local_chunks: u64,
    pub local_bytes: u64,
}

impl Holding {
    /// Whether every chunk is here.
    pub fn whole(&self) -> bool {
        self.local_chunks == self.chunks
    }
}

impl Store {
    /// How much of the image `record` names is held here. Reads every
    /// layer's index: O(chunks of the image).
    pub fn holding(&self, record: &crate::ImageRecord) -> Result<Holding, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut holding = Holding::default();
        let mut count = |id: &[u8], length: u32, holding: &mut Holding| -> Result<(), StoreError> {
            let id = strata_types::ChunkId::from_slice(id)
                .map_err(|e| StoreError::Corrupt(format!("a chunk id: {e}")))?;
            if seen.insert(id) {
                holding.chunks += 1;
                holding.bytes += u64::from(length);
                if self.has_chunk(&id)? {
                    holding.local_chunks += 1;
                    holding.local_bytes += u64::from(length);
                }
            }
            Ok(())
        };
        for layer in &record.layers {
            let layer = strata_types::LayerId::from_slice(layer)
                .map_err(|e| StoreError::Corrupt(format!("layer id: {e}")))?;
            for entry in &self.layer_index(&layer)?.entries {
                for chunk in &entry.chunks {
                    count(&chunk.id, chunk.length, &mut holding)?;
                }
            }
            for split in self.layer(&layer)?.map(|r| r.tar_splits).unwrap_or_default() {
                for chunk in split.blob.iter().chain(&split.extra_chunks) {
                    count(&chunk.id, chunk.length, &mut holding)?;
                }
            }
        }
        Ok(holding)
    }
}
