use strata_proto::v1::{ChunkRef, Entry, EntryKind, LayerIndex, Xattr};
use strata_types::{ChunkId, LayerId};

use super::*;

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry { path: path.as_bytes().to_vec(), kind: kind as i32, mode: 0o755, ..Default::default() }
}

fn dir(path: &str) -> Entry {
    entry(path, EntryKind::Dir)
}

fn file(path: &str, content: &[u8]) -> Entry {
    let mut e = entry(path, EntryKind::File);
    e.mode = 0o644;
    e.size = content.len() as u64;
    if !content.is_empty() {
        e.chunks = vec![ChunkRef {
            id: ChunkId::of(content).as_bytes().to_vec(),
            offset: 0,
            length: content.len() as u32,
        }];
    }
    e
}

fn link(path: &str, kind: EntryKind, target: &str) -> Entry {
    let mut e = entry(path, kind);
    e.link_target = target.as_bytes().to_vec();
    e
}

fn layer(mut entries: Vec<Entry>, opaque: &[&str]) -> (LayerId, LayerIndex) {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let index = LayerIndex {
        version: 1,
        entries,
        opaque_dirs: opaque.iter().map(|p| p.as_bytes().to_vec()).collect(),
    };
    (LayerId::of(&prost::Message::encode_to_vec(&index)), index)
}

