//! Layer tar → index → tar, with hostile archives.

use std::collections::HashMap;
use std::convert::Infallible;

use proptest::prelude::*;
use strata_chunk::{Chunker, Chunking};
use strata_layer::{
    chunks_outside_index, load_split, put_split, read_layer, write_layer, write_split, ChunkSink,
    ChunkSource, EntryKind, LayerError, LayerIndex, TarSplit,
};
use strata_types::{ChunkId, LayerId};
use tar::{EntryType, Header};

#[derive(Default)]
struct Chunks(HashMap<ChunkId, Vec<u8>>);

impl ChunkSink for Chunks {
    type Error = Infallible;
    fn put(&mut self, id: ChunkId, data: &[u8]) -> Result<(), Infallible> {
        assert_eq!(ChunkId::of(data), id);
        self.0.insert(id, data.to_vec());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("missing chunk")]
struct Missing;

impl ChunkSource for Chunks {
    type Error = Missing;
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, Missing> {
        self.0.get(id).cloned().ok_or(Missing)
    }
}

fn small_chunks() -> Chunker {
    Chunker::new(Chunking::Cdc { min: 256, avg: 1024, max: 4096 }).unwrap()
}

fn read(tar: &[u8]) -> Result<(LayerIndex, Chunks), LayerError> {
    let mut chunks = Chunks::default();
    let read = read_layer(tar, &mut small_chunks(), &mut chunks)?;
    Ok((read.index, chunks))
}

fn layer_id(index: &LayerIndex) -> LayerId {
    LayerId::of(&prost::Message::encode_to_vec(index))
}

/// Builds tars member by member, raw, so tests can write what honest tools
/// never would.
struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, path: &[u8], size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path);
        h.set_cksum();
        h
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.raw_file(path.as_bytes(), data)
    }

    fn raw_file(mut self, path: &[u8], data: &[u8]) -> Self {
        let h = Self::header(EntryType::Regular, path, data.len() as u64);
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(mut self, path: &str) -> Self {
        let h = Self::header(EntryType::Directory, path.as_bytes(), 0);
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, path.as_bytes(), 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn device(mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, path.as_bytes(), 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0.append_pax_extensions(records.iter().copied()).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 17) as u8).collect()
}

fn every_kind() -> Vec<u8> {
    TarBuilder::new()
        .dir("./")
        .dir("./etc/")
        .file("./etc/hosts", b"127.0.0.1 localhost\n")
        .file("./big", &noise(50_000, 1))
        .file("./empty", b"")
        .link(EntryType::Symlink, "./etc/escape", "../../../../etc/shadow")
        .link(EntryType::Symlink, "./abs", "/usr/bin/env")
        .link(EntryType::Link, "./big-again", "./big")
        .device(EntryType::Char, "./null", 1, 3)
        .device(EntryType::Block, "./sda", 8, 0)
        .device(EntryType::Fifo, "./pipe", 0, 0)
        .pax(&[
            ("SCHILY.xattr.user.note", b"hi"),
            ("SCHILY.xattr.security.capability", b"\x01\x00"),
            ("mtime", b"1700000000.123456789"),
        ])
        .file("./xattrs", b"x")
        .raw_file(b"./\xff\xfename", b"not utf-8")
        .file("./gone/.wh.old", b"")
        .file("./opaque/.wh..wh..opq", b"")
        .finish()
}

