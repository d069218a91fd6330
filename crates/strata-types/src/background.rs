/// What a node fetches of an image beyond the chunks its containers read
/// (config `[node] background_fetch`, `strata pull --background-fetch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundFetch {
    /// Only what reads ask for (and the kernel's and the mount's read-ahead).
    None,
    /// The image's startup profile, ahead of the reads, when it has one.
    Profile,
    /// The profile, then, once a container has started, every chunk of the
    /// image's layers, so the node holds the image whole; and on the first
    /// start of an image with no profile, everything at once at full link
    /// speed (reads first).
    #[default]
    All,
}

impl BackgroundFetch {
    /// Its name as config and flags spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackgroundFetch::None => "none",
            BackgroundFetch::Profile => "profile",
            BackgroundFetch::All => "all",
        }
    }

    /// Its one-byte stored form.
    pub fn to_byte(self) -> u8 {
        match self {
            BackgroundFetch::None => 1,
            BackgroundFetch::Profile => 2,
            BackgroundFetch::All => 3,
        }
    }

    /// The mode of a stored byte; `None` for a byte no mode has.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(BackgroundFetch::None),
            2 => Some(BackgroundFetch::Profile),
            3 => Some(BackgroundFetch::All),
            _ => None,
        }
    }
}

impl std::fmt::Display for BackgroundFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackgroundFetch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(BackgroundFetch::None),
            "profile" => Ok(BackgroundFetch::Profile),
            "all" => Ok(BackgroundFetch::All),
            other => Err(format!("background fetch {other:?}: expected none, profile or all")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_round_trips_through_its_name_and_its_byte() {
        for mode in [BackgroundFetch::None, BackgroundFetch::Profile, BackgroundFetch::All] {
            assert_eq!(mode.as_str().parse::<BackgroundFetch>(), Ok(mode));
            assert_eq!(BackgroundFetch::from_byte(mode.to_byte()), Some(mode));
        }
        assert!("everything".parse::<BackgroundFetch>().is_err());
        assert_eq!(BackgroundFetch::from_byte(0), None);
    }
}

/// What a node's disk cap would do with an image now (`strata status`),
/// by the rules of the cache's eviction, checked in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheVerdict {
    /// Imported or committed here (perhaps the cluster's only copy):
    /// never evicted.
    Pinned,
    /// A live mount uses it.
    Mounted,
    /// Used within the cache's grace period (`[cache] grace_secs`).
    Recent,
    /// Every layer it has is also a layer of an image kept above.
    Shared,
    /// No other live node holds any of its layers whole (or none that the
    /// cluster's order lets this node count on): nothing of it goes, or
    /// the node could not fetch it again.
    OnlyCopy,
    /// Over the cap, chunks of it would go (least recently used image
    /// first): another live node holds a layer of it whole.
    Evictable,
}

impl CacheVerdict {
    /// Its name as `strata status` prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheVerdict::Pinned => "pinned",
            CacheVerdict::Mounted => "mounted",
            CacheVerdict::Recent => "recent",
            CacheVerdict::Shared => "shared",
            CacheVerdict::OnlyCopy => "only-copy",
            CacheVerdict::Evictable => "evictable",
        }
    }
}
