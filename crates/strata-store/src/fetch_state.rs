//! What a node fetches of each image in the background, kept so that a
//! restarted node goes on where it stopped: the mode a pull asked for
//! (`strata pull --background-fetch`; else the node's setting applies),
//! and whether the full fetch of the image has started (a container read
//! from it, or it was pulled with `--all`). Advisory, like profiles: not
//! part of the image's identity; removed with the image's record.

use strata_types::{BackgroundFetch, ImageId};

use crate::{schema, Store, StoreError};

/// An image's background-fetch record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchState {
    /// The mode asked for this image; `None`: the node's setting.
    pub mode: Option<BackgroundFetch>,
    /// The full fetch has started: a node (re)starting resumes it.
    pub started: bool,
}

const VERSION: u8 = 1;
const STARTED: u8 = 1;

impl FetchState {
    fn encode(&self) -> [u8; 3] {
        [VERSION, self.mode.map_or(0, BackgroundFetch::to_byte), if self.started { STARTED } else { 0 }]
    }

    fn decode(image: &ImageId, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("the fetch state of image {image} is malformed"));
        let [VERSION, mode, flags] = bytes else { return Err(bad()) };
        let mode = match mode {
            0 => None,
            byte => Some(BackgroundFetch::from_byte(*byte).ok_or_else(bad)?),
        };
        Ok(Self { mode, started: flags & STARTED != 0 })
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
        self.writable()?;
        let _records = self.lock_records();
        if self.image(image)?.is_none() {
            return Ok(false);
        }
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
            FetchState { mode: Some(BackgroundFetch::None), started: false },
            FetchState { mode: Some(BackgroundFetch::All), started: true },
        ] {
            assert_eq!(FetchState::decode(&image, &state.encode()).unwrap(), state);
        }
        assert!(FetchState::decode(&image, &[VERSION, 9, 0]).is_err());
        assert!(FetchState::decode(&image, &[2, 0, 0]).is_err());
        assert!(FetchState::decode(&image, &[VERSION]).is_err());
    }
}
