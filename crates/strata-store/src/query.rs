use prost::Message;
use rocksdb::WriteBatch;
use strata_types::{ChunkId, ImageId, LayerId};

use crate::{schema, ImageRecord, LayerIndex, LayerRecord, Store, StoreError};

/// One name and the image it names.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageEntry {
    pub name: String,
    pub id: ImageId,
    pub record: ImageRecord,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerEntry {
    pub id: LayerId,
    pub record: LayerRecord,
}

/// What `Store::remove` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveOutcome {
    pub image: ImageId,
    pub names_removed: Vec<String>,
    /// The image record went with its last name; its layers and chunks are
    /// reclaimed by the next GC unless other images use them.
    pub image_removed: bool,
}

impl Store {
    /// Every name with its image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageEntry>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(schema::NAMES));
        it.seek_to_first();
        while let (Some(name), Some(id)) = (it.key(), it.value()) {
            let name = String::from_utf8_lossy(name).into_owned();
            let id = ImageId::from_slice(id)
                .map_err(|e| StoreError::Corrupt(format!("name {name:?}: image id: {e}")))?;
            let record = self
                .image(&id)?
                .ok_or_else(|| StoreError::Corrupt(format!("name {name:?} points to missing image {id}")))?;
            out.push(ImageEntry { name, id, record });
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The image record, checked against its id.
    pub fn image(&self, id: &ImageId) -> Result<Option<ImageRecord>, StoreError> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf(schema::IMAGES), id.as_bytes())? else {
            return Ok(None);
        };
        let record = ImageRecord::decode(&*bytes).map_err(|e| StoreError::decode("image", id, e))?;
        let actual = crate::image_id(&record);
        if actual != *id {
            return Err(StoreError::CorruptImage { id: *id, actual });
        }
        Ok(Some(record))
    }

    pub fn image_by_name(&self, name: &str) -> Result<Option<ImageId>, StoreError> {
        match self.db.get_pinned_cf(self.cf(schema::NAMES), name.as_bytes())? {
            None => Ok(None),
            Some(id) => ImageId::from_slice(&id)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("name {name:?}: image id: {e}"))),
        }
    }

    /// Every image name the store holds, sorted.
    pub fn all_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .keys_with_prefix(schema::NAMES, b"")?
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    /// Names of the image, sorted.
    pub fn image_names(&self, id: &ImageId) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Ok(self
            .keys_with_prefix(schema::REFS, &schema::name_ref_prefix(id))?
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    /// Finds an image by exact name, by full id, or by a unique id prefix of
    /// at least 4 hex digits.
    pub fn resolve(&self, reference: &str) -> Result<(ImageId, ImageRecord), StoreError> {
        let missing = || StoreError::no_such_image(reference);
        let id = match self.image_by_name(reference)? {
            Some(id) => id,
            None => self.image_by_id_prefix(reference)?.ok_or_else(missing)?,
        };
        let record = self.image(&id)?.ok_or_else(missing)?;
        Ok((id, record))
    }

    fn image_by_id_prefix(&self, prefix: &str) -> Result<Option<ImageId>, StoreError> {
        let hex = prefix.strip_prefix("blake3:").unwrap_or(prefix);
        if hex.len() < 4 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hex = hex.to_ascii_lowercase();
        let mut found = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(schema::IMAGES));
        it.seek_to_first();
        while let Some(key) = it.key() {
            if let Ok(id) = ImageId::from_slice(key) {
                if id.to_hex().starts_with(&hex) {
                    found.push(id);
                }
            }
            it.next();
        }
        it.status()?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            count => Err(StoreError::Ambiguous { reference: prefix.to_owned(), count }),
        }
    }

    pub fn layer(&self, id: &LayerId) -> Result<Option<LayerRecord>, StoreError> {
        self.get_message(schema::LAYERS, "layer record", id.as_bytes(), id)
    }

    /// All stored layers, by id.
    pub fn layers(&self) -> Result<Vec<LayerEntry>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(schema::LAYERS));
        it.seek_to_first();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let id = LayerId::from_slice(key).map_err(|e| StoreError::Corrupt(format!("layer key: {e}")))?;
            let record = LayerRecord::decode(value).map_err(|e| StoreError::decode("layer record", id, e))?;
            out.push(LayerEntry { id, record });
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The layer's index, checked against its id.
    pub fn layer_index(&self, id: &LayerId) -> Result<LayerIndex, StoreError> {
        let bytes = self.layer_index_bytes(id)?;
        LayerIndex::decode(&*bytes).map_err(|e| StoreError::decode("layer index", id, e))
    }

    /// The layer's index as stored: the exact bytes its id is the BLAKE3
    /// hash of (checked), as peers are sent them. Re-encoding a decoded
    /// index would drop fields this version does not know, and the bytes
    /// would no longer hash to the id.
    ///
    /// Errors: [`StoreError::MissingLayer`], [`StoreError::CorruptIndex`].
    pub fn layer_index_bytes(&self, id: &LayerId) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(schema::INDEXES), id.as_bytes())?
            .ok_or(StoreError::MissingLayer(*id))?;
        let actual = LayerId::of(&bytes);
        if actual != *id {
            return Err(StoreError::CorruptIndex { id: *id, actual });
        }
        Ok(bytes.to_vec())
    }

    /// Removes a name (or, given an id, every name of that image). The image
    /// record goes with its last name.
    pub fn remove(&self, reference: &str) -> Result<RemoveOutcome, StoreError> {
        self.writable()?;
        let _records = self.lock_records();
        let (id, _) = self.resolve(reference)?;
        let all = self.image_names(&id)?;
        let names_removed: Vec<String> =
            if all.contains(reference) { vec![reference.to_owned()] } else { all.iter().cloned().collect() };
        let mut batch = WriteBatch::default();
        for name in &names_removed {
            batch.delete_cf(self.cf(schema::NAMES), name.as_bytes());
            batch.delete_cf(self.cf(schema::REFS), schema::name_ref(&id, name));
        }
        let image_removed = names_removed.len() == all.len();
        if image_removed {
            self.delete_image_records(&mut batch, &id)?;
        }
        self.write_synced(batch)?;
        Ok(RemoveOutcome { image: id, names_removed, image_removed })
    }

    /// Adds to `batch` the deletion of an image record and its layer refs.
    pub(crate) fn delete_image_records(
        &self,
        batch: &mut WriteBatch,
        id: &ImageId,
    ) -> Result<(), StoreError> {
        if let Some(record) = self.image(id)? {
            for layer in &record.layers {
                let layer = LayerId::from_slice(layer)
                    .map_err(|e| StoreError::Corrupt(format!("image {id}: layer id: {e}")))?;
                batch.delete_cf(self.cf(schema::REFS), schema::layer_ref(&layer, id));
            }
        }
        batch.delete_cf(self.cf(schema::IMAGES), id.as_bytes());
        batch.delete_cf(self.cf(schema::PROFILES), id.as_bytes());
        batch.delete_cf(self.cf(schema::FETCH_STATE), id.as_bytes());
        Ok(())
    }

    /// The layers whose indexes list the chunk.
    pub fn chunk_layers(&self, chunk: &ChunkId) -> Result<Vec<LayerId>, StoreError> {
        self.keys_with_prefix(schema::REFS, &schema::chunk_ref_prefix(chunk))?
            .iter()
            .map(|k| {
                LayerId::from_slice(k)
                    .map_err(|e| StoreError::Corrupt(format!("chunk {chunk}: layer ref: {e}")))
            })
            .collect()
    }

    /// The images that list the layer.
    pub fn layer_images(&self, layer: &LayerId) -> Result<Vec<ImageId>, StoreError> {
        self.keys_with_prefix(schema::REFS, &schema::layer_ref_prefix(layer))?
            .iter()
            .map(|k| {
                ImageId::from_slice(k)
                    .map_err(|e| StoreError::Corrupt(format!("layer {layer}: image ref: {e}")))
            })
            .collect()
    }

    /// The chunks of a layer's index that are not (yet) here: a layer
    /// fetched from peers has them arrive on demand. (Its tar-splits'
    /// chunks are not counted: reads never need them; export and push
    /// fetch them, see `strata_oci::missing_chunks`.)
    pub fn missing_chunks(&self, layer: &LayerId) -> Result<Vec<ChunkId>, StoreError> {
        let index = self.layer_index(layer)?;
        let mut seen = std::collections::HashSet::new();
        let mut missing = Vec::new();
        for entry in &index.entries {
            for chunk in &entry.chunks {
                let id = ChunkId::from_slice(&chunk.id)
                    .map_err(|e| StoreError::Corrupt(format!("layer {layer}: chunk id: {e}")))?;
                if seen.insert(id) && !self.has_chunk(&id)? {
                    missing.push(id);
                }
            }
        }
        Ok(missing)
    }

    /// Stores a chunk a peer sent, in its stored form, unless present.
    /// Refused unless a stored layer lists it: what is stored stays
    /// referenced, so GC keeps it and nothing unasked-for accumulates.
    /// Returns whether it was new. The caller has verified the bytes.
    pub fn put_fetched_chunk(&self, id: &ChunkId, stored: &[u8]) -> Result<bool, StoreError> {
        self.writable()?;
        if !self.has_prefix(schema::REFS, &schema::chunk_ref_prefix(id))? {
            return Err(StoreError::Unreferenced(*id));
        }
        Ok(self.insert_chunk(id, stored)?.is_some())
    }
}
