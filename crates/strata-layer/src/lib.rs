//! Layer tars ↔ layer indexes.
//!
//! [`read_layer`] streams an (uncompressed) OCI layer tar once: it validates
//! every member (no `..`, no absolute paths, no parents that are not
//! directories, hardlinks only to earlier files, sizes the archive really
//! holds), splits regular files into chunks handed to a [`ChunkSink`], and
//! returns the canonical [`LayerIndex`]: entries sorted by path bytes, the
//! last of duplicate members winning as with `tar -x`, whiteouts and opaque
//! directories recorded as such, each hardlink group's file under its
//! smallest path. The same tree gives the same index bytes however the tar
//! was laid out. [`write_layer`] turns an index back into a tar that reads
//! back to the same index. Beside the index, [`read_layer`] keeps the tar's
//! split (headers and padding as read, contents as chunk lists) so that
//! [`write_split`] writes the very same tar again: the layer keeps its
//! diff_id. Nothing here touches the host filesystem.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod error;
mod path;
mod pax;
mod reader;
mod split;
mod tree;
mod writer;

pub use error::{EntryProblem, LayerError};
pub use path::{normalize_member_path, MAX_COMPONENT_LEN, MAX_PATH_LEN};
pub use reader::{read_layer, ChunkSink, LayerRead, LayerSummary};
pub use split::{
    chunks_outside_index, load_split, put_split, write_split, MAX_SPLIT_ENCODED, MAX_SPLIT_FILES,
    MAX_SPLIT_RAW_LEN, MAX_SPLIT_RAW_ZSTD, SPLIT_VERSION,
};
pub use strata_proto::v1::{
    ChunkRef, Entry, EntryKind, LayerIndex, TarSplit, TarSplitFile, TarSplitRef, Xattr,
};
pub use writer::{write_layer, ChunkSource, LayerTarWriter};

/// The version of the index format this crate writes and reads.
pub const INDEX_VERSION: u32 = 1;

/// Display form of a path held as bytes.
pub fn display_path(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}
