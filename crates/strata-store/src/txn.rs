use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use prost::Message;
use rocksdb::WriteBatch;
use strata_types::{ChunkId, ImageId, LayerId};

use crate::schema::ChunkMeta;
use crate::{schema, ImageRecord, LayerIndex, LayerRecord, Store, StoreError};
use strata_proto::v1::TarSplitRef;

/// One import: chunks are written as they come; layers, images and names
/// become visible together at [`ImportTxn::commit`], or never. Dropping an
/// uncommitted transaction deletes the chunks it added that nothing else uses.
pub struct ImportTxn<'s> {
    store: &'s Store,
    pinned: Mutex<HashSet<ChunkId>>,
    written: Mutex<Vec<(ChunkId, ChunkMeta)>>,
    layers: Vec<StagedLayer>,
    images: Vec<StagedImage>,
    committed: bool,
}

struct StagedLayer {
    id: LayerId,
    record: LayerRecord,
    index: Vec<u8>,
    chunks: BTreeSet<ChunkId>,
    /// Its tar-splits were made here from the tar itself (not sent by a
    /// peer): they replace stored ones of the same diff_id that differ.
    read_here: bool,
}

struct StagedImage {
    id: ImageId,
    record: ImageRecord,
    names: Vec<String>,
}

/// What a commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitSummary {
    pub layers_added: usize,
    pub images_added: usize,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
}

