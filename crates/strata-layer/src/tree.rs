//! The tree being built: entries by canonical path, with `tar -x` replacement
//! semantics and hardlink groups kept consistent as members replace others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::path::ancestors;
use crate::{display_path, EntryKind, EntryProblem, LayerIndex, INDEX_VERSION};
use strata_proto::v1::Entry;

#[derive(Default)]
pub(crate) struct Tree {
    entries: BTreeMap<Vec<u8>, Entry>,
    opaque: BTreeSet<Vec<u8>>,
    /// Paths whited out (`.wh.NAME`). They act on the layers below only,
    /// whatever the member order, so they are kept apart and resolved at
    /// the end against what this layer holds.
    whiteouts: BTreeSet<Vec<u8>>,
    /// Path of a non-directory → paths of hardlinks to it.
    links: HashMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// Files under AUFS's `.wh..wh.plnk/`, by path: content that hardlinks
    /// elsewhere in the layer may name.
    aufs: HashMap<Vec<u8>, Entry>,
    /// The path that took each AUFS file's content (its first link).
    aufs_heirs: HashMap<Vec<u8>, Vec<u8>>,
}

/// Whether entries of this kind may be hardlink targets: any non-directory
/// (docker writes a hardlink member for any non-directory with nlink > 1).
fn linkable(k: EntryKind) -> bool {
    !matches!(k, EntryKind::Dir | EntryKind::Hardlink | EntryKind::Whiteout | EntryKind::Unspecified)
}

fn kind(e: &Entry) -> EntryKind {
    EntryKind::try_from(e.kind).unwrap_or(EntryKind::Unspecified)
}

impl Tree {
    /// Adds an entry, replacing whatever the path held (last member wins).
    pub(crate) fn insert(&mut self, entry: Entry) {
        self.remove(&entry.path);
        self.entries.insert(entry.path.clone(), entry);
    }

    /// Records `path` whited out.
    pub(crate) fn whiteout(&mut self, path: Vec<u8>) {
        self.whiteouts.insert(path);
    }

    /// Keeps a file of AUFS's namespace aside, for hardlinks to name.
    pub(crate) fn insert_aufs(&mut self, entry: Entry) {
        self.aufs_heirs.remove(&entry.path);
        self.aufs.insert(entry.path.clone(), entry);
    }

    /// Adds a hardlink at `path` to the earlier non-directory at `target`.
    pub(crate) fn insert_hardlink(&mut self, path: Vec<u8>, target: &[u8]) -> Result<(), EntryProblem> {
        let refuse = || EntryProblem::HardlinkTarget(display_path(target));
        if path == target {
            return Err(refuse());
        }
        // Like tar, replace the old member first: if it was the file itself,
        // one of its other links now holds the content.
        self.remove(&path);
        if let Some(content) = self.aufs.get(target) {
            // A link into `.wh..wh.plnk/`: the first takes the content, the
            // others link to it.
            let heir = self.aufs_heirs.get(target).filter(|h| {
                self.entries
                    .get(h.as_slice())
                    .is_some_and(|e| kind(e) == EntryKind::File && e.chunks == content.chunks)
            });
            match heir.cloned() {
                Some(heir) => return self.insert_hardlink(path, &heir),
                None => {
                    let entry = Entry { path: path.clone(), ..content.clone() };
                    self.aufs_heirs.insert(target.to_vec(), path);
                    self.entries.insert(entry.path.clone(), entry);
                    return Ok(());
                }
            }
        }
        let file = match self.entries.get(target) {
            Some(e) if linkable(kind(e)) => target.to_vec(),
            Some(e) if kind(e) == EntryKind::Hardlink => e.link_target.clone(),
            _ => return Err(refuse()),
        };
        self.links.entry(file.clone()).or_default().insert(path.clone());
        let link = Entry {
            path: path.clone(),
            kind: EntryKind::Hardlink as i32,
            link_target: file,
            ..Default::default()
        };
        self.entries.insert(path, link);
        Ok(())
    }

    pub(crate) fn mark_opaque(&mut self, dir: Vec<u8>) {
        self.opaque.insert(dir);
    }