fn names(tree: &LowerTree, path: &str) -> Vec<String> {
    let ino = tree.lookup_path(path.as_bytes()).expect("directory exists");
    tree.get(ino)
        .expect("inode")
        .children
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn size_of(tree: &LowerTree, path: &str) -> u64 {
    tree.get(tree.lookup_path(path.as_bytes()).expect("exists")).expect("inode").size
}

#[test]
fn later_layers_win_and_whiteouts_hide() {
    let base = layer(vec![dir(""), dir("etc"), file("etc/a", b"1"), file("etc/b", b"22"), dir("var")], &[]);
    let mid = layer(vec![dir("etc"), file("etc/a", b"333"), entry("etc/b", EntryKind::Whiteout)], &[]);
    let top = layer(vec![file("etc/b", b"4444"), entry("var", EntryKind::Whiteout)], &[]);
    let tree = LowerTree::build(&[base, mid, top]).expect("builds");
    assert_eq!(names(&tree, ""), ["etc"]);
    assert_eq!(names(&tree, "etc"), ["a", "b"]);
    assert_eq!(size_of(&tree, "etc/a"), 3);
    assert_eq!(size_of(&tree, "etc/b"), 4, "a file whited out below can come back above");
}

#[test]
fn opaque_dirs_hide_every_lower_child_across_layers() {
    let base = layer(vec![dir("d"), file("d/one", b"1"), dir("d/sub"), file("d/sub/x", b"x")], &[]);
    let mid = layer(vec![dir("d"), file("d/two", b"2")], &[]);
    let top = layer(vec![dir("d"), file("d/three", b"3")], &["d"]);
    let above = layer(vec![dir("d"), file("d/four", b"4")], &[]);
    let tree = LowerTree::build(&[base, mid, top, above]).expect("builds");
    assert_eq!(names(&tree, "d"), ["four", "three"]);
    assert!(tree.lookup_path(b"d/sub/x").is_none());
}

#[test]
fn directories_merge_and_replace_across_kinds() {
    let base = layer(vec![dir("a"), file("a/x", b"x"), file("b", b"b"), dir("c"), file("c/y", b"y")], &[]);
    let mut a = dir("a");
    a.mode = 0o700;
    a.uid = 7;
    let top =
        layer(vec![a, file("a/z", b"z"), dir("b"), file("b/inner", b"i"), file("c", b"now a file")], &[]);
    let tree = LowerTree::build(&[base, top]).expect("builds");
    let a = tree.get(tree.lookup_path(b"a").expect("a")).expect("inode");
    assert_eq!((a.perm, a.uid), (0o700, 7), "a directory over a directory takes the new attributes");
    assert_eq!(names(&tree, "a"), ["x", "z"], "and keeps the children from below");
    assert_eq!(names(&tree, "b"), ["inner"], "a directory replaces a file");
    let c = tree.get(tree.lookup_path(b"c").expect("c")).expect("inode");
    assert_eq!(c.kind, Kind::File, "a file replaces a directory and its subtree");
    assert!(tree.lookup_path(b"c/y").is_none());
}

#[test]
fn hardlinks_share_an_inode_and_count_links() {
    let base = layer(
        vec![
            dir("bin"),
            file("bin/a", b"content"),
            link("bin/b", EntryKind::Hardlink, "bin/a"),
            link("bin/c", EntryKind::Hardlink, "bin/a"),
        ],
        &[],
    );
    let tree = LowerTree::build(std::slice::from_ref(&base)).expect("builds");
    let a = tree.lookup_path(b"bin/a").expect("a");
    assert_eq!(tree.lookup_path(b"bin/b"), Some(a));
    assert_eq!(tree.lookup_path(b"bin/c"), Some(a));
    assert_eq!(tree.get(a).expect("inode").nlink, 3);

    // A later layer replacing one name leaves two links.
    let top = layer(vec![dir("bin"), file("bin/c", b"other")], &[]);
    let tree = LowerTree::build(&[base, top]).expect("builds");
    let a = tree.lookup_path(b"bin/a").expect("a");
    assert_eq!(tree.get(a).expect("inode").nlink, 2);
    assert_ne!(tree.lookup_path(b"bin/c"), Some(a));
}

#[test]
fn inode_numbers_are_dense_deterministic_and_dirs_know_their_parent() {
    let build = || {
        LowerTree::build(&[layer(
            vec![
                dir("a"),
                dir("a/b"),
                file("a/b/f", b"f"),
                file("z", b"z"),
                link("s", EntryKind::Symlink, "z"),
            ],
            &[],
        )])
        .expect("builds")
    };
    let (one, two) = (build(), build());
    assert_eq!(one.len(), 6);
    for path in ["", "a", "a/b", "a/b/f", "z", "s"] {
        let ino = one.lookup_path(path.as_bytes()).expect("exists");
        assert!(ino.0 >= 1 && ino.0 <= 6);
        assert_eq!(two.lookup_path(path.as_bytes()), Some(ino));
    }
    let b = one.lookup_path(b"a/b").expect("a/b");
    assert_eq!(one.get(b).expect("inode").parent, one.lookup_path(b"a").expect("a"));
    assert_eq!(one.get(Ino::ROOT).expect("root").nlink, 3, "root has . and its subdirectory a");
    let s = one.get(one.lookup_path(b"s").expect("s")).expect("inode");
    assert_eq!((&*s.target, s.size), (&b"z"[..], 1));
}

#[test]
fn xattrs_devices_and_missing_parents() {
    let mut f = file("deep/er/f", b"data");
    f.xattrs = vec![Xattr { name: b"user.k".to_vec(), value: b"v".to_vec() }];
    let mut dev = entry("null", EntryKind::CharDevice);
    dev.dev_major = 1;
    dev.dev_minor = 3;
    let tree = LowerTree::build(&[layer(vec![f, dev], &[])]).expect("builds");
    let f = tree.get(tree.lookup_path(b"deep/er/f").expect("implicit parents are made")).expect("inode");
    assert_eq!(&*f.xattrs[0].0, b"user.k");
    let null = tree.get(tree.lookup_path(b"null").expect("null")).expect("inode");
    assert_eq!(null.rdev, libc::makedev(1, 3));
}

#[test]
fn inconsistent_indexes_are_errors() {
    let mut bad = file("f", b"abc");
    bad.size = 10;
    assert!(matches!(LowerTree::build(&[layer(vec![bad], &[])]), Err(MountError::BadIndex { .. })));
    let dangling = link("h", EntryKind::Hardlink, "nowhere");
    assert!(matches!(LowerTree::build(&[layer(vec![dangling], &[])]), Err(MountError::BadIndex { .. })));
}
