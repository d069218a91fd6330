use std::io;

/// Why a layer tar was refused. Every variant names the member at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("entry {member:?}: {problem}")]
    Entry { member: String, problem: EntryProblem },
    #[error("tar stream after entry {after:?}: {source}")]
    Stream { after: String, source: io::Error },
    #[error("archive ends without the end-of-archive marker after entry {after:?}: truncated")]
    Truncated { after: String },
    #[error("entry {member:?}: {source}")]
    Sink { member: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("index: {0}")]
    Index(String),
    #[error("writing layer tar: {0}")]
    Write(#[source] io::Error),
    #[error("tar-split: {0}")]
    Split(String),
    #[error("chunk {chunk}: {source}")]
    Source { chunk: strata_types::ChunkId, source: Box<dyn std::error::Error + Send + Sync> },
}

/// What is wrong with one member.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("absolute path")]
    Absolute,
    #[error("path has a `..` component")]
    DotDot,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is {0} bytes, more than the {max} allowed", max = crate::MAX_PATH_LEN)]
    PathTooLong(usize),
    #[error("a path component is {0} bytes, more than the {max} allowed", max = crate::MAX_COMPONENT_LEN)]
    ComponentTooLong(usize),
    #[error("the layer root can only be a directory")]
    RootNotDir,
    #[error("parent {0:?} is not a directory in this layer")]
    ParentNotDir(String),
    #[error("hardlink to {0:?}, which is not an earlier non-directory of this layer")]
    HardlinkTarget(String),
    #[error("hardlink target: {0}")]
    HardlinkPath(Box<EntryProblem>),
    #[error("symlink with an empty target")]
    EmptySymlink,
    #[error("invalid whiteout name")]
    BadWhiteout,
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(u8),
    #[error("archive ends inside this entry: header says {declared} bytes, only {present} present")]
    Truncated { declared: u64, present: u64 },
    #[error("header field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("reading data: {0}")]
    Read(io::Error),
}
