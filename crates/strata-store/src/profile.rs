//! Startup profiles: for an image, the chunks its containers read first, in
//! the order they read them. A node that runs an image records one; peers
//! that pull the image get it and fetch those chunks ahead of the reads.
//! Advisory data: not part of the image's identity, checked only in that
//! every chunk it names belongs to one of the image's layers.

use std::collections::HashSet;

use strata_types::{ChunkId, ImageId, LayerId, MAX_PROFILE_CHUNKS};

use crate::{schema, Store, StoreError};

/// The image's profile as stored, or `None` if malformed.
fn decode_profile(bytes: &[u8]) -> Option<Vec<ChunkId>> {
    strata_types::decode_chunk_list(bytes, MAX_PROFILE_CHUNKS)
}

impl Store {
    /// The image's startup profile, if one was recorded or received.
    pub fn profile(&self, image: &ImageId) -> Result<Option<Vec<ChunkId>>, StoreError> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf(schema::PROFILES), image.as_bytes())? else {
            return Ok(None);
        };
        decode_profile(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("the startup profile of image {image} is malformed")))
    }

    /// Keeps `chunks` as the image's startup profile unless it has one:
    /// chunks of the image's layers only, each once, in order, at most
    /// [`MAX_PROFILE_CHUNKS`]. Returns the profile kept, or `None` when the
    /// image already had one, is unknown here, or none of the chunks are its.
    pub fn put_profile(
        &self,
        image: &ImageId,
        chunks: &[ChunkId],
    ) -> Result<Option<Vec<ChunkId>>, StoreError> {
        self.writable()?;
        let _records = self.lock_records();
        let Some(record) = self.image(image)? else { return Ok(None) };
        if self.db.get_pinned_cf(self.cf(schema::PROFILES), image.as_bytes())?.is_some() {
            return Ok(None);
        }
        let layers: HashSet<LayerId> =
            record.layers.iter().filter_map(|l| LayerId::from_slice(l).ok()).collect();
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        for chunk in chunks {
            if kept.len() == MAX_PROFILE_CHUNKS {
                break;
            }
            if seen.insert(*chunk) && self.chunk_layers(chunk)?.iter().any(|l| layers.contains(l)) {
                kept.push(*chunk);
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        self.db.put_cf(
            self.cf(schema::PROFILES),
            image.as_bytes(),
            strata_types::encode_chunk_list(&kept),
        )?;
        Ok(Some(kept))
    }
}