#[test]
fn every_entry_kind_is_indexed() {
    let (index, chunks) = read(&every_kind()).unwrap();
    let by_path: HashMap<&[u8], &strata_layer::Entry> =
        index.entries.iter().map(|e| (&e.path[..], e)).collect();
    let kind = |p: &[u8]| EntryKind::try_from(by_path[p].kind).unwrap();
    assert_eq!(kind(b""), EntryKind::Dir);
    assert_eq!(kind(b"etc/hosts"), EntryKind::File);
    assert_eq!(kind(b"etc/escape"), EntryKind::Symlink);
    assert_eq!(by_path[&b"etc/escape"[..]].link_target, b"../../../../etc/shadow");
    assert_eq!(by_path[&b"abs"[..]].link_target, b"/usr/bin/env");
    assert_eq!(kind(b"big"), EntryKind::File, "the smallest path of a hardlink group holds the content");
    assert_eq!(kind(b"big-again"), EntryKind::Hardlink);
    assert_eq!(by_path[&b"big-again"[..]].link_target, b"big");
    assert_eq!(kind(b"null"), EntryKind::CharDevice);
    assert_eq!((by_path[&b"sda"[..]].dev_major, by_path[&b"sda"[..]].dev_minor), (8, 0));
    assert_eq!(kind(b"pipe"), EntryKind::Fifo);
    assert_eq!(kind(b"gone/old"), EntryKind::Whiteout);
    assert_eq!(kind(b"\xff\xfename"), EntryKind::File);
    assert_eq!(index.opaque_dirs, vec![b"opaque".to_vec()]);
    assert!(!by_path.contains_key(&b"opaque/.wh..wh..opq"[..]));
    let x = by_path[&b"xattrs"[..]];
    assert_eq!(x.mtime_ns, 1_700_000_000_123_456_789);
    let names: Vec<&[u8]> = x.xattrs.iter().map(|a| &a.name[..]).collect();
    assert_eq!(names, vec![&b"security.capability"[..], b"user.note"], "xattrs sorted by name");
    let hosts = by_path[&b"etc/hosts"[..]];
    assert_eq!((hosts.mode, hosts.uid, hosts.gid, hosts.size), (0o644, 1000, 1000, 20));
    let big = by_path[&b"big"[..]];
    assert!(big.chunks.len() > 5);
    let mut offset = 0;
    for c in &big.chunks {
        assert_eq!(c.offset, offset);
        offset += u64::from(c.length);
        assert!(chunks.0.contains_key(&ChunkId::from_slice(&c.id).unwrap()));
    }
    assert_eq!(offset, 50_000);
    assert!(by_path[&b"empty"[..]].chunks.is_empty());
}

#[test]
fn hardlink_groups_are_canonical_whichever_name_came_first() {
    let a = TarBuilder::new().file("z", b"shared").link(EntryType::Link, "a", "z").finish();
    let b = TarBuilder::new().file("a", b"shared").link(EntryType::Link, "z", "a").finish();
    let (ia, _) = read(&a).unwrap();
    let (ib, _) = read(&b).unwrap();
    assert_eq!(ia, ib);
    assert_eq!(EntryKind::try_from(ia.entries[0].kind).unwrap(), EntryKind::File);
    assert_eq!(ia.entries[1].link_target, b"a");
}

#[test]
fn export_reads_back_to_the_same_layer_id() {
    let (index, mut chunks) = read(&every_kind()).unwrap();
    let tar = write_layer(&index, &mut chunks, Vec::new()).unwrap();
    let (again, _) = read(&tar).unwrap();
    assert_eq!(again, index);
    assert_eq!(layer_id(&again), layer_id(&index));
}

#[test]
fn long_names_and_big_ids_round_trip_through_pax() {
    let long = format!("{}/file", "d".repeat(200));
    let tar = TarBuilder::new()
        .pax(&[("path", long.as_bytes()), ("uid", b"4000000000")])
        .file("x", b"data")
        .finish();
    let (index, mut chunks) = read(&tar).unwrap();
    assert_eq!(index.entries[0].path, long.as_bytes());
    assert_eq!(index.entries[0].uid, 4_000_000_000);
    let (again, _) = read(&write_layer(&index, &mut chunks, Vec::new()).unwrap()).unwrap();
    assert_eq!(again, index);
}