    fn remove(&mut self, path: &[u8]) {
        let Some(old) = self.entries.remove(path) else { return };
        match kind(&old) {
            k if linkable(k) => {
                if let Some(mut group) = self.links.remove(path) {
                    if let Some(heir) = group.pop_first() {
                        self.entries.insert(heir.clone(), Entry { path: heir.clone(), ..old });
                        for other in &group {
                            if let Some(e) = self.entries.get_mut(other) {
                                e.link_target = heir.clone();
                            }
                        }
                        if !group.is_empty() {
                            self.links.insert(heir, group);
                        }
                    }
                }
            }
            EntryKind::Hardlink => {
                if let Some(group) = self.links.get_mut(&old.link_target) {
                    group.remove(path);
                }
            }
            _ => {}
        }
    }

    /// The canonical index, after checking that every parent within the
    /// layer is a directory. On error, returns the member path at fault.
    pub(crate) fn finish(mut self) -> Result<LayerIndex, (Vec<u8>, EntryProblem)> {
        self.canonicalize_links();
        self.resolve_whiteouts();
        for path in self.entries.keys().chain(self.opaque.iter()) {
            for parent in ancestors(path) {
                if let Some(e) = self.entries.get(parent) {
                    if kind(e) != EntryKind::Dir {
                        return Err((path.clone(), EntryProblem::ParentNotDir(display_path(parent))));
                    }
                }
            }
        }
        for dir in &self.opaque {
            if let Some(e) = self.entries.get(dir) {
                if kind(e) != EntryKind::Dir {
                    return Err((dir.clone(), EntryProblem::ParentNotDir(display_path(dir))));
                }
            }
        }
        Ok(LayerIndex {
            version: INDEX_VERSION,
            entries: self.entries.into_values().collect(),
            opaque_dirs: self.opaque.into_iter().collect(),
        })
    }

    /// Whiteouts act on the layers below only (OCI image-spec, "Whiteouts":
    /// a whiteout never hides entries of its own layer). A whiteout of a
    /// path this layer makes a directory, or puts entries under, becomes an
    /// opaque directory: the directory holds only this layer's children. A
    /// whiteout of a path this layer replaces by a non-directory says
    /// nothing more. Any other stays a whiteout entry.
    fn resolve_whiteouts(&mut self) {
        for path in std::mem::take(&mut self.whiteouts) {
            match self.entries.get(&path) {
                Some(e) if kind(e) == EntryKind::Dir => {
                    self.opaque.insert(path);
                }
                Some(_) => {}
                None => {
                    let mut below = path.clone();
                    below.push(b'/');
                    let holds_children = self
                        .entries
                        .range(below.clone()..)
                        .next()
                        .is_some_and(|(p, _)| p.starts_with(&below))
                        || self.opaque.range(below.clone()..).next().is_some_and(|p| p.starts_with(&below));
                    if holds_children {
                        self.opaque.insert(path);
                    } else {
                        self.entries.insert(
                            path.clone(),
                            Entry { path, kind: EntryKind::Whiteout as i32, ..Default::default() },
                        );
                    }
                }
            }
        }
    }

    /// Puts each group's content under its smallest path, so the index does
    /// not depend on which name the archive listed first.
    fn canonicalize_links(&mut self) {
        let groups: Vec<(Vec<u8>, BTreeSet<Vec<u8>>)> =
            self.links.drain().filter(|(_, links)| !links.is_empty()).collect();
        for (file, links) in groups {
            let Some(first) = links.first().cloned() else { continue };
            let owner = if first < file { first } else { file.clone() };
            if owner != file {
                if let Some(content) = self.entries.remove(&file) {
                    self.entries.insert(owner.clone(), Entry { path: owner.clone(), ..content });
                }
                let demoted =
                    Entry { path: file.clone(), kind: EntryKind::Hardlink as i32, ..Default::default() };
                self.entries.insert(file.clone(), demoted);
            }
            for member in links.iter().chain(std::iter::once(&file)) {
                if *member != owner {
                    if let Some(e) = self.entries.get_mut(member) {
                        e.link_target = owner.clone();
                    }
                }
            }
        }
    }
}
