use std::collections::HashSet;

use rocksdb::WriteBatch;
use strata_types::{ChunkId, LayerId};

use crate::schema::ChunkMeta;
use crate::stats::ChunkTotals;
use crate::store::chunk_write_options;
use crate::{schema, Store, StoreError};

/// What a GC run deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub layers_deleted: u64,
    pub chunks_deleted: u64,
    /// Uncompressed bytes of the deleted chunks.
    pub chunk_bytes_deleted: u64,
    /// Stored bytes of the deleted chunks.
    pub stored_bytes_deleted: u64,
}

/// Chunks examined per lock hold, so imports wait at most one batch.
const SWEEP_BATCH: usize = 1024;

impl Store {
    /// Deletes layers no image uses, then chunks no layer uses and no open
    /// import has pinned, then compacts so the space returns to the disk.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        self.writable()?;
        let mut report = GcReport::default();
        {
            let _records = self.lock_records();
            let mut batch = WriteBatch::default();
            for layer in self.layers()? {
                if self.has_prefix(schema::REFS, &schema::layer_ref_prefix(&layer.id))? {
                    continue;
                }
                self.delete_layer_records(&mut batch, &layer.id)?;
                report.layers_deleted += 1;
            }
            self.write_synced(batch)?;
        }

        let mut candidates = Vec::with_capacity(SWEEP_BATCH);
        // The meta family lists every chunk in a few bytes each: the sweep
        // never reads chunk data.
        let mut it = self.db.raw_iterator_cf(self.cf(schema::CHUNK_META));
        it.seek_to_first();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if let Ok(id) = ChunkId::from_slice(key) {
                if !self.has_prefix(schema::REFS, &schema::chunk_ref_prefix(&id))? {
                    candidates.push((id, ChunkMeta::decode(value)));
                }
            }
            if candidates.len() == SWEEP_BATCH {
                report.add(self.delete_unused_chunks(candidates.drain(..), &HashSet::new())?);
            }
            it.next();
        }
        it.status()?;
        drop(it);
        report.add(self.delete_unused_chunks(candidates.drain(..), &HashSet::new())?);

        if report.chunks_deleted > 0 || report.layers_deleted > 0 {
            for cf in [schema::CHUNKS, schema::CHUNK_META, schema::REFS, schema::INDEXES, schema::LAYERS] {
                self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
            }
        }
        tracing::info!(?report, "gc done");
        Ok(report)
    }

    fn delete_layer_records(&self, batch: &mut WriteBatch, id: &LayerId) -> Result<(), StoreError> {
        let split_chunks = self.layer(id).and_then(|r| match r {
            Some(record) => crate::txn::split_chunks(id, &record),
            None => Ok(Vec::new()),
        });
        match self.layer_index(id).and_then(|index| split_chunks.map(|split| (index, split))) {
            Ok((index, split_chunks)) => {
                for chunk in split_chunks {
                    batch.delete_cf(self.cf(schema::REFS), schema::chunk_ref(&chunk, id));
                }
                for entry in &index.entries {
                    for chunk in &entry.chunks {
                        if let Ok(chunk) = ChunkId::from_slice(&chunk.id) {
                            batch.delete_cf(self.cf(schema::REFS), schema::chunk_ref(&chunk, id));
                        }
                    }
                }
            }
            // An unreadable index or record still has its refs: find them
            // by scanning.
            Err(e) => {
                tracing::warn!(layer = %id, error = %e, "deleting layer with unreadable index");
                let mut it = self.db.raw_iterator_cf(self.cf(schema::REFS));
                it.seek(b"c");
                while let Some(key) = it.key() {
                    if key.first() != Some(&b'c') {
                        break;
                    }
                    if key.ends_with(id.as_bytes()) && key.len() == 65 {
                        batch.delete_cf(self.cf(schema::REFS), key);
                    }
                    it.next();
                }
                it.status()?;
            }
        }
        batch.delete_cf(self.cf(schema::LAYERS), id.as_bytes());
        batch.delete_cf(self.cf(schema::INDEXES), id.as_bytes());
        Ok(())
    }

    /// Deletes each candidate chunk that no layer references and no
    /// transaction other than the caller (whose pins are `own_pins`) has
    /// pinned. Holds the pin lock while checking and deleting.
    pub(crate) fn delete_unused_chunks(
        &self,
        candidates: impl Iterator<Item = (ChunkId, Option<ChunkMeta>)>,
        own_pins: &HashSet<ChunkId>,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let pins = self.pins.lock();
        let mut batch = WriteBatch::default();
        for (id, meta) in candidates {
            let pinned = pins.get(&id).copied().unwrap_or(0);
            let own = u32::from(own_pins.contains(&id));
            if pinned > own || self.has_prefix(schema::REFS, &schema::chunk_ref_prefix(&id))? {
                continue;
            }
            let meta = match meta {
                Some(m) => m,
                None => match self.chunk_meta(&id)? {
                    Some(m) => m,
                    None => continue,
                },
            };
            let totals = ChunkTotals::of(meta);
            batch.delete_cf(self.cf(schema::CHUNKS), id.as_bytes());
            batch.delete_cf(self.cf(schema::CHUNK_META), id.as_bytes());
            batch.merge_cf(self.cf(schema::CHUNK_META), schema::STATS_KEY, totals.negate().encode());
            report.chunks_deleted += 1;
            report.chunk_bytes_deleted += totals.bytes as u64;
            report.stored_bytes_deleted += totals.stored as u64;
        }
        if !batch.is_empty() {
            self.db.write_opt(batch, &chunk_write_options())?;
        }
        drop(pins);
        Ok(report)
    }
}