fn refused(tar: &[u8]) -> String {
    match read(tar) {
        Ok(_) => panic!("hostile layer was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dotdot_and_absolute_paths_are_refused_by_name() {
    let e = refused(&TarBuilder::new().file("../../etc/cron.d/evil", b"x").finish());
    assert!(e.contains("../../etc/cron.d/evil") && e.contains(".."), "{e}");
    let e = refused(&TarBuilder::new().file("/etc/passwd", b"x").finish());
    assert!(e.contains("/etc/passwd") && e.contains("absolute"), "{e}");
}

#[test]
fn writing_through_a_symlink_parent_is_refused() {
    let tar =
        TarBuilder::new().link(EntryType::Symlink, "etc", "/etc").file("etc/passwd", b"root::0:0").finish();
    let e = refused(&tar);
    assert!(e.contains("etc/passwd") && e.contains("not a directory"), "{e}");
}

#[test]
fn hardlinks_to_missing_or_later_entries_are_refused() {
    let e = refused(&TarBuilder::new().link(EntryType::Link, "a", "nowhere").finish());
    assert!(e.contains("\"a\"") && e.contains("nowhere"), "{e}");
    let e = refused(&TarBuilder::new().link(EntryType::Link, "a", "b").file("b", b"later").finish());
    assert!(e.contains("\"a\""), "{e}");
    let e = refused(&TarBuilder::new().dir("d").link(EntryType::Link, "a", "d").finish());
    assert!(e.contains("not an earlier non-directory"), "{e}");
    let e = refused(&TarBuilder::new().link(EntryType::Link, "a", "../x").finish());
    assert!(e.contains("hardlink target"), "{e}");
}

#[test]
fn duplicate_entries_last_wins_and_hardlinks_keep_old_content() {
    let tar = TarBuilder::new()
        .file("f", b"first")
        .link(EntryType::Link, "g", "f")
        .file("f", b"second")
        .file("h", b"one")
        .file("h", b"two")
        .finish();
    let (index, mut chunks) = read(&tar).unwrap();
    let content = |p: &[u8], chunks: &mut Chunks| {
        let e = index.entries.iter().find(|e| e.path == p).unwrap();
        e.chunks
            .iter()
            .flat_map(|c| chunks.chunk(&ChunkId::from_slice(&c.id).unwrap()).unwrap())
            .collect::<Vec<u8>>()
    };
    assert_eq!(content(b"f", &mut chunks), b"second");
    assert_eq!(content(b"g", &mut chunks), b"first", "the link keeps the inode it was made to");
    assert_eq!(content(b"h", &mut chunks), b"two");
    assert_eq!(index.entries.len(), 3);
}

#[test]
fn truncated_archives_are_refused() {
    let whole = TarBuilder::new().file("a", &noise(10_000, 3)).file("b", b"bee").finish();
    // Cut inside a's data.
    let e = refused(&whole[..3000]);
    assert!(e.contains("\"a\"") && e.contains("archive ends inside this entry"), "{e}");
    // Cut exactly after b's data block, before the end-of-archive marker.
    let end_of_b = 512 + 10_240 + 512 + 512;
    let e = refused(&whole[..end_of_b]);
    assert!(e.contains("truncated") && e.contains("\"b\""), "{e}");
    // Cut inside a header.
    let e = refused(&whole[..512 + 10_240 + 100]);
    assert!(e.contains("\"a\""), "{e}");
}

#[test]
fn a_size_beyond_the_archive_is_refused() {
    let mut tar = TarBuilder::new().file("small", b"tiny").finish();
    let mut h = Header::from_byte_slice(&tar[..512]).clone();
    h.set_size(1 << 40);
    h.set_cksum();
    tar[..512].copy_from_slice(h.as_bytes());
    let e = refused(&tar);
    assert!(e.contains("small") && e.contains("1099511627776"), "{e}");
}

#[test]
fn very_deep_paths_are_refused_but_deep_trees_are_fine() {
    let deep = "d/".repeat(2100) + "f";
    let e = refused(&TarBuilder::new().pax(&[("path", deep.as_bytes())]).file("x", b"x").finish());
    assert!(e.contains("more than the 4096 allowed"), "{e}");

    let ok = "d/".repeat(500) + "f";
    let (index, _) =
        read(&TarBuilder::new().pax(&[("path", ok.as_bytes())]).file("x", b"x").finish()).unwrap();
    assert_eq!(index.entries[0].path, ok.as_bytes());
}

#[test]
fn a_corrupt_header_names_the_last_good_member() {
    let mut tar = TarBuilder::new().file("good", b"ok").file("bad", b"x").finish();
    tar[1024 + 148] ^= 0x55; // checksum field of the second header
    let e = refused(&tar);
    assert!(e.contains("\"good\"") && e.contains("cksum"), "{e}");
}

#[test]
fn root_must_be_a_directory() {
    let e = refused(&TarBuilder::new().file("./", b"").finish());
    assert!(e.contains("root"), "{e}");
}

// Trees as (path, content) sets, built in any member order, with noise members
// that later members override: the index must only depend on the final tree.
fn tree_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = "[a-c]{1,2}(/[a-c]{1,2}){0,2}";
    proptest::collection::btree_map(name, proptest::collection::vec(any::<u8>(), 0..3000), 1..12)
        .prop_map(|m| m.into_iter().collect())
}

fn tar_of(files: &[(String, Vec<u8>)], decoys: bool) -> Vec<u8> {
    // Turn paths that are prefixes of others into directories.
    let all: Vec<&String> = files.iter().map(|(p, _)| p).collect();
    let mut b = TarBuilder::new();
    for (path, data) in files {
        let is_dir = all.iter().any(|o| o.starts_with(&format!("{path}/")));
        if decoys {
            b = b.file(path, b"decoy that a later member replaces");
        }
        b = if is_dir { b.dir(path) } else { b.file(path, data) };
    }
    b.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn index_encoding_depends_only_on_the_tree(files in tree_strategy(), seed in any::<u64>()) {
        let mut shuffled = files.clone();
        // Parents first keeps the tar valid; order siblings by a seeded key.
        shuffled.sort_by_key(|(p, _)| (p.matches('/').count(), blake3::hash(&[p.as_bytes(), &seed.to_le_bytes()].concat()).as_bytes()[0]));
        let (a, mut chunks) = read(&tar_of(&files, false)).unwrap();
        let (b, _) = read(&tar_of(&shuffled, true)).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(layer_id(&a), layer_id(&b));
        let (c, _) = read(&write_layer(&a, &mut chunks, Vec::new()).unwrap()).unwrap();
        prop_assert_eq!(layer_id(&a), layer_id(&c));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Mutated archives are refused or read, never a panic or a hang.
    #[test]
    fn mutated_archives_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut tar = every_kind();
        for (at, byte) in flips {
            let i = at.index(tar.len());
            tar[i] ^= byte;
        }
        let keep = cut.index(tar.len() + 1);
        let _ = read(&tar[..keep]);
    }
}

fn entry<'a>(index: &'a LayerIndex, path: &str) -> Option<&'a strata_proto::v1::Entry> {
    index.entries.iter().find(|e| e.path == path.as_bytes())
}

