//! The lower tree: an image's layers merged by OCI rules into one read-only
//! tree of inodes, built from layer indexes alone (no file data is read).
//!
//! Rules, applied layer by layer from the base up:
//! - an opaque directory of layer N hides every child the layers below gave it;
//! - a whiteout of layer N deletes that path (and everything under it) below;
//! - an entry of layer N replaces the path, except that a directory over a
//!   directory keeps the children from below and takes the new attributes;
//! - a hardlink of layer N names the inode of a file of the same layer.
//!
//! Inode numbers are given in one depth-first walk in name order after the
//! merge, so they are dense, start at the root (1), and never change while the
//! tree lives. Names that share an inode count towards its `nlink`.

use std::collections::{BTreeMap, HashMap};

use strata_proto::v1::{EntryKind, LayerIndex};
use strata_types::{ChunkId, LayerId};

use crate::error::MountError;

/// An inode number as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// A regular file's chunk: `len` bytes at `offset` of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// Where an inode came from: its layer and its path in that layer. Reads name
/// it in errors; copy-up records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub layer: LayerId,
    pub path: Box<[u8]>,
}

/// Extended attributes: (name, value) pairs sorted by name.
pub type Xattrs = Box<[(Box<[u8]>, Box<[u8]>)]>;

/// One inode of the merged tree.
#[derive(Clone, Debug)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub size: u64,
    /// Device number (`makedev(major, minor)`) of a device node.
    pub rdev: u64,
    pub nlink: u32,
    pub xattrs: Xattrs,
    /// A symlink's target.
    pub target: Box<[u8]>,
    /// A regular file's content, in order.
    pub chunks: Box<[ChunkSpan]>,
    /// A directory's children, sorted by name.
    pub children: Box<[(Box<[u8]>, Ino)]>,
    /// A directory's parent (the root is its own parent).
    pub parent: Ino,
    pub origin: Origin,
}

impl Inode {
    /// The child named `name`, for a directory.
    pub fn child(&self, name: &[u8]) -> Option<Ino> {
        self.children.binary_search_by(|(n, _)| (**n).cmp(name)).ok().map(|i| self.children[i].1)
    }
}

/// The merged, immutable lower tree of an image.
#[derive(Debug, Default)]
pub struct LowerTree {
    inodes: Vec<Inode>,
    content_bytes: u64,
}

impl LowerTree {
    /// Merges `layers` (base first) into one tree.
    pub fn build(layers: &[(LayerId, LayerIndex)]) -> Result<Self, MountError> {
        let mut builder = Builder::new(layers.first().map(|(id, _)| *id).unwrap_or(LayerId::of(b"")));
        for (id, index) in layers {
            builder.apply(*id, index)?;
        }
        Ok(builder.finish())
    }

    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        let index = usize::try_from(ino.0).ok()?.checked_sub(1)?;
        self.inodes.get(index)
    }

    pub fn root(&self) -> &Inode {
        &self.inodes[0]
    }

    /// Number of inodes, the root included.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// Bytes of regular-file content, each inode counted once.
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes
    }

    /// Every path of `ino` in the tree (several for a hardlinked file).
    pub fn paths_of(&self, ino: Ino) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (index, dir) in self.inodes.iter().enumerate() {
            for (name, child) in dir.children.iter() {
                if *child == ino {
                    let dir_path = self.path_of(Ino(index as u64 + 1));
                    out.push(if dir_path.is_empty() {
                        name.to_vec()
                    } else {
                        [&dir_path[..], b"/", name].concat()
                    });
                }
            }
        }
        out
    }

    /// The path of `ino` by its first parent ("" for the root).
    pub fn path_of(&self, ino: Ino) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        while at != Ino::ROOT {
            let Some(inode) = self.get(at) else { break };
            let Some(parent) = self.get(inode.parent) else { break };
            let Some((name, _)) = parent.children.iter().find(|(_, c)| *c == at) else { break };
            parts.push(name);
            at = inode.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// The inode at `path` ("" is the root; components separated by '/').
    pub fn lookup_path(&self, path: &[u8]) -> Option<Ino> {
        let mut ino = Ino::ROOT;
        for name in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            ino = self.get(ino)?.child(name)?;
        }
        Some(ino)
    }
}

/// The merge in progress: inodes in an arena, directories as maps.
struct Builder {
    nodes: Vec<Node>,
}

struct Node {
    inode: Inode,
    children: BTreeMap<Box<[u8]>, usize>,
}

const ROOT: usize = 0;

impl Builder {
    fn new(base: LayerId) -> Self {
        let root = Node {
            inode: implicit_dir(Origin { layer: base, path: Box::default() }),
            children: BTreeMap::new(),
        };
        Self { nodes: vec![root] }
    }

