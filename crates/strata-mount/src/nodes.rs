//! The inodes the kernel knows of a writable mount: where each lives (lower
//! tree, upper directory or both) and under which name.
//!
//! An inode backed by a lower inode keeps the lower inode's number, also once
//! copied up, so numbers hold across copy-up and remount. Entries that exist
//! only in the upper layer get numbers above the lower tree's.

use std::collections::HashMap;

use crate::lower::Ino;

#[derive(Clone, Debug)]
pub struct Node {
    /// The directory holding the name this node is reached by.
    pub parent: u64,
    pub name: Box<[u8]>,
    /// The lower inode shown (files) or merged (directories).
    pub lower: Option<Ino>,
    /// The entry exists in the upper directory.
    pub upper: bool,
    /// A directory whose lower children are hidden.
    pub opaque: bool,
    /// A copied-up file's lower size: unwritten bytes below it come from `lower`.
    pub cow_lower_size: Option<u64>,
}

pub struct Nodes {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, Box<[u8]>), u64>,
    next: u64,
}

impl Nodes {
    pub fn new(first_free: u64, root: Node) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(Ino::ROOT.0, root);
        Self { nodes, names: HashMap::new(), next: first_free }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The inode known under `name` in `parent`, if looked up before.
    pub fn named(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.names.get(&(parent, Box::from(name))).copied()
    }

    /// Records `node` under its name, numbered `ino` or, if `None`, anew.
    pub fn insert(&mut self, ino: Option<u64>, node: Node) -> u64 {
        let ino = ino.unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.names.insert((node.parent, node.name.clone()), ino);
        // A second name of a known inode (a hardlink) keeps the first.
        self.nodes.entry(ino).or_insert(node);
        ino
    }

    /// Adds a name for a known inode (a new hardlink).
    pub fn add_name(&mut self, parent: u64, name: &[u8], ino: u64) {
        self.names.insert((parent, Box::from(name)), ino);
    }

    /// Forgets `name` in `parent`; the inode, if it has another name, is
    /// reached by that one from now on.
    pub fn remove_name(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = self.names.remove(&(parent, Box::from(name)))?;
        let other = self.names.iter().find(|(_, &i)| i == ino).map(|((p, n), _)| (*p, n.clone()));
        if let (Some(node), Some((p, n))) = (self.nodes.get_mut(&ino), other) {
            if node.parent == parent && *node.name == *name {
                node.parent = p;
                node.name = n;
            }
        }
        Some(ino)
    }

    /// Moves an inode's name.
    pub fn rename(&mut self, ino: u64, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8]) {
        self.names.remove(&(parent, Box::from(name)));
        self.names.insert((new_parent, Box::from(new_name)), ino);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.parent = new_parent;
            node.name = Box::from(new_name);
        }
    }

    /// The merged path of `ino` ("" for the root), by its parents' names.
    pub fn path(&self, ino: u64) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        let mut guard = 0;
        while at != Ino::ROOT.0 {
            let Some(node) = self.nodes.get(&at) else { break };
            parts.push(&node.name);
            at = node.parent;
            guard += 1;
            if guard > 4096 {
                break;
            }
        }
        parts.reverse();
        parts.join(&b'/')
    }
}

/// `parent/name` as a merged path.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}