fn kind_of(index: &LayerIndex, path: &str) -> Option<EntryKind> {
    entry(index, path).map(|e| EntryKind::try_from(e.kind).unwrap())
}

#[test]
fn a_hardlink_may_name_any_earlier_non_directory() {
    // docker writes a hardlink member for any non-directory with nlink > 1.
    let tar = TarBuilder::new()
        .link(EntryType::Symlink, "sym", "target/of/symlink")
        .link(EntryType::Link, "sym-link", "sym")
        .device(EntryType::Fifo, "fifo", 0, 0)
        .link(EntryType::Link, "fifo-link", "fifo")
        .device(EntryType::Char, "null", 1, 3)
        .link(EntryType::Link, "null-link", "null")
        .link(EntryType::Link, "null-link2", "null-link")
        .finish();
    let (index, _) = read(&tar).unwrap();
    assert_eq!(kind_of(&index, "sym"), Some(EntryKind::Symlink));
    assert_eq!(entry(&index, "sym").unwrap().link_target, b"target/of/symlink");
    assert_eq!(kind_of(&index, "sym-link"), Some(EntryKind::Hardlink));
    assert_eq!(entry(&index, "sym-link").unwrap().link_target, b"sym");
    assert_eq!(entry(&index, "fifo-link").unwrap().link_target, b"fifo");
    assert_eq!(entry(&index, "null-link2").unwrap().link_target, b"null");
    // Whichever name comes first, the same index.
    let reordered = TarBuilder::new()
        .device(EntryType::Char, "null-link2", 1, 3)
        .link(EntryType::Link, "null", "null-link2")
        .link(EntryType::Link, "null-link", "null")
        .device(EntryType::Fifo, "fifo-link", 0, 0)
        .link(EntryType::Link, "fifo", "fifo-link")
        .link(EntryType::Symlink, "sym-link", "target/of/symlink")
        .link(EntryType::Link, "sym", "sym-link")
        .finish();
    assert_eq!(layer_id(&read(&reordered).unwrap().0), layer_id(&index));
    // And back to a tar that reads to the same layer.
    let (_, mut chunks) = read(&tar).unwrap();
    let out = write_layer(&index, &mut chunks, Vec::new()).unwrap();
    assert_eq!(layer_id(&read(&out).unwrap().0), layer_id(&index));
}

