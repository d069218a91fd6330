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
    /// Lookups the kernel holds (each entry reply counts one; FORGET gives
    /// them back). A nameless inode goes when this reaches 0.
    pub lookups: u64,
    /// The inode has no name (unlinked or renamed over while the kernel
    /// held it): `parent`/`name` are stale, its upper entry, if any, is the
    /// writable layer's orphan of this number.
    pub detached: bool,
}

impl Node {
    /// A node reached by `name` in `parent`, not yet known to the kernel.
    pub fn new(parent: u64, name: &[u8], lower: Option<Ino>, upper: bool) -> Self {
        Self {
            parent,
            name: name.into(),
            lower,
            upper,
            opaque: false,
            cow_lower_size: None,
            lookups: 0,
            detached: false,
        }
    }
}

/// A name: the directory's inode and the name in it.
type Name = (u64, Box<[u8]>);

pub struct Nodes {
    nodes: HashMap<u64, Node>,
    names: HashMap<Name, u64>,
    /// The names other than its own (`Node::parent`, `Node::name`) of each
    /// inode known by several: hardlinks.
    aliases: HashMap<u64, Vec<Name>>,
    next: u64,
}

impl Nodes {
    pub fn new(first_free: u64, root: Node) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(Ino::ROOT.0, root);
        Self { nodes, names: HashMap::new(), aliases: HashMap::new(), next: first_free }
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
        if self.nodes.contains_key(&ino) {
            // A second name of a known inode (a hardlink).
            self.add_name(node.parent, &node.name, ino);
        } else {
            self.names.insert((node.parent, node.name.clone()), ino);
            self.nodes.insert(ino, node);
        }
        ino
    }

    /// Adds a name for a known inode (a hardlink). A nameless inode takes
    /// it as its own; returns whether it was nameless.
    pub fn add_name(&mut self, parent: u64, name: &[u8], ino: u64) -> bool {
        let key = (parent, Box::<[u8]>::from(name));
        if self.names.insert(key.clone(), ino) == Some(ino) {
            return false;
        }
        if let Some(node) = self.nodes.get_mut(&ino).filter(|n| n.detached) {
            node.detached = false;
            node.parent = parent;
            node.name = name.into();
            return true;
        }
        let own = self.nodes.get(&ino).is_some_and(|n| n.parent == parent && *n.name == *name);
        if !own {
            self.aliases.entry(ino).or_default().push(key);
        }
        false
    }

    /// Whether `ino` is known by more than one name.
    pub fn has_other_names(&self, ino: u64) -> bool {
        self.aliases.get(&ino).is_some_and(|a| !a.is_empty())
    }

    /// One more lookup held by the kernel.
    pub fn remember(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// The kernel gives back `n` lookups of `ino`. A nameless inode no
    /// lookup holds any more is dropped and returned, for its upper entry
    /// to be removed.
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<Node> {
        let node = self.nodes.get_mut(&ino)?;
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && node.detached && ino != Ino::ROOT.0 {
            return self.nodes.remove(&ino);
        }
        None
    }

    /// Drops a nameless inode at once (the kernel holds no lookup of it).
    pub fn drop_detached(&mut self, ino: u64) -> Option<Node> {
        if self.nodes.get(&ino).is_some_and(|n| n.detached && n.lookups == 0) {
            return self.nodes.remove(&ino);
        }
        None
    }

    /// Forgets `name` in `parent`; the inode, if it has another name, is
    /// reached by that one from now on, else it is nameless (detached).
    pub fn remove_name(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let key = (parent, Box::<[u8]>::from(name));
        let ino = self.names.remove(&key)?;
        let own = self.nodes.get(&ino).is_some_and(|n| n.parent == parent && *n.name == *name);
        if own && !self.has_other_names(ino) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.detached = true;
            }
            return Some(ino);
        }
        if let Some(aliases) = self.aliases.get_mut(&ino) {
            let own = self.nodes.get(&ino).is_some_and(|n| n.parent == parent && *n.name == *name);
            if own {
                if let (Some((p, n)), Some(node)) = (aliases.pop(), self.nodes.get_mut(&ino)) {
                    node.parent = p;
                    node.name = n;
                }
            } else {
                aliases.retain(|a| *a != key);
            }
            if aliases.is_empty() {
                self.aliases.remove(&ino);
            }
        }
        Some(ino)
    }

    /// Moves an inode's name. The old name is dropped only while it still
    /// names `ino`: in an exchange, the other inode's move has taken it.
    pub fn rename(&mut self, ino: u64, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8]) {
        let (old, new) = ((parent, Box::<[u8]>::from(name)), (new_parent, Box::<[u8]>::from(new_name)));
        if self.names.get(&old) == Some(&ino) {
            self.names.remove(&old);
        }
        self.names.insert(new.clone(), ino);
        let own = self.nodes.get(&ino).is_some_and(|n| n.parent == parent && *n.name == *name);
        if own {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = new_parent;
                node.name = Box::from(new_name);
            }
        } else if let Some(alias) = self.aliases.get_mut(&ino).and_then(|a| a.iter_mut().find(|a| **a == old))
        {
            *alias = new;
        }
    }

    /// The merged path of `ino` ("" for the root), by its parents' names.
    pub fn path(&self, ino: u64) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        // Parents never loop; the bound only keeps a broken map from
        // spinning (paths may be deeper than PATH_MAX).
        let mut guard = self.nodes.len();
        while at != Ino::ROOT.0 {
            let Some(node) = self.nodes.get(&at) else { break };
            parts.push(&node.name);
            at = node.parent;
            guard = match guard.checked_sub(1) {
                Some(g) => g,
                None => break,
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(parent: u64, name: &str) -> Node {
        Node::new(parent, name.as_bytes(), None, true)
    }

    #[test]
    fn an_inode_keeps_a_name_while_it_has_one() {
        let root = node(1, "");
        let mut nodes = Nodes::new(100, root);
        let dir = nodes.insert(None, node(1, "d"));
        let file = nodes.insert(None, node(dir, "a"));
        nodes.add_name(dir, b"b", file);
        nodes.add_name(1, b"c", file);
        assert_eq!(nodes.path(file), b"d/a");
        nodes.remove_name(dir, b"a");
        let path = nodes.path(file);
        assert!(path == b"c" || path == b"d/b", "reached by a remaining name, not {path:?}");
        nodes.rename(file, 1, b"c", dir, b"e");
        nodes.remove_name(dir, b"b");
        assert_eq!(nodes.path(file), b"d/e");
        assert_eq!(nodes.named(dir, b"e"), Some(file));
        assert_eq!(nodes.named(dir, b"a"), None);
    }

    #[test]
    fn an_exchange_keeps_both_names() {
        let mut nodes = Nodes::new(100, node(1, ""));
        let a = nodes.insert(None, node(1, "a"));
        let b = nodes.insert(None, node(1, "b"));
        // RENAME_EXCHANGE of a and b, as the overlay records it.
        nodes.rename(a, 1, b"a", 1, b"b");
        nodes.rename(b, 1, b"b", 1, b"a");
        assert_eq!(nodes.named(1, b"b"), Some(a));
        assert_eq!(nodes.named(1, b"a"), Some(b));
        assert_eq!((nodes.path(a), nodes.path(b)), (b"b".to_vec(), b"a".to_vec()));
        // Unlinking one name leaves the other inode named.
        nodes.remove_name(1, b"b");
        assert!(nodes.get(a).is_some_and(|n| n.detached));
        assert!(nodes.get(b).is_some_and(|n| !n.detached));
    }
}