    fn apply(&mut self, layer: LayerId, index: &LayerIndex) -> Result<(), MountError> {
        let bad = |path: &[u8], reason: &str| MountError::BadIndex {
            layer,
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.to_owned(),
        };
        // Opaque directories and whiteouts act on the layers below only, so
        // they go first.
        // Indexes come from the store or a peer; one not written by this
        // code (a lying peer's index hashes to its own id just as well) may
        // hold any path. Every path must be canonical, as `read_layer`
        // writes them: relative, no empty, "." or ".." component, no NUL,
        // no trailing slash, within the length limits.
        let canonical = |path: &[u8]| strata_layer::normalize_member_path(path).is_ok_and(|n| n == path);
        for path in index.opaque_dirs.iter().chain(index.entries.iter().map(|e| &e.path)).chain(
            index.entries.iter().filter(|e| e.kind == EntryKind::Hardlink as i32).map(|e| &e.link_target),
        ) {
            if !canonical(path) {
                return Err(bad(path, "path is not canonical"));
            }
        }
        for dir in &index.opaque_dirs {
            if let Some(node) = self.find(dir) {
                if self.nodes[node].inode.kind == Kind::Dir {
                    self.nodes[node].children.clear();
                }
            }
        }
        for entry in &index.entries {
            if entry.kind == EntryKind::Whiteout as i32 {
                let (parent, name) = split_parent(&entry.path);
                if let Some(parent) = self.find(parent) {
                    self.nodes[parent].children.remove(name);
                }
            }
        }
        let mut files_of_layer: HashMap<&[u8], usize> = HashMap::new();
        for entry in &index.entries {
            let kind = EntryKind::try_from(entry.kind).map_err(|_| bad(&entry.path, "unknown entry kind"))?;
            if kind == EntryKind::Whiteout {
                continue;
            }
            let origin = Origin { layer, path: entry.path.clone().into_boxed_slice() };
            if entry.path.is_empty() {
                if kind != EntryKind::Dir {
                    return Err(bad(b"", "the root is not a directory"));
                }
                set_dir_attrs(&mut self.nodes[ROOT].inode, entry, origin);
                continue;
            }
            let (parent_path, name) = split_parent(&entry.path);
            let parent = self.ensure_dir(parent_path, layer);
            let existing = self.nodes[parent].children.get(name).copied();
            let node = match kind {
                EntryKind::Hardlink => *files_of_layer
                    .get(entry.link_target.as_slice())
                    .ok_or_else(|| bad(&entry.path, "hardlink to an entry this layer does not hold"))?,
                EntryKind::Dir => match existing {
                    Some(node) if self.nodes[node].inode.kind == Kind::Dir => {
                        set_dir_attrs(&mut self.nodes[node].inode, entry, origin);
                        node
                    }
                    _ => {
                        let mut inode = implicit_dir(origin.clone());
                        set_dir_attrs(&mut inode, entry, origin);
                        self.push(inode)
                    }
                },
                _ => {
                    let inode = leaf_inode(kind, entry, origin).map_err(|reason| bad(&entry.path, reason))?;
                    let node = self.push(inode);
                    // Any non-directory may be a hardlink target.
                    files_of_layer.insert(&entry.path, node);
                    node
                }
            };
            self.nodes[parent].children.insert(name.into(), node);
        }
        Ok(())
    }

    fn push(&mut self, inode: Inode) -> usize {
        self.nodes.push(Node { inode, children: BTreeMap::new() });
        self.nodes.len() - 1
    }