#[test]
fn whiteouts_act_on_lower_layers_only_whatever_the_order() {
    // .wh.DIR with DIR/ and DIR/file, in every order: DIR holds only this
    // layer's children (opaque), never a whiteout, never refused.
    let orders: Vec<Vec<u8>> = vec![
        TarBuilder::new().file(".wh.d", b"").dir("d").file("d/new", b"n").finish(),
        TarBuilder::new().dir("d").file("d/new", b"n").file(".wh.d", b"").finish(),
        TarBuilder::new().dir("d").file(".wh.d", b"").file("d/new", b"n").finish(),
        TarBuilder::new().file("d/new", b"n").file(".wh.d", b"").finish(),
        TarBuilder::new().file(".wh.d", b"").file("d/new", b"n").finish(),
    ];
    for (i, tar) in orders.iter().enumerate() {
        let (index, _) = read(tar).unwrap_or_else(|e| panic!("order {i} refused: {e}"));
        assert_eq!(kind_of(&index, "d/new"), Some(EntryKind::File), "order {i}");
        assert_ne!(kind_of(&index, "d"), Some(EntryKind::Whiteout), "order {i}");
        assert!(index.opaque_dirs.contains(&b"d".to_vec()), "order {i}: d opaque");
    }
    // A whiteout of a path the layer replaces by a file says nothing more.
    for tar in [
        TarBuilder::new().file(".wh.f", b"").file("f", b"x").finish(),
        TarBuilder::new().file("f", b"x").file(".wh.f", b"").finish(),
    ] {
        let (index, _) = read(&tar).unwrap();
        assert_eq!(kind_of(&index, "f"), Some(EntryKind::File));
        assert!(index.opaque_dirs.is_empty());
    }
    // An opaque marker anywhere in the order.
    let a = TarBuilder::new().file("d/.wh..wh..opq", b"").dir("d").file("d/x", b"x").finish();
    let b = TarBuilder::new().dir("d").file("d/x", b"x").file("d/.wh..wh..opq", b"").finish();
    let (ia, _) = read(&a).unwrap();
    assert!(ia.opaque_dirs.contains(&b"d".to_vec()));
    assert_eq!(layer_id(&ia), layer_id(&read(&b).unwrap().0));
    // A plain whiteout stays one.
    let (index, _) = read(&TarBuilder::new().file("e/.wh.gone", b"").finish()).unwrap();
    assert_eq!(kind_of(&index, "e/gone"), Some(EntryKind::Whiteout));
}

