use std::path::PathBuf;

use strata_store::StoreError;
use strata_types::LayerId;

/// Why a mount could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {layer}: entry {path:?}: {reason}")]
    BadIndex { layer: LayerId, path: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writable layer {} is in use by another mount", .0.display())]
    UpperInUse(PathBuf),
    #[error("writable layer {} belongs to image {image}, not to this one", dir.display())]
    UpperOfOtherImage { dir: PathBuf, image: String },
    #[error(
        "the filesystem of {} does not report holes in sparse files (SEEK_DATA), which copy-on-write \
         needs: put the writable layer on ext4, xfs, btrfs or tmpfs",
        .0.display()
    )]
    NoHoles(PathBuf),
    #[error("mounting at {}: {source}", path.display())]
    Fuse { path: PathBuf, source: std::io::Error },
}