    fn find(&self, path: &[u8]) -> Option<usize> {
        let mut node = ROOT;
        for name in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            node = *self.nodes[node].children.get(name)?;
        }
        Some(node)
    }

    /// The directory at `path`, created (with default attributes) where a
    /// layer names a child of a directory it does not hold, or replaces a
    /// non-directory from below.
    fn ensure_dir(&mut self, path: &[u8], layer: LayerId) -> usize {
        let mut node = ROOT;
        let mut end = 0;
        for name in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            end += name.len() + usize::from(end > 0);
            node = match self.nodes[node].children.get(name) {
                Some(&child) if self.nodes[child].inode.kind == Kind::Dir => child,
                _ => {
                    let origin = Origin { layer, path: path[..end].into() };
                    let child = self.push(implicit_dir(origin));
                    self.nodes[node].children.insert(name.into(), child);
                    child
                }
            };
        }
        node
    }

    /// Numbers the reachable inodes depth-first in name order and counts links.
    fn finish(mut self) -> LowerTree {
        let mut number: Vec<Option<Ino>> = vec![None; self.nodes.len()];
        let mut order: Vec<usize> = Vec::new();
        let mut links: Vec<u32> = vec![0; self.nodes.len()];
        let mut parent_of: Vec<Ino> = vec![Ino::ROOT; self.nodes.len()];
        let mut stack = vec![ROOT];
        number[ROOT] = Some(Ino::ROOT);
        order.push(ROOT);
        while let Some(node) = stack.pop() {
            // Push in reverse so that the walk visits children in name order.
            for &child in self.nodes[node].children.values().rev() {
                links[child] += 1;
                if number[child].is_none() {
                    number[child] = Some(Ino(order.len() as u64 + 1));
                    order.push(child);
                    parent_of[child] = number[node].unwrap_or(Ino::ROOT);
                    if self.nodes[child].inode.kind == Kind::Dir {
                        stack.push(child);
                    }
                }
            }
        }
        let mut content_bytes = 0;
        let mut inodes = Vec::with_capacity(order.len());
        for &node in &order {
            let children = std::mem::take(&mut self.nodes[node].children);
            let subdirs = children.values().filter(|&&c| self.nodes[c].inode.kind == Kind::Dir).count();
            let mut inode = self.nodes[node].inode.clone();
            inode.parent = parent_of[node];
            inode.nlink = match inode.kind {
                Kind::Dir => 2 + subdirs as u32,
                _ => links[node].max(1),
            };
            if inode.kind == Kind::File {
                content_bytes += inode.size;
            }
            inode.children = children
                .into_iter()
                .filter_map(|(name, child)| Some((name, number[child]?)))
                .collect::<Vec<_>>()
                .into_boxed_slice();
            inodes.push(inode);
        }
        LowerTree { inodes, content_bytes }
    }
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn implicit_dir(origin: Origin) -> Inode {
    Inode {
        kind: Kind::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size: 0,
        rdev: 0,
        nlink: 2,
        xattrs: Box::default(),
        target: Box::default(),
        chunks: Box::default(),
        children: Box::default(),
        parent: Ino::ROOT,
        origin,
    }
}

fn set_dir_attrs(inode: &mut Inode, entry: &strata_proto::v1::Entry, origin: Origin) {
    inode.perm = (entry.mode & 0o7777) as u16;
    inode.uid = entry.uid;
    inode.gid = entry.gid;
    inode.mtime_ns = entry.mtime_ns;
    inode.xattrs = xattrs_of(entry);
    inode.origin = origin;
}

fn xattrs_of(entry: &strata_proto::v1::Entry) -> Xattrs {
    entry
        .xattrs
        .iter()
        .map(|x| (x.name.clone().into_boxed_slice(), x.value.clone().into_boxed_slice()))
        .collect()
}

fn leaf_inode(
    kind: EntryKind,
    entry: &strata_proto::v1::Entry,
    origin: Origin,
) -> Result<Inode, &'static str> {
    let kind = match kind {
        EntryKind::File => Kind::File,
        EntryKind::Symlink => Kind::Symlink,
        EntryKind::CharDevice => Kind::CharDevice,
        EntryKind::BlockDevice => Kind::BlockDevice,
        EntryKind::Fifo => Kind::Fifo,
        EntryKind::Unspecified | EntryKind::Dir | EntryKind::Hardlink | EntryKind::Whiteout => {
            return Err("entry kind is not a leaf")
        }
    };
    let mut chunks = Vec::with_capacity(entry.chunks.len());
    let mut expected = 0u64;
    for chunk in &entry.chunks {
        let id = ChunkId::from_slice(&chunk.id).map_err(|_| "chunk id is not 32 bytes")?;
        if chunk.offset != expected || chunk.length == 0 {
            return Err("chunk list is not contiguous");
        }
        expected += u64::from(chunk.length);
        chunks.push(ChunkSpan { id, offset: chunk.offset, len: chunk.length });
    }
    if kind == Kind::File && expected != entry.size {
        return Err("chunk lengths do not add up to the file size");
    }
    Ok(Inode {
        kind,
        perm: (entry.mode & 0o7777) as u16,
        uid: entry.uid,
        gid: entry.gid,
        mtime_ns: entry.mtime_ns,
        size: match kind {
            Kind::File => entry.size,
            Kind::Symlink => entry.link_target.len() as u64,
            _ => 0,
        },
        rdev: libc::makedev(entry.dev_major, entry.dev_minor),
        nlink: 1,
        xattrs: xattrs_of(entry),
        target: if kind == Kind::Symlink {
            entry.link_target.clone().into_boxed_slice()
        } else {
            Box::default()
        },
        chunks: chunks.into_boxed_slice(),
        children: Box::default(),
        parent: Ino::ROOT,
        origin,
    })
}

#[cfg(test)]
#[path = "lower_tests.rs"]
mod tests;