#[test]
fn aufs_metadata_never_shows_and_plnk_hardlinks_keep_their_content() {
    let tar = TarBuilder::new()
        .file(".wh..wh.aufs", b"")
        .dir(".wh..wh.orph")
        .dir(".wh..wh.plnk")
        .file(".wh..wh.plnk/1234.5678", b"linked content")
        .dir("bin")
        .link(EntryType::Link, "bin/a", ".wh..wh.plnk/1234.5678")
        .link(EntryType::Link, "bin/b", ".wh..wh.plnk/1234.5678")
        .finish();
    let (index, mut chunks) = read(&tar).unwrap();
    assert!(
        index.entries.iter().all(|e| !e.path.windows(8).any(|w| w == b".wh..wh.")),
        "AUFS names in the index: {:?}",
        index.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect::<Vec<_>>()
    );
    let a = entry(&index, "bin/a").unwrap();
    assert_eq!(EntryKind::try_from(a.kind).unwrap(), EntryKind::File);
    let bytes: Vec<u8> =
        a.chunks.iter().flat_map(|c| chunks.chunk(&ChunkId::from_slice(&c.id).unwrap()).unwrap()).collect();
    assert_eq!(bytes, b"linked content");
    assert_eq!(kind_of(&index, "bin/b"), Some(EntryKind::Hardlink));
    assert_eq!(entry(&index, "bin/b").unwrap().link_target, b"bin/a");
}