impl Store {
    /// Evicts chunks: deletes the bytes of each of `chunks` held here,
    /// whatever layers list them (the layers stay, listing them as
    /// missing: a read fetches them again from peers), except chunks an
    /// open import has pinned. Checks and deletes under the pin lock, as
    /// GC does, so an import cannot lose a chunk it relies on; a crash
    /// midway leaves each chunk either whole or gone (chunk, meta entry and
    /// totals change in one batch). Returns what was freed.
    pub fn evict_chunks(&self, chunks: &[ChunkId]) -> Result<GcReport, StoreError> {
        self.writable()?;
        let mut report = GcReport::default();
        for piece in chunks.chunks(SWEEP_BATCH) {
            let pins = self.pins.lock();
            let mut batch = WriteBatch::default();
            for id in piece {
                if pins.contains_key(id) {
                    continue;
                }
                let Some(meta) = self.chunk_meta(id)? else { continue };
                let totals = ChunkTotals::of(meta);
                batch.delete_cf(self.cf(schema::CHUNKS), id.as_bytes());
                batch.delete_cf(self.cf(schema::CHUNK_META), id.as_bytes());
                batch.merge_cf(self.cf(schema::CHUNK_META), schema::STATS_KEY, totals.negate().encode());
                report.chunks_deleted += 1;
                report.chunk_bytes_deleted += totals.bytes as u64;
                report.stored_bytes_deleted += totals.stored as u64;
            }
            if !batch.is_empty() {
                self.db.write_opt(batch, &chunk_write_options())?;
            }
        }
        Ok(report)
    }

    /// Compacts the chunk families so that evicted bytes return to the disk
    /// (blob files are rewritten without them).
    pub fn compact_chunks(&self) {
        for cf in [schema::CHUNKS, schema::CHUNK_META] {
            self.db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }
}

impl GcReport {
    fn add(&mut self, o: GcReport) {
        self.layers_deleted += o.layers_deleted;
        self.chunks_deleted += o.chunks_deleted;
        self.chunk_bytes_deleted += o.chunk_bytes_deleted;
        self.stored_bytes_deleted += o.stored_bytes_deleted;
    }
}
