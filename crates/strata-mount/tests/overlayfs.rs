//! The same operations on a Strata mount and on kernel overlayfs over the
//! same layers give the same tree.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernel_overlay::KernelOverlay;
use common::{import, mount_with};
use strata_mount::UpperDir;
use strata_sample::{base_layer, random_bytes, update_layer, LayerTar};

fn third_layer() -> Vec<u8> {
    let mut t = LayerTar::new(Vec::new());
    t.dir("data", 0o755).expect("dir");
    t.file(b"data/big", 0o640, &random_bytes(9, 3 << 20)).expect("file");
    t.dir("data/tree", 0o750).expect("dir");
    t.file(b"data/tree/leaf", 0o600, b"leaf").expect("file");
    t.dir("usr", 0o755).expect("dir");
    t.dir("usr/share", 0o755).expect("dir");
    t.file(b"usr/share/.wh.doc", 0o644, b"").expect("whiteout");
    t.finish().expect("tar")
}

/// One entry as compared: everything but times and directory link counts.
#[derive(Debug, PartialEq, Eq)]
struct Desc {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    content: Option<[u8; 32]>,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn describe(root: &Path) -> BTreeMap<PathBuf, Desc> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Desc>) {
    for entry in fs::read_dir(dir).expect("readdir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        let t = meta.file_type();
        let kind = match () {
            _ if t.is_dir() => "dir",
            _ if t.is_file() => "file",
            _ if t.is_symlink() => "symlink",
            _ if t.is_char_device() => "char",
            _ if t.is_block_device() => "block",
            _ if t.is_fifo() => "fifo",
            _ => "other",
        };
        let desc = Desc {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if t.is_file() { meta.size() } else { 0 },
            nlink: if t.is_dir() { 0 } else { meta.nlink() },
            content: t.is_file().then(|| *blake3::hash(&fs::read(&path).expect("read")).as_bytes()),
            target: t.is_symlink().then(|| fs::read_link(&path).expect("readlink")),
            rdev: meta.rdev(),
            xattrs: user_xattrs(&path),
        };
        out.insert(path.strip_prefix(root).expect("under root").to_owned(), desc);
        if t.is_dir() {
            walk(root, &path, out);
        }
    }
}

fn user_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut names = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of the length given.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = Vec::new();
    for name in names[..n.max(0) as usize].split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
        let c = std::ffi::CString::new(name).expect("name");
        let mut value = vec![0u8; 4096];
        // SAFETY: valid C strings and a buffer of the length given.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), c.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        value.truncate(len.max(0) as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// What a container might do, as a shell script run inside the mount.
const SCRIPT: &str = r#"
set -e
echo new > new.txt
echo more >> etc/motd
truncate -s 1000 data/big
printf 'X' | dd of=data/big bs=1 seek=500 conv=notrunc status=none
rm etc/hostname
rm -r var/cache/old-dir
mkdir var/cache/old-dir
echo fresh > var/cache/old-dir/fresh
mv data/tree tree.moved
echo added > tree.moved/added
ln etc/motd motd.link
ln -s etc/motd motd.sym
chmod 700 usr
chown 12:34 new.txt
mkfifo pipe
mv new.txt new2.txt
rmdir tmp
mkdir -p a/b/c
echo deep > a/b/c/file
rm -r a/b
touch -d @1000000000 etc/motd
mv var/cache var/cache2
"#;

#[test]
fn the_same_operations_give_the_same_tree_as_kernel_overlayfs() {
    let layers = vec![base_layer().expect("base"), update_layer().expect("update"), third_layer()];
    let image = import(layers.clone());

    let scratch = tempfile::tempdir().expect("scratch");
    let kernel = KernelOverlay::new(&layers, scratch.path());
    let merged = kernel.merged.clone();

    let strata_upper = tempfile::tempdir().expect("upper");
    let ours = mount_with(
        strata_mount::load_lower(&image.store, &image.store.resolve("test:1").expect("image").1)
            .expect("tree"),
        image.store.clone(),
        Some(UpperDir::open(strata_upper.path(), &image.id).expect("upper")),
    );

    // Before any change the trees agree.
    assert_eq!(describe(ours.dir.path()), describe(&merged), "the merged lower trees differ");
    for root in [ours.dir.path(), merged.as_path()] {
        let out = Command::new("sh").args(["-c", SCRIPT]).current_dir(root).output().expect("sh");
        assert!(
            out.status.success(),
            "script in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a, b) = (describe(ours.dir.path()), describe(&merged));
    assert!(
        b.len() > 20 && b.contains_key(Path::new("tree.moved/added")),
        "the script ran on overlayfs: {:?}",
        b.keys().collect::<Vec<_>>()
    );
    for (path, desc) in &b {
        assert_eq!(a.get(path), Some(desc), "{} differs from overlayfs", path.display());
    }
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
}

/// A kernel overlayfs upper directory, written as a layer
/// (`write_overlay_upper_layer`, as the snapshotter ingests a layer
/// containerd applied) and laid over the same layers in Strata, gives the
/// tree the kernel showed: its whiteouts, opaque directories, hardlinks,
/// owners, modes, fifos and xattrs all carried, overlayfs' own xattrs not.
#[test]
fn a_kernel_overlay_upper_becomes_a_layer_that_gives_the_same_tree() {
    let layers = vec![base_layer().expect("base"), update_layer().expect("update"), third_layer()];
    let scratch = tempfile::tempdir().expect("scratch");
    let mut kernel = KernelOverlay::new(&layers, scratch.path());
    let merged = kernel.merged.clone();
    let script = format!("{SCRIPT}\nrm -r bin\nmkdir bin\necho new > bin/new\nmknod dev0 c 1 3\n");
    let out = Command::new("sh").args(["-c", &script]).current_dir(&merged).output().expect("sh");
    assert!(out.status.success(), "script: {}", String::from_utf8_lossy(&out.stderr));
    common::kernel_overlay::set_xattr(&merged.join("new2.txt"), "user.note", b"kept");
    let expected = describe(&merged);
    kernel.unmount();
    let upper = scratch.path().join("upper");
    // The kernel made the overlay forms this converts.
    let opaque = common::xattr(&upper.join("bin"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]), "the kernel marked the remade directory opaque");
    assert!(fs::symlink_metadata(upper.join("etc/hostname")).expect("whiteout").file_type().is_char_device());

    let tar = strata_mount::write_overlay_upper_layer(&upper, Vec::new()).expect("layer");
    let mut members = Vec::new();
    let mut archive = tar::Archive::new(&tar[..]);
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("member");
        let path = entry.path().expect("path").into_owned();
        let xattrs: Vec<String> = entry
            .pax_extensions()
            .expect("pax")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().and_then(|e| e.key().ok().map(str::to_owned)))
            .filter(|k| k.starts_with("SCHILY.xattr."))
            .collect();
        assert!(!xattrs.iter().any(|k| k.contains("trusted.overlay.")), "{path:?}: {xattrs:?}");
        members.push(path);
    }
    for member in ["etc/.wh.hostname", "bin/.wh..wh..opq", ".wh.tmp", "var/.wh.cache", "pipe", "dev0"] {
        assert!(members.iter().any(|m| m == Path::new(member)), "{member} in {members:?}");
    }

    let mut all = layers.clone();
    all.push(tar);
    let image = import(all);
    let ours = common::mount(image.tree, image.store.clone());
    let got = describe(ours.dir.path());
    for (path, desc) in &expected {
        assert_eq!(got.get(path), Some(desc), "{} differs from overlayfs", path.display());
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
}