/// Reads `tar`, keeps its split in the chunk store, loads it back and
/// writes the tar again from the split and the stored chunks.
fn rebuilt(tar: &[u8]) -> (Vec<u8>, TarSplit, LayerIndex) {
    let mut chunks = Chunks::default();
    let mut chunker = small_chunks();
    let read = read_layer(tar, &mut chunker, &mut chunks).unwrap();
    let split = read.split.expect("split kept");
    let kept = put_split(&split, &read.index, "sha256:test".into(), &mut chunker, &mut chunks).unwrap();
    let loaded = load_split(&kept, &mut chunks).unwrap();
    assert_eq!(loaded, split);
    let mut out = Vec::new();
    let n = write_split(&loaded, &mut chunks, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    (out, split, read.index)
}

fn gnu_long_names() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("./{}/{}", "d".repeat(120), "f".repeat(130));
    let mut h = Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(3000);
    b.append_data(&mut h, &long, &noise(3000, 9)[..]).unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_link(&mut h, "./link", format!("./{}", "t".repeat(200))).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn every_tar_is_rebuilt_bit_for_bit_from_its_split() {
    let mut trailing = every_kind();
    // GNU tar pads to 10 KiB records; some tools leave bytes after the end.
    trailing.extend_from_slice(&[0; 8192]);
    trailing.extend_from_slice(b"bytes after the end-of-archive blocks");
    let decoys =
        TarBuilder::new().file("a", b"first").file("a", b"second").dir("d").file("d/x", b"").finish();
    let aufs = TarBuilder::new()
        .dir(".wh..wh.plnk")
        .file(".wh..wh.plnk/1.2", b"linked content")
        .link(EntryType::Link, "a", ".wh..wh.plnk/1.2")
        .finish();
    let big = TarBuilder::new().file("big", &noise(300_000, 3)).file("small", b"s").finish();
    for (name, tar) in [
        ("every kind", every_kind()),
        ("trailing bytes", trailing),
        ("duplicate members", decoys),
        ("aufs", aufs),
        ("many chunks", big),
        ("gnu long names", gnu_long_names()),
        ("pax long names", long_pax_names()),
    ] {
        let (out, _, _) = rebuilt(&tar);
        assert!(out == tar, "{name}: rebuilt tar differs ({} vs {} bytes)", out.len(), tar.len());
    }
}

fn long_pax_names() -> Vec<u8> {
    let long = format!("p/{}", "n".repeat(200));
    TarBuilder::new()
        .dir("p")
        .pax(&[("path", long.as_bytes()), ("uid", b"4000000000")])
        .file("p/short", b"contents")
        .finish()
}

#[test]
fn a_split_keeps_contents_apart_from_headers_and_names_what_the_index_lacks() {
    let tar = TarBuilder::new().file("a", b"replaced contents").file("a", b"final contents").finish();
    let (_, split, index) = rebuilt(&tar);
    // Headers and padding only: 512-byte blocks without either file's bytes.
    let raw = zstd::decode_all(split.raw_zstd.as_slice()).unwrap();
    assert_eq!(raw.len() as u64, split.raw_len);
    assert_eq!(raw.len() as u64 + 17 + 14, tar.len() as u64);
    assert!(!raw.windows(8).any(|w| w == b"contents"));
    assert_eq!(split.files.len(), 2);
    // The replaced member's chunk is not in the index: the split names it
    // so the store keeps it while the layer lives.
    let outside = chunks_outside_index(&split, &index);
    assert_eq!(outside.len(), 1);
    assert_eq!(outside[0].id, ChunkId::of(b"replaced contents").as_bytes().to_vec());
}

#[test]
fn a_split_that_does_not_match_its_chunks_is_refused() {
    let tar = every_kind();
    let (_, split, _) = rebuilt(&tar);
    let mut chunks = Chunks::default();
    read_layer(&tar[..], &mut small_chunks(), &mut chunks).unwrap();
    let refused = |split: &TarSplit, chunks: &mut Chunks| {
        let err = write_split(split, chunks, Vec::new()).unwrap_err();
        assert!(matches!(err, LayerError::Split(_) | LayerError::Source { .. }), "{err}");
        err.to_string()
    };
    let mut longer = split.clone();
    longer.raw_len += 1;
    assert!(refused(&longer, &mut chunks).contains("early"));
    let mut shorter = split.clone();
    shorter.raw_len -= 1;
    assert!(refused(&shorter, &mut chunks).contains("past"));
    let mut version = split.clone();
    version.version = 99;
    assert!(refused(&version, &mut chunks).contains("version"));
    let mut length = split.clone();
    let file = length.files.iter_mut().find(|f| !f.chunks.is_empty()).unwrap();
    file.chunks[0].length += 1;
    assert!(refused(&length, &mut chunks).contains("bytes, the split says"));
    let mut garbage = split.clone();
    garbage.raw_zstd = b"not zstd".to_vec();
    refused(&garbage, &mut chunks);
    let mut before = split.clone();
    before.files[0].raw_before = split.raw_len + 1;
    assert!(refused(&before, &mut chunks).contains("asked for"));
    let mut missing = Chunks::default();
    assert!(matches!(write_split(&split, &mut missing, Vec::new()), Err(LayerError::Source { .. })));
}

#[test]
fn a_tar_followed_by_too_much_is_imported_without_a_split() {
    let mut tar = TarBuilder::new().file("a", b"x").finish();
    // Incompressible bytes after the end: past the cap, no split is kept,
    // and the layer itself is still read.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    tar.extend((0..(strata_layer::MAX_SPLIT_RAW_ZSTD + (1 << 20)) / 8).flat_map(|_| {
        // xorshift64*: bytes zstd cannot shrink.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }));
    let mut chunks = Chunks::default();
    let read = read_layer(&tar[..], &mut small_chunks(), &mut chunks).unwrap();
    assert!(read.split.unwrap_err().contains("compress to more than"));
    assert_eq!(read.index.entries.iter().map(|e| e.path.as_slice()).collect::<Vec<_>>(), [b"a"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_tree_comes_back_bit_for_bit(files in tree_strategy(), decoys in any::<bool>(), pad in 0usize..3) {
        let mut tar = tar_of(&files, decoys);
        tar.extend(std::iter::repeat_n(0u8, pad * 512));
        let (out, _, _) = rebuilt(&tar);
        prop_assert!(out == tar);
    }
}