impl Store {
    pub fn begin_import(&self) -> Result<ImportTxn<'_>, StoreError> {
        self.writable()?;
        Ok(ImportTxn {
            store: self,
            pinned: Mutex::default(),
            written: Mutex::default(),
            layers: Vec::new(),
            images: Vec::new(),
            committed: false,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ImportTxn<'_> {
    /// Makes sure the chunk is in the store. `encode` produces its stored form
    /// and runs only when the chunk is new. Returns whether it was new.
    /// Safe to call from several threads at once.
    pub fn put_chunk(&self, id: ChunkId, encode: impl FnOnce() -> Vec<u8>) -> Result<bool, StoreError> {
        if lock(&self.pinned).insert(id) {
            self.store.pins.pin(id);
        }
        // Pinned before looking: GC either deleted it already (and we write
        // it again) or sees the pin and leaves it.
        if self.store.has_chunk(&id)? {
            return Ok(false);
        }
        match self.store.insert_chunk(&id, &encode())? {
            Some(meta) => {
                lock(&self.written).push((id, meta));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stages a layer; returns its id. Every chunk the index and the
    /// record's tar-splits list must have gone through
    /// [`ImportTxn::put_chunk`] of this transaction. A layer already stored
    /// takes the record's tar-splits of diff_ids it lacks (and replaces a
    /// differing one of the same diff_id: these were made from the tar).
    pub fn stage_layer(&mut self, index: &LayerIndex, record: LayerRecord) -> Result<LayerId, StoreError> {
        let bytes = index.encode_to_vec();
        let id = LayerId::of(&bytes);
        let pinned = lock(&self.pinned);
        let mut chunks = BTreeSet::new();
        for entry in &index.entries {
            for chunk in &entry.chunks {
                let chunk = ChunkId::from_slice(&chunk.id)
                    .map_err(|e| StoreError::Corrupt(format!("layer {id}: chunk id: {e}")))?;
                if !pinned.contains(&chunk) {
                    return Err(StoreError::MissingChunk(chunk));
                }
                chunks.insert(chunk);
            }
        }
        for chunk in split_chunks(&id, &record)? {
            if !pinned.contains(&chunk) {
                return Err(StoreError::MissingChunk(chunk));
            }
            chunks.insert(chunk);
        }
        drop(pinned);
        self.stage(StagedLayer { id, record, index: bytes, chunks, read_here: true })?;
        Ok(id)
    }

    /// Stages a layer once; a second staging of it in one transaction adds
    /// the tar-splits of diff_ids the first lacked.
    fn stage(&mut self, layer: StagedLayer) -> Result<(), StoreError> {
        match self.layers.iter_mut().find(|l| l.id == layer.id) {
            Some(staged) => {
                for split in layer.record.tar_splits {
                    if !staged.record.tar_splits.iter().any(|s| s.diff_id == split.diff_id) {
                        staged.chunks.extend(chunks_of_splits(&layer.id, [&split])?);
                        staged.record.tar_splits.push(split);
                    }
                }
                staged.read_here |= layer.read_here;
            }
            None => self.layers.push(layer),
        }
        Ok(())
    }

    /// Stages a layer whose chunks are not here: its index came from a peer
    /// and its chunks follow on demand ([`Store::put_fetched_chunk`]). The
    /// index must hash to `id`. The chunks are referenced from the commit on,
    /// so GC keeps each one that arrives.
    pub fn stage_remote_layer(
        &mut self,
        id: LayerId,
        index: Vec<u8>,
        record: LayerRecord,
    ) -> Result<(), StoreError> {
        let actual = LayerId::of(&index);
        if actual != id {
            return Err(StoreError::CorruptIndex { id, actual });
        }
        let decoded = <LayerIndex as prost::Message>::decode(&index[..])
            .map_err(|e| StoreError::decode("layer index", id, e))?;
        let mut chunks = BTreeSet::new();
        for entry in &decoded.entries {
            for chunk in &entry.chunks {
                chunks.insert(
                    ChunkId::from_slice(&chunk.id)
                        .map_err(|e| StoreError::Corrupt(format!("layer {id}: chunk id: {e}")))?,
                );
            }
        }
        chunks.extend(split_chunks(&id, &record)?);
        self.stage(StagedLayer { id, record, index, chunks, read_here: false })?;
        Ok(())
    }

    /// Stages an image under `names` (at least one). Its layers must be staged
    /// in this transaction or already stored.
    pub fn stage_image(&mut self, record: ImageRecord, names: Vec<String>) -> ImageId {
        let id = crate::image_id(&record);
        self.images.push(StagedImage { id, record, names });
        id
    }

    /// Makes everything staged visible at once, durably.
    pub fn commit(mut self) -> Result<CommitSummary, StoreError> {
        let store = self.store;
        store.flush_chunks()?;
        let _records = store.lock_records();
        let mut batch = WriteBatch::default();
        let mut summary = CommitSummary::default();

        let staged_layers: HashSet<LayerId> = self.layers.iter().map(|l| l.id).collect();
        for layer in &self.layers {
            if let Some(mut stored) = store.layer(&layer.id)? {
                // The same file tree from another tar: keep that tar's split
                // too, so each image keeps its own diff_ids. A split made
                // here from the tar replaces a differing one (a peer's word).
                let mut changed = false;
                for split in &layer.record.tar_splits {
                    let found = stored.tar_splits.iter().position(|s| s.diff_id == split.diff_id);
                    let replaced = match found {
                        None => None,
                        Some(i) if layer.read_here && stored.tar_splits[i] != *split => {
                            Some(stored.tar_splits.remove(i))
                        }
                        Some(_) => continue,
                    };
                    for chunk in chunks_of_splits(&layer.id, [split])? {
                        batch.put_cf(store.cf(schema::REFS), schema::chunk_ref(&chunk, &layer.id), b"");
                    }
                    stored.tar_splits.push(split.clone());
                    if let Some(old) = replaced {
                        // Refs only the replaced split needed go with it.
                        let mut kept: HashSet<ChunkId> = layer.chunks.iter().copied().collect();
                        kept.extend(split_chunks(&layer.id, &stored)?);
                        for chunk in chunks_of_splits(&layer.id, [&old])? {
                            if !kept.contains(&chunk) {
                                batch.delete_cf(store.cf(schema::REFS), schema::chunk_ref(&chunk, &layer.id));
                            }
                        }
                    }
                    changed = true;
                }
                if changed {
                    batch.put_cf(store.cf(schema::LAYERS), layer.id.as_bytes(), stored.encode_to_vec());
                }
                continue;
            }
            batch.put_cf(store.cf(schema::LAYERS), layer.id.as_bytes(), layer.record.encode_to_vec());
            batch.put_cf(store.cf(schema::INDEXES), layer.id.as_bytes(), &layer.index);
            for chunk in &layer.chunks {
                batch.put_cf(store.cf(schema::REFS), schema::chunk_ref(chunk, &layer.id), b"");
            }
            summary.layers_added += 1;
        }

        // Names: the last image to claim a name in this transaction gets it.
        let mut claims: HashMap<&str, ImageId> = HashMap::new();
        for image in &self.images {
            for name in &image.names {
                claims.insert(name, image.id);
            }
        }
        let mut names_of: HashMap<ImageId, BTreeSet<String>> = HashMap::new();
        let mut touched: BTreeSet<ImageId> = BTreeSet::new();
        for (name, id) in &claims {
            if let Some(old) = store.image_by_name(name)? {
                if old != *id {
                    batch.delete_cf(store.cf(schema::REFS), schema::name_ref(&old, name));
                    names_with(&mut names_of, store, old)?.remove(*name);
                    touched.insert(old);
                }
            }
            batch.put_cf(store.cf(schema::NAMES), name.as_bytes(), id.as_bytes());
            batch.put_cf(store.cf(schema::REFS), schema::name_ref(id, name), b"");
            names_with(&mut names_of, store, *id)?.insert((*name).to_owned());
            touched.insert(*id);
        }

        let mut written_images = HashSet::new();
        for image in &self.images {
            let keeps_a_name = names_of.get(&image.id).is_some_and(|n| !n.is_empty());
            if !keeps_a_name || !written_images.insert(image.id) {
                continue;
            }
            for layer in &image.record.layers {
                let layer = LayerId::from_slice(layer)
                    .map_err(|e| StoreError::Corrupt(format!("image {}: layer id: {e}", image.id)))?;
                if !staged_layers.contains(&layer) && store.layer(&layer)?.is_none() {
                    return Err(StoreError::MissingLayer(layer));
                }
                batch.put_cf(store.cf(schema::REFS), schema::layer_ref(&layer, &image.id), b"");
            }
            match store.image(&image.id)? {
                None => {
                    batch.put_cf(store.cf(schema::IMAGES), image.id.as_bytes(), image.record.encode_to_vec());
                    summary.images_added += 1;
                }
                // Stored from an archive, now pulled from a registry: the
                // record takes the manifest (not part of the id), so the
                // image proves itself by its repo digest from now on.
                Some(stored) if stored.manifest.is_empty() && !image.record.manifest.is_empty() => {
                    batch.put_cf(store.cf(schema::IMAGES), image.id.as_bytes(), image.record.encode_to_vec());
                }
                Some(_) => {}
            }
        }
        // Images that lost their last name go, as with `rm`.
        for id in touched {
            if names_of.get(&id).is_some_and(|n| n.is_empty()) && !written_images.contains(&id) {
                store.delete_image_records(&mut batch, &id)?;
            }
        }

        store.write_synced(batch)?;
        let written = lock(&self.written);
        summary.new_chunks = written.len() as u64;
        summary.new_chunk_bytes = written.iter().map(|(_, m)| u64::from(m.len)).sum();
        drop(written);
        self.committed = true;
        Ok(summary)
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        let written = std::mem::take(&mut *lock(&self.written));
        let own = lock(&self.pinned);
        self.store.delete_unused_chunks(written.into_iter().map(|(id, m)| (id, Some(m))), &own)?;
        Ok(())
    }
}

/// The chunks a layer record's tar-splits use: each split's own encoding
/// and the contents its tar holds that the index does not list.
pub(crate) fn split_chunks(layer: &LayerId, record: &LayerRecord) -> Result<Vec<ChunkId>, StoreError> {
    chunks_of_splits(layer, &record.tar_splits)
}

fn chunks_of_splits<'a>(
    layer: &LayerId,
    splits: impl IntoIterator<Item = &'a TarSplitRef>,
) -> Result<Vec<ChunkId>, StoreError> {
    splits
        .into_iter()
        .flat_map(|s| s.blob.iter().chain(&s.extra_chunks))
        .map(|c| {
            ChunkId::from_slice(&c.id)
                .map_err(|e| StoreError::Corrupt(format!("layer {layer}: tar-split chunk id: {e}")))
        })
        .collect()
}

/// The names `id` will have, starting from those stored.
fn names_with<'m>(
    names_of: &'m mut HashMap<ImageId, BTreeSet<String>>,
    store: &Store,
    id: ImageId,
) -> Result<&'m mut BTreeSet<String>, StoreError> {
    use std::collections::hash_map::Entry;
    match names_of.entry(id) {
        Entry::Occupied(names) => Ok(names.into_mut()),
        Entry::Vacant(slot) => Ok(slot.insert(store.image_names(&id)?)),
    }
}

impl Drop for ImportTxn<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.rollback() {
                // What stays behind is unreferenced: the next GC deletes it.
                tracing::warn!(error = %e, "import rollback incomplete; `strata gc` will finish it");
            }
        }
        let pinned = std::mem::take(&mut *lock(&self.pinned));
        self.store.pins.unpin_all(pinned);
    }
}
