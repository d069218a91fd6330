//! Real FUSE mounts of images imported into a real store, served in-process.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{errno_of, import, mount, xattr, xattr_names, StallingSource};
use strata_mount::{ChunkSource, SourceError};
use strata_sample::{base_layer, random_bytes, text_bytes, update_layer, LayerTar};
use strata_types::ChunkId;

#[test]
fn the_sample_image_reads_back_through_fuse() {
    let image = import(vec![base_layer().expect("base"), update_layer().expect("update")]);
    let m = mount(image.tree, image.store.clone());

    // File data, across chunk boundaries and at odd offsets.
    let app = std::fs::read(m.path("bin/app")).expect("read bin/app");
    assert_eq!(app, random_bytes(1, 300_000));
    let motd = std::fs::read(m.path("etc/motd")).expect("read etc/motd");
    assert_eq!(motd, [text_bytes(2, 200_000), b"one more line\n".to_vec()].concat());
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(m.path("bin/app")).expect("open");
    f.seek(SeekFrom::Start(123_457)).expect("seek");
    let mut part = vec![0u8; 100_003];
    f.read_exact(&mut part).expect("read part");
    assert_eq!(part, app[123_457..223_460]);

    // The update layer's changes: a changed file, a whiteout, an opaque dir.
    assert_eq!(std::fs::read(m.path("etc/hostname")).expect("hostname"), b"strata-demo-v2\n");
    assert_eq!(errno_of(std::fs::metadata(m.path("var/cache/old.db"))), Some(libc::ENOENT));
    let old_dir: Vec<_> = std::fs::read_dir(m.path("var/cache/old-dir"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    assert_eq!(old_dir, ["b"]);

    // Hardlinks share an inode; symlinks read back as archived, also escaping ones.
    let a = std::fs::metadata(m.path("bin/app")).expect("stat");
    let b = std::fs::metadata(m.path("bin/app-hardlink")).expect("stat");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(std::fs::read_link(m.path("bin/sh")).expect("readlink"), Path::new("app"));
    assert_eq!(
        std::fs::read_link(m.path("etc/escape")).expect("readlink"),
        Path::new("../../../../../etc/shadow")
    );

    // Devices and fifos.
    let null = std::fs::symlink_metadata(m.path("dev/null")).expect("stat");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let loop0 = std::fs::symlink_metadata(m.path("dev/loop0")).expect("stat");
    assert!(loop0.file_type().is_block_device());
    assert_eq!(loop0.rdev(), libc::makedev(7, 0));
    assert!(std::fs::symlink_metadata(m.path("dev/initctl")).expect("stat").file_type().is_fifo());

    // Modes, owners, times, names that are not UTF-8, long paths.
    let tmp = std::fs::metadata(m.path("tmp")).expect("stat");
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::metadata(m.path("var/cache/old-dir/b")).expect("stat").mtime(), 1_700_000_000);
    let latin1 = std::ffi::OsStr::from_bytes(b"usr/share/doc/caf\xe9-latin1.txt");
    assert_eq!(std::fs::read(m.dir.path().join(latin1)).expect("latin1 name"), b"a name that is not UTF-8\n");
    let long = format!("usr/share/doc/{}/deep.txt", "long-directory-name".repeat(8));
    assert_eq!(std::fs::read(m.path(&long)).expect("long path"), b"a path longer than 100 bytes\n");

    // Extended attributes.
    let readme = m.path("usr/share/doc/README");
    assert_eq!(xattr(&readme, "user.origin").as_deref(), Some(&b"strata-sample"[..]));
    assert_eq!(xattr_names(&readme), b"user.origin\0");
    assert_eq!(xattr(&readme, "user.absent"), None);

    // Inode numbers hold while mounted; statfs answers.
    assert_eq!(std::fs::metadata(m.path("bin/app")).expect("stat").ino(), a.ino());
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    let root = CString::new(m.dir.path().as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid C string and a statvfs buffer.
    assert_eq!(unsafe { libc::statvfs(root.as_ptr(), vfs.as_mut_ptr()) }, 0);
    // SAFETY: statvfs succeeded and filled the buffer.
    let vfs = unsafe { vfs.assume_init() };
    assert!(vfs.f_blocks > 0 && vfs.f_files > 20);
    assert_eq!(vfs.f_flag & libc::ST_RDONLY, libc::ST_RDONLY);

    // A read-only mount refuses changes.
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(m.path("etc/hostname"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno_of(std::fs::write(m.path("new-file"), b"x")), Some(libc::EROFS));
}

fn whiteout_layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut t = LayerTar::new(Vec::new());
    for (path, data) in entries {
        match data {
            Some(data) => t.file(path.as_bytes(), 0o644, data).expect("file"),
            None => t.dir(path, 0o755).expect("dir"),
        }
    }
    t.finish().expect("tar")
}

#[test]
fn whiteouts_and_opaque_dirs_across_four_layers() {
    let layers = vec![
        whiteout_layer(&[
            ("a", None),
            ("a/one", Some(b"1")),
            ("a/sub", None),
            ("a/sub/deep", Some(b"d")),
            ("b", None),
            ("b/keep", Some(b"k")),
        ]),
        whiteout_layer(&[("a", None), ("a/two", Some(b"2")), ("b", None), ("b/.wh.keep", Some(b""))]),
        whiteout_layer(&[
            ("a", None),
            ("a/.wh..wh..opq", Some(b"")),
            ("a/three", Some(b"3")),
            ("b", None),
            ("b/keep", Some(b"back")),
        ]),
        whiteout_layer(&[("a", None), ("a/four", Some(b"4")), (".wh.b", Some(b""))]),
    ];
    let image = import(layers);
    let m = mount(image.tree, image.store.clone());
    let mut names: Vec<_> = std::fs::read_dir(m.path("a"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["four", "three"], "the opaque dir of layer 3 hides layers 1 and 2");
    assert_eq!(std::fs::read(m.path("a/three")).expect("read"), b"3");
    assert_eq!(errno_of(std::fs::metadata(m.path("a/sub/deep"))), Some(libc::ENOENT));
    assert_eq!(errno_of(std::fs::metadata(m.path("b"))), Some(libc::ENOENT), "layer 4 whites out b entirely");
}

#[test]
fn a_directory_of_twelve_thousand_entries_lists_with_stable_offsets() {
    let mut t = LayerTar::new(Vec::new());
    t.dir("big", 0o755).expect("dir");
    for i in 0..12_000 {
        t.file(format!("big/f{i:05}").as_bytes(), 0o644, b"").expect("file");
    }
    let image = import(vec![t.finish().expect("tar")]);
    let m = mount(image.tree, image.store.clone());

    let dir = CString::new(m.path("big").as_os_str().as_bytes()).expect("path");
    // SAFETY: opendir/readdir/telldir/seekdir/closedir on one valid handle, names copied out at once.
    unsafe {
        let handle = libc::opendir(dir.as_ptr());
        assert!(!handle.is_null());
        let next = |handle: *mut libc::DIR| {
            let entry = libc::readdir(handle);
            (!entry.is_null())
                .then(|| std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_string_lossy().into_owned())
        };
        let mut seen = Vec::new();
        let mut mark = None;
        while let Some(name) = next(handle) {
            seen.push(name);
            if seen.len() == 7_001 {
                mark = Some(libc::telldir(handle));
            }
        }
        let resume = seen[7_001].clone();
        libc::seekdir(handle, mark.expect("telldir"));
        assert_eq!(next(handle).as_deref(), Some(resume.as_str()), "seekdir resumes where telldir was");
        libc::closedir(handle);
        let files: Vec<_> = seen.iter().filter(|n| n.starts_with('f')).collect();
        assert_eq!(files.len(), 12_000);
        assert_eq!(seen.len(), 12_002, ". and .. are listed once");
    }
}

#[test]
fn a_read_stalled_on_its_source_does_not_hold_up_other_reads() {
    let slow_data = random_bytes(10, 100_000);
    let fast_data = random_bytes(11, 100_000);
    let mut t = LayerTar::new(Vec::new());
    t.file(b"slow", 0o644, &slow_data).expect("file");
    t.file(b"fast", 0o644, &fast_data).expect("file");
    let image = import(vec![t.finish().expect("tar")]);
    let slow_ino = image.tree.lookup_path(b"slow").expect("slow");
    let stalled = image.tree.get(slow_ino).expect("inode").chunks.iter().map(|c| c.id).collect();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let source = StallingSource {
        inner: image.store.clone(),
        stalled,
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    };
    let m = mount(image.tree, Arc::new(source));

    let slow_path = m.path("slow");
    let slow_reader = std::thread::spawn(move || std::fs::read(slow_path));
    entered_rx.recv().expect("the slow read reaches the source");
    // The slow read is now parked in the source. Everything else still works.
    assert_eq!(std::fs::read(m.path("fast")).expect("fast read"), fast_data);
    assert!(std::fs::metadata(m.path("slow")).expect("stat while stalled").len() == 100_000);
    for _ in 0..64 {
        release_tx.send(()).expect("release");
    }
    assert_eq!(slow_reader.join().expect("join").expect("slow read"), slow_data);
}

/// A source that has nothing: every read of file data fails.
struct EmptySource;

impl ChunkSource for EmptySource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        Err(SourceError::Missing(*id))
    }
}

#[test]
fn a_chunk_no_source_has_is_an_io_error_not_wrong_bytes() {
    let image = import(vec![base_layer().expect("base")]);
    let m = mount(image.tree, Arc::new(EmptySource));
    assert_eq!(errno_of(std::fs::read(m.path("bin/app"))), Some(libc::EIO));
    // Metadata needs no chunks.
    assert_eq!(std::fs::metadata(m.path("bin/app")).expect("stat").len(), 300_000);
    assert_eq!(errno_of(std::fs::read(m.path("etc/hostname"))), Some(libc::EIO));
}

#[test]
fn hardlinks_to_symlinks_fifos_and_devices_share_one_inode() {
    // docker writes a hardlink member for any non-directory with nlink > 1.
    let mut t = LayerTar::new(Vec::new());
    t.dir("l", 0o755).expect("dir");
    t.symlink("l/sym", "../etc/hostname").expect("symlink");
    t.hardlink("l/sym-again", "l/sym").expect("link");
    t.device(tar::EntryType::Fifo, "l/fifo", 0, 0).expect("fifo");
    t.hardlink("l/fifo-again", "l/fifo").expect("link");
    t.device(tar::EntryType::Char, "l/null", 1, 3).expect("char");
    t.hardlink("l/null-again", "l/null").expect("link");
    t.hardlink("l/null-third", "l/null-again").expect("link");
    let image = import(vec![base_layer().expect("base"), t.finish().expect("tar")]);
    let m = mount(image.tree, image.store.clone());
    let stat = |p: &str| std::fs::symlink_metadata(m.path(p)).expect("stat");
    for (a, b, links) in
        [("l/sym", "l/sym-again", 2), ("l/fifo", "l/fifo-again", 2), ("l/null", "l/null-third", 3)]
    {
        let (sa, sb) = (stat(a), stat(b));
        assert_eq!(sa.ino(), sb.ino(), "{a} and {b} are one inode");
        assert_eq!((sa.nlink(), sb.nlink()), (links, links), "{a}: link count");
    }
    assert!(stat("l/sym-again").file_type().is_symlink());
    assert_eq!(std::fs::read_link(m.path("l/sym-again")).expect("readlink"), Path::new("../etc/hostname"));
    assert!(stat("l/fifo-again").file_type().is_fifo());
    assert_eq!(stat("l/null-third").rdev(), libc::makedev(1, 3));
}

#[test]
fn a_layer_whiting_out_a_directory_it_also_holds_shows_only_its_own_children() {
    let mut lower = LayerTar::new(Vec::new());
    lower.dir("d", 0o755).expect("dir");
    lower.file(b"d/old", 0o644, b"old").expect("file");
    lower.dir("e", 0o755).expect("dir");
    lower.file(b"e/old", 0o644, b"old").expect("file");
    let mut upper = LayerTar::new(Vec::new());
    // Members in the order that once made import refuse the layer: the
    // directory's child before its whiteout, and no directory member.
    upper.file(b"d/new", 0o644, b"new").expect("file");
    upper.file(b".wh.d", 0o644, b"").expect("whiteout");
    upper.dir("e", 0o755).expect("dir");
    upper.file(b"e/new", 0o644, b"new").expect("file");
    upper.file(b".wh.e", 0o644, b"").expect("whiteout");
    // AUFS bookkeeping with a hardlink into .wh..wh.plnk.
    upper.file(b".wh..wh.aufs", 0o644, b"").expect("aufs");
    upper.dir(".wh..wh.plnk", 0o700).expect("plnk");
    upper.file(b".wh..wh.plnk/1.2", 0o755, b"#!/bin/sh\n").expect("plnk file");
    upper.dir("bin", 0o755).expect("dir");
    upper.hardlink("bin/tool", ".wh..wh.plnk/1.2").expect("link");
    upper.hardlink("bin/tool2", ".wh..wh.plnk/1.2").expect("link");
    let image =
        import(vec![base_layer().expect("base"), lower.finish().expect("tar"), upper.finish().expect("tar")]);
    let m = mount(image.tree, image.store.clone());
    let names = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(m.path(p))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("d"), ["new"]);
    assert_eq!(names("e"), ["new"]);
    assert!(names("").iter().all(|n| !n.starts_with(".wh.")), "{:?}", names(""));
    assert_eq!(std::fs::read(m.path("bin/tool")).expect("read"), b"#!/bin/sh\n");
    let (a, b) = (
        std::fs::metadata(m.path("bin/tool")).expect("stat"),
        std::fs::metadata(m.path("bin/tool2")).expect("stat"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn an_index_with_a_path_that_is_not_canonical_is_refused() {
    // Found by the lower_tree fuzz target: an entry "etcx/" (trailing
    // slash) made a child with an empty name. Indexes from peers are not
    // written by this code, so every path is checked.
    let input = include_bytes!("fuzz-regressions/lower-tree-trailing-slash.bin");
    let mut layers = Vec::new();
    let mut rest = &input[..];
    while layers.len() < 4 && rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let bytes = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let index = <strata_layer::LayerIndex as prost::Message>::decode(bytes).expect("the input decodes");
        layers.push((strata_types::LayerId::of(bytes), index));
    }
    let Err(err) = strata_mount::LowerTree::build(&layers) else { panic!("the index was accepted") };
    assert!(err.to_string().contains("not canonical"), "{err}");
    for bad in [&b"a/"[..], b"/a", b"a//b", b"./a", b"a/../b", b"a\0b"] {
        let bad = bad.to_vec();
        let index = strata_layer::LayerIndex {
            version: 1,
            entries: vec![strata_layer::Entry {
                path: bad.clone(),
                kind: strata_layer::EntryKind::File as i32,
                ..Default::default()
            }],
            opaque_dirs: vec![],
        };
        let layer = strata_types::LayerId::of(&bad);
        assert!(strata_mount::LowerTree::build(&[(layer, index)]).is_err(), "{bad:?} refused");
    }
}
