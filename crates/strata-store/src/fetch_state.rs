//! What a node keeps about each image's place in its cache, so that a
//! restarted node goes on where it stopped: the background-fetch mode a
//! pull asked for (`strata pull --background-fetch`; else the node's
//! setting applies), whether the full fetch of the image has started (a
//! container read from it, or it was pulled with `--all`), whether it is
//! pinned (imported here: never evicted), and when it was last used (the
//! cache evicts the least recently used first). Advisory, like profiles:
//! not part of the image's identity; removed with the image's record.

use strata_types::{BackgroundFetch, ImageId};

use crate::{schema, Store, StoreError};

/// An image's background-fetch record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchState {
    /// The mode asked for this image; `None`: the node's setting.
    pub mode: Option<BackgroundFetch>,
    /// The full fetch has started: a node (re)starting resumes it.
    pub started: bool,
    /// Imported here: the cache never evicts its chunks.
    pub pinned: bool,
    /// When a container last started from it, or it was pulled or fetched
    /// into, in seconds since the Unix epoch (0: never recorded).
    pub last_used: u64,
}

const VERSION: u8 = 1;
const STARTED: u8 = 1;
const PINNED: u8 = 2;
/// version, mode, flags, last_used (u64, little-endian).
const LEN: usize = 11;

impl FetchState {
    fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0] = VERSION;
        out[1] = self.mode.map_or(0, BackgroundFetch::to_byte);
        out[2] = if self.started { STARTED } else { 0 } | if self.pinned { PINNED } else { 0 };
        out[3..].copy_from_slice(&self.last_used.to_le_bytes());
        out
    }

    fn decode(image: &ImageId, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("the fetch state of image {image} is malformed"));
        let [VERSION, mode, flags, last_used @ ..] = bytes else { return Err(bad()) };
        let last_used: [u8; 8] = last_used.try_into().map_err(|_| bad())?;
        let mode = match mode {
            0 => None,
            byte => Some(BackgroundFetch::from_byte(*byte).ok_or_else(bad)?),
        };
        Ok(Self {
            mode,
            started: flags & STARTED != 0,
            pinned: flags & PINNED != 0,
            last_used: u64::from_le_bytes(last_used),
        })
    }
}

impl Store {
    /// The image's background-fetch record (the default when none was kept).
    pub fn fetch_state(&self, image: &ImageId) -> Result<FetchState, StoreError> {
        match self.db.get_pinned_cf(self.cf(schema::FETCH_STATE), image.as_bytes())? {
            Some(bytes) => FetchState::decode(image, &bytes),
            None => Ok(FetchState::default()),
        }
    }

    /// Keeps the image's background-fetch record; an image unknown here
    /// gets none (false).
    pub fn put_fetch_state(&self, image: &ImageId, state: FetchState) -> Result<bool, StoreError> {
        self.update_fetch_state(image, |s| *s = state)
    }

    /// Changes the image's record in place (read, change, write under the
    /// records lock, so two changes do not undo each other); an image
    /// unknown here gets none (false).
    pub fn update_fetch_state(
        &self,
        image: &ImageId,
        change: impl FnOnce(&mut FetchState),
    ) -> Result<bool, StoreError> {
        self.writable()?;
        let _records = self.lock_records();
        if self.image(image)?.is_none() {
            return Ok(false);
        }
        let mut state = self.fetch_state(image)?;
        change(&mut state);
        self.db.put_cf(self.cf(schema::FETCH_STATE), image.as_bytes(), state.encode())?;
        Ok(true)
    }

    /// Every image with a background-fetch record.
    pub fn fetch_states(&self) -> Result<Vec<(ImageId, FetchState)>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(schema::FETCH_STATE));
        it.seek_to_first();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            let image = ImageId::from_slice(key)
                .map_err(|e| StoreError::Corrupt(format!("a fetch state's image id: {e}")))?;
            out.push((image, FetchState::decode(&image, value)?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_a_bad_one_is_refused() {
        let image = ImageId::of(b"image");
        for state in [
            FetchState::default(),
            FetchState { mode: Some(BackgroundFetch::None), ..FetchState::default() },
            FetchState { mode: Some(BackgroundFetch::All), started: true, pinned: false, last_used: 1 },
            FetchState { mode: None, started: false, pinned: true, last_used: u64::MAX },
        ] {
            assert_eq!(FetchState::decode(&image, &state.encode()).unwrap(), state);
        }
        let mut bad_mode = FetchState::default().encode();
        bad_mode[1] = 9;
        assert!(FetchState::decode(&image, &bad_mode).is_err());
        let mut bad_version = FetchState::default().encode();
        bad_version[0] = 2;
        assert!(FetchState::decode(&image, &bad_version).is_err());
        assert!(FetchState::decode(&image, &[VERSION, 0, 0]).is_err(), "too short");
    }
}
