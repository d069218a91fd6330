//! The writable layer through real FUSE mounts: every change lands in the
//! upper directory, lower files copy up at chunk granularity, deletions
//! become whiteouts, and the store never changes.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::{errno_of, import, mount, mount_with, xattr, xattr_names, Image, Mounted};
use strata_mount::UpperDir;
use strata_sample::{base_layer, random_bytes, update_layer, LayerTar};

const BIG: usize = 8 << 20;

fn image() -> Image {
    let mut extra = LayerTar::new(Vec::new());
    extra.dir("data", 0o755).expect("dir");
    extra.file(b"data/big", 0o640, &random_bytes(7, BIG)).expect("file");
    extra.dir("data/tree", 0o755).expect("dir");
    extra.dir("data/tree/sub", 0o700).expect("dir");
    extra.file(b"data/tree/sub/leaf", 0o600, b"leaf").expect("file");
    extra.file(b"data/tree/top", 0o644, b"top").expect("file");
    import(vec![base_layer().expect("base"), update_layer().expect("update"), extra.finish().expect("tar")])
}

fn writable(image: &Image, upper: &Path) -> Mounted {
    let upper = UpperDir::open(upper, &image.id).expect("upper dir");
    let tree = strata_mount::load_lower(&image.store, &image.store.resolve("test:1").expect("image").1)
        .expect("tree");
    mount_with(tree, image.store.clone(), Some(upper))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (f, t) = (
        CString::new(from.as_os_str().as_bytes()).expect("path"),
        CString::new(to.as_os_str().as_bytes()).expect("path"),
    );
    // SAFETY: valid C strings.
    let ret = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn files_are_created_written_appended_and_truncated() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());

    fs::write(m.path("new.txt"), b"hello").expect("create");
    assert_eq!(fs::read(m.path("new.txt")).expect("read"), b"hello");
    let mut f = OpenOptions::new().append(true).open(m.path("new.txt")).expect("open append");
    f.write_all(b", world").expect("append");
    drop(f);
    assert_eq!(fs::read(m.path("new.txt")).expect("read"), b"hello, world");
    assert_eq!(
        errno_of(OpenOptions::new().write(true).create_new(true).open(m.path("new.txt"))),
        Some(libc::EEXIST),
        "O_EXCL on an existing name"
    );
    assert_eq!(
        errno_of(OpenOptions::new().write(true).create_new(true).open(m.path("etc/hostname"))),
        Some(libc::EEXIST),
        "O_EXCL on a lower name"
    );

    // O_TRUNC of a lower file, then a rewrite.
    let mut f = OpenOptions::new().write(true).truncate(true).open(m.path("etc/motd")).expect("open trunc");
    assert_eq!(f.metadata().expect("stat").len(), 0);
    f.write_all(b"new motd\n").expect("write");
    drop(f);
    assert_eq!(fs::read(m.path("etc/motd")).expect("read"), b"new motd\n");

    // Truncate down, then extend: what was cut reads as zeros, not as the lower bytes.
    let f = OpenOptions::new().write(true).open(m.path("bin/app")).expect("open");
    f.set_len(1000).expect("shrink");
    f.set_len(5000).expect("extend");
    drop(f);
    let app = fs::read(m.path("bin/app")).expect("read");
    assert_eq!(&app[..1000], &random_bytes(1, 300_000)[..1000]);
    assert!(app[1000..].iter().all(|b| *b == 0));
    assert_eq!(app.len(), 5000);

    // fsync works; preallocation is refused where lower bytes show through holes.
    let f = OpenOptions::new().write(true).open(m.path("new.txt")).expect("open");
    f.sync_all().expect("fsync");
    drop(f);
    drop(m);

    // The store is untouched: a fresh read-only mount shows the image as imported.
    let fresh = mount(
        strata_mount::load_lower(&image.store, &image.store.resolve("test:1").expect("image").1)
            .expect("tree"),
        image.store.clone(),
    );
    assert_eq!(fs::read(fresh.path("etc/motd")).expect("read").len(), 200_014);
    assert_eq!(fs::read(fresh.path("bin/app")).expect("read"), random_bytes(1, 300_000));
    assert_eq!(errno_of(fs::metadata(fresh.path("new.txt"))), Some(libc::ENOENT));
}

#[test]
fn a_one_byte_append_to_a_large_lower_file_stores_one_block() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    let mut f = OpenOptions::new().append(true).open(m.path("data/big")).expect("open append");
    f.write_all(b"!").expect("append");
    drop(f);
    let upper_file = upper.path().join("root/data/big");
    let allocated = fs::metadata(&upper_file).expect("upper file").blocks() * 512;
    assert!(allocated <= 64 << 10, "the copy-up stored {allocated} bytes for a 1-byte append");

    let mut expected = random_bytes(7, BIG);
    expected.push(b'!');
    assert_eq!(fs::read(m.path("data/big")).expect("read"), expected);

    // A write in the middle, not block-aligned, keeps the bytes around it.
    let mut f = OpenOptions::new().read(true).write(true).open(m.path("data/big")).expect("open");
    f.seek(SeekFrom::Start(1_000_003)).expect("seek");
    f.write_all(b"strata").expect("write");
    expected[1_000_003..1_000_009].copy_from_slice(b"strata");
    let mut back = vec![0u8; 20_000];
    f.seek(SeekFrom::Start(990_000)).expect("seek");
    f.read_exact(&mut back).expect("read");
    assert_eq!(back, expected[990_000..1_010_000]);
    drop(f);
    assert_eq!(fs::read(m.path("data/big")).expect("read"), expected);
    let allocated = fs::metadata(&upper_file).expect("upper file").blocks() * 512;
    assert!(allocated <= 128 << 10, "two small writes stored {allocated} bytes");

    // Preallocation takes the lower bytes into the upper file first (it
    // would hide them otherwise): the content stays the file's.
    let f = OpenOptions::new().write(true).open(m.path("data/big")).expect("open");
    // SAFETY: fallocate on an open descriptor.
    let ret = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 4096) };
    assert_eq!(ret, 0, "fallocate: {}", std::io::Error::last_os_error());
    drop(f);
    assert_eq!(fs::read(m.path("data/big")).expect("read"), expected);
}

#[test]
fn deletions_are_whiteouts_and_new_directories_hide_the_old() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());

    fs::remove_file(m.path("etc/hostname")).expect("unlink lower file");
    assert_eq!(errno_of(fs::metadata(m.path("etc/hostname"))), Some(libc::ENOENT));
    let whiteout = fs::symlink_metadata(upper.path().join("root/etc/hostname")).expect("whiteout in upper");
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);

    assert_eq!(errno_of(fs::remove_dir(m.path("data/tree"))), Some(libc::ENOTEMPTY));
    fs::remove_dir_all(m.path("data/tree")).expect("remove a lower tree");
    assert_eq!(errno_of(fs::metadata(m.path("data/tree"))), Some(libc::ENOENT));
    fs::create_dir(m.path("data/tree")).expect("mkdir over a whiteout");
    assert!(names(&m.path("data/tree")).is_empty(), "the new directory does not show the old children");

    // A hardlinked lower file loses one name: the other keeps the data, nlink drops.
    fs::remove_file(m.path("bin/app-hardlink")).expect("unlink hardlink");
    let app = fs::metadata(m.path("bin/app")).expect("stat");
    assert_eq!(app.nlink(), 1);
    assert_eq!(fs::read(m.path("bin/app")).expect("read"), random_bytes(1, 300_000));

    assert_eq!(errno_of(fs::remove_dir(m.path("bin/app"))), Some(libc::ENOTDIR));
    assert_eq!(errno_of(fs::remove_file(m.path("usr"))), Some(libc::EISDIR));
}

#[test]
fn renames_across_layers_with_noreplace_and_exchange() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());

    fs::rename(m.path("etc/motd"), m.path("motd-moved")).expect("rename a lower file");
    assert_eq!(errno_of(fs::metadata(m.path("etc/motd"))), Some(libc::ENOENT));
    assert_eq!(fs::metadata(m.path("motd-moved")).expect("stat").len(), 200_014);

    fs::rename(m.path("data/tree"), m.path("tree-moved")).expect("rename a lower directory");
    assert_eq!(fs::read(m.path("tree-moved/sub/leaf")).expect("read"), b"leaf");
    assert_eq!(fs::metadata(m.path("tree-moved/sub")).expect("stat").mode() & 0o777, 0o700);
    assert_eq!(errno_of(fs::metadata(m.path("data/tree"))), Some(libc::ENOENT));

    fs::write(m.path("a"), b"a").expect("write");
    fs::write(m.path("b"), b"b").expect("write");
    assert_eq!(errno_of(renameat2(&m.path("a"), &m.path("b"), libc::RENAME_NOREPLACE)), Some(libc::EEXIST));
    renameat2(&m.path("a"), &m.path("etc/escape"), libc::RENAME_EXCHANGE)
        .expect("exchange with a lower symlink");
    assert_eq!(fs::read(m.path("etc/escape")).expect("read"), b"a");
    assert_eq!(fs::read_link(m.path("a")).expect("readlink"), Path::new("../../../../../etc/shadow"));
    assert_eq!(errno_of(renameat2(&m.path("a"), &m.path("b"), libc::RENAME_WHITEOUT)), Some(libc::EINVAL));

    fs::rename(m.path("b"), m.path("usr/share/doc/README")).expect("replace a lower file");
    assert_eq!(fs::read(m.path("usr/share/doc/README")).expect("read"), b"b");
    assert_eq!(errno_of(fs::rename(m.path("tree-moved"), m.path("usr"))), Some(libc::ENOTEMPTY));
}

#[test]
fn links_special_files_attributes_and_xattrs() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());

    fs::hard_link(m.path("etc/motd"), m.path("motd-link")).expect("link a lower file");
    assert_eq!(
        fs::metadata(m.path("motd-link")).expect("stat").ino(),
        fs::metadata(m.path("etc/motd")).expect("stat").ino()
    );
    assert_eq!(fs::metadata(m.path("etc/motd")).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("etc/motd", m.path("motd-symlink")).expect("symlink");
    assert_eq!(fs::read(m.path("motd-symlink")).expect("read through symlink").len(), 200_014);
    nix_mkfifo(&m.path("fifo"));
    assert!(fs::symlink_metadata(m.path("fifo")).expect("stat").file_type().is_fifo());

    // The first change to a lower file copies it up with its metadata.
    let readme = m.path("usr/share/doc/README");
    let before = fs::metadata(&readme).expect("stat");
    fs::set_permissions(&readme, fs::Permissions::from_mode(0o600)).expect("chmod");
    let after = fs::metadata(&readme).expect("stat");
    assert_eq!(after.mode() & 0o7777, 0o600);
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()), "times kept");
    assert_eq!(after.ino(), before.ino(), "inode number kept");
    assert_eq!(xattr(&readme, "user.origin").as_deref(), Some(&b"strata-sample"[..]), "xattrs kept");
    assert_eq!(xattr_names(&readme), b"user.origin\0", "private xattrs hidden");

    std::os::unix::fs::chown(&readme, Some(1234), Some(5678)).expect("chown");
    let owned = fs::metadata(&readme).expect("stat");
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    let t = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_890, 5));
    fs::File::options().write(true).open(&readme).expect("open").set_times(t).expect("utimens");
    assert_eq!(fs::metadata(&readme).expect("stat").mtime(), 1_234_567_890);

    set_xattr(&readme, "user.added", b"v").expect("setxattr");
    assert_eq!(xattr(&readme, "user.added").as_deref(), Some(&b"v"[..]));
    remove_xattr(&readme, "user.origin").expect("removexattr");
    assert_eq!(xattr(&readme, "user.origin"), None);
    assert_eq!(
        set_xattr(&readme, "trusted.strata.origin", b"x").err().and_then(|e| e.raw_os_error()),
        Some(libc::EPERM)
    );
}

#[test]
fn a_write_through_one_name_of_a_lower_hardlink_shows_through_the_other() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    let before = fs::metadata(m.path("bin/app-hardlink")).expect("stat");
    let f = OpenOptions::new().write(true).open(m.path("bin/app")).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"XYZ", 10).expect("write");
    drop(f);
    let mut expected = random_bytes(1, 300_000);
    expected[10..13].copy_from_slice(b"XYZ");
    assert_eq!(fs::read(m.path("bin/app-hardlink")).expect("read other name"), expected);
    let (a, b) = (
        fs::metadata(m.path("bin/app")).expect("stat"),
        fs::metadata(m.path("bin/app-hardlink")).expect("stat"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(a.ino(), before.ino());
    drop(m);
    let m = writable(&image, upper.path());
    assert_eq!(fs::read(m.path("bin/app-hardlink")).expect("read after remount"), expected);
    assert_eq!(fs::metadata(m.path("bin/app-hardlink")).expect("stat").nlink(), 2);
}

#[test]
fn permissions_are_the_kernels_and_new_files_belong_to_their_creator() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    let as_nobody = |script: String| {
        std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .uid(65534)
            .gid(65534)
            .status()
            .expect("sh runs")
    };
    let denied = as_nobody(format!("echo x >> {}", m.path("etc/motd").display()));
    assert!(!denied.success(), "an unprivileged process cannot write a root-owned 0644 file");
    let denied = as_nobody(format!("touch {}", m.path("etc/new").display()));
    assert!(!denied.success(), "nor create in a root-owned 0755 directory");
    let allowed = as_nobody(format!("echo mine > {}", m.path("tmp/nobody.txt").display()));
    assert!(allowed.success(), "/tmp is 1777");
    let meta = fs::metadata(m.path("tmp/nobody.txt")).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(fs::read(m.path("etc/motd")).expect("read").len(), 200_014);
}

#[test]
fn writes_survive_unmount_and_remount() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    fs::write(m.path("kept.txt"), b"kept").expect("write");
    let mut f = OpenOptions::new().append(true).open(m.path("data/big")).expect("open");
    f.write_all(b"tail").expect("append");
    drop(f);
    fs::remove_file(m.path("etc/hostname")).expect("unlink");
    fs::rename(m.path("data/tree"), m.path("moved")).expect("rename");
    let ino = fs::metadata(m.path("data/big")).expect("stat").ino();
    drop(m);

    let m = writable(&image, upper.path());
    assert_eq!(fs::read(m.path("kept.txt")).expect("read"), b"kept");
    let big = fs::read(m.path("data/big")).expect("read");
    assert_eq!(&big[BIG..], b"tail");
    assert_eq!(&big[..BIG], &random_bytes(7, BIG)[..]);
    assert_eq!(
        fs::metadata(m.path("data/big")).expect("stat").ino(),
        ino,
        "copied-up files keep their inode number"
    );
    assert_eq!(errno_of(fs::metadata(m.path("etc/hostname"))), Some(libc::ENOENT));
    assert_eq!(fs::read(m.path("moved/sub/leaf")).expect("read"), b"leaf");
    assert_eq!(errno_of(fs::metadata(m.path("data/tree"))), Some(libc::ENOENT));
    assert_eq!(names(&m.path("data")), ["big"]);

    // One mount per writable layer; a writable layer belongs to one image.
    assert!(matches!(UpperDir::open(upper.path(), &image.id), Err(strata_mount::MountError::UpperInUse(_))));
    drop(m);
    let other = strata_store::ImageId::of(b"another image");
    assert!(matches!(
        UpperDir::open(upper.path(), &other),
        Err(strata_mount::MountError::UpperOfOtherImage { .. })
    ));
}

fn nix_mkfifo(path: &Path) {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (p, n) =
        (CString::new(path.as_os_str().as_bytes()).expect("path"), CString::new(name).expect("name"));
    // SAFETY: valid C strings and a value of the length given.
    let ret = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remove_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let (p, n) =
        (CString::new(path.as_os_str().as_bytes()).expect("path"), CString::new(name).expect("name"));
    // SAFETY: valid C strings.
    if unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The writable layer in `upper` committed as a layer tar: its members'
/// paths (no trailing slash) and whether each is a directory, sorted.
fn committed(image: &Image, upper: &Path) -> Vec<(String, bool)> {
    let reader = std::sync::Arc::new(strata_mount::ChunkReader::new(image.store.clone(), 1 << 20));
    let tar = strata_mount::write_upper_layer(&upper.join("root"), &image.tree, &reader, Vec::new())
        .expect("commit");
    tar_members(&tar)
}

/// `(path, is a directory)` pairs as [`committed`] gives them.
fn members(list: &[(&str, bool)]) -> Vec<(String, bool)> {
    list.iter().map(|(p, d)| (p.to_string(), *d)).collect()
}

fn tar_members(tar: &[u8]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = tar::Archive::new(tar)
        .entries()
        .expect("tar")
        .map(|e| {
            let e = e.expect("member");
            let path = e.path().expect("path").to_string_lossy().trim_end_matches('/').to_owned();
            (path, e.header().entry_type().is_dir())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn container_setup_marked_in_the_layer_is_left_out_of_a_commit_while_unchanged() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    let mark = |rel: &str| strata_mount::upper::mark_init(upper.path(), rel.as_bytes()).expect("mark");
    // Setup as `strata run` makes it: a mountpoint, and an empty file in a
    // lower directory (which copies that directory up).
    fs::create_dir(m.path("proc")).expect("mkdir");
    mark("proc");
    fs::write(m.path("data/hosts"), b"").expect("create");
    mark("data/hosts");
    // Setup the container changed afterwards: kept.
    fs::create_dir(m.path("sys")).expect("mkdir");
    mark("sys");
    fs::set_permissions(m.path("sys"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::write(m.path("data/tree/resolv"), b"").expect("create");
    mark("data/tree/resolv");
    fs::write(m.path("data/tree/resolv"), b"nameserver 10.0.0.1\n").expect("write");
    fs::create_dir(m.path("mq")).expect("mkdir");
    mark("mq");
    fs::write(m.path("mq/made-by-the-container"), b"x").expect("create");
    fs::write(m.path("new"), b"new").expect("create");
    // Nothing outside the layer can be marked.
    assert!(strata_mount::upper::mark_init(upper.path(), b"data/tree/top").is_err(), "a lower-only entry");

    let want = members(&[
        ("data", true),
        ("data/tree", true),
        ("data/tree/resolv", false),
        ("mq", true),
        ("mq/made-by-the-container", false),
        ("new", false),
        ("sys", true),
    ]);
    assert_eq!(committed(&image, upper.path()), want);

    // The setup stays in the mount, hidden marks and all.
    assert!(m.path("proc").is_dir() && m.path("data/hosts").is_file());
    assert_eq!(xattr_names(&m.path("proc")), b"");
    drop(m);

    // Only the setup in a lower directory: that directory goes too.
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    fs::write(m.path("data/tree/hostname"), b"").expect("create");
    strata_mount::upper::mark_init(upper.path(), b"data/tree/hostname").expect("mark");
    assert_eq!(committed(&image, upper.path()), vec![]);
}

/// A mark stands only for the entry as made: setup the container (or a
/// later mount of the same layer) changed, moved, linked or remade over a
/// deletion is committed as what it now is.
#[test]
fn container_setup_changed_after_marking_is_committed_as_changed() {
    let image = image();
    let upper = tempfile::tempdir().expect("upper");
    let m = writable(&image, upper.path());
    let mark = |rel: &str| strata_mount::upper::mark_init(upper.path(), rel.as_bytes()).expect("mark");
    // A lower file deleted, then remade empty by a run: the deletion stays.
    fs::remove_file(m.path("data/big")).expect("rm");
    fs::write(m.path("data/big"), b"").expect("create");
    mark("data/big");
    // A lower directory deleted, then remade with a file in it by a run.
    fs::remove_dir_all(m.path("data/tree")).expect("rm -r");
    fs::create_dir(m.path("data/tree")).expect("mkdir");
    fs::write(m.path("data/tree/hosts"), b"").expect("create");
    mark("data/tree/hosts");
    mark("data/tree");
    // Moved, given an xattr, touched, linked elsewhere: changes.
    fs::create_dir(m.path("mountpoint")).expect("mkdir");
    mark("mountpoint");
    fs::rename(m.path("mountpoint"), m.path("data/moved")).expect("mv");
    fs::write(m.path("xa"), b"").expect("create");
    mark("xa");
    let path = CString::new(m.path("xa").as_os_str().as_bytes()).expect("path");
    // SAFETY: valid C strings and a value of the length given.
    let set = unsafe { libc::setxattr(path.as_ptr(), c"user.x".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
    fs::write(m.path("touched"), b"").expect("create");
    mark("touched");
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    OpenOptions::new().write(true).open(m.path("touched")).expect("open").set_modified(when).expect("touch");
    fs::write(m.path("h"), b"").expect("create");
    mark("h");
    fs::hard_link(m.path("h"), m.path("h2")).expect("ln");
    fs::remove_file(m.path("h")).expect("rm");
    // Paths that are not canonical, or lead out of the layer, are refused.
    for bad in ["", "/xa", "../xa", "data/../xa", "data//big", "./xa", "xa/"] {
        assert!(strata_mount::upper::mark_init(upper.path(), bad.as_bytes()).is_err(), "{bad:?}");
    }

    let want = members(&[
        ("data", true),
        ("data/.wh.big", false),
        ("data/.wh.tree", false),
        ("data/moved", true),
        // A directory renamed in is opaque, as overlayfs makes it.
        ("data/moved/.wh..wh..opq", false),
        ("h2", false),
        ("touched", false),
        ("xa", false),
    ]);
    assert_eq!(committed(&image, upper.path()), want);
}

/// No FUSE request thread waits on a chunk source, and files never wait
/// on each other: while a write to one copied-up file waits on its lower
/// bytes (a head fill from a stalled source), `O_TRUNC` opens, truncates
/// and small unaligned writes (head and tail fills) of every other file
/// complete, while a truncate of the stalled file waits its turn.
#[test]
fn a_write_stalled_on_its_source_holds_up_no_other_file() {
    const FILES: usize = 70; // more than any fixed set of lock stripes
    let stalled_data = random_bytes(20, 300_000);
    let mut t = LayerTar::new(Vec::new());
    t.file(b"stalled", 0o644, &stalled_data).expect("file");
    let others: Vec<Vec<u8>> = (0..FILES).map(|i| random_bytes(100 + i as u64, 20_000)).collect();
    for (i, data) in others.iter().enumerate() {
        t.file(format!("f{i}").as_bytes(), 0o644, data).expect("file");
    }
    let image = import(vec![t.finish().expect("tar")]);
    let stalled_ino = image.tree.lookup_path(b"stalled").expect("stalled");
    let stalled = image.tree.get(stalled_ino).expect("inode").chunks.iter().map(|c| c.id).collect();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let source = common::StallingSource {
        inner: image.store.clone(),
        stalled,
        entered: std::sync::Mutex::new(Some(entered_tx)),
        release: std::sync::Mutex::new(release_rx),
    };
    let upper = tempfile::tempdir().expect("upper");
    let tree = strata_mount::load_lower(&image.store, &image.store.resolve("test:1").expect("image").1)
        .expect("tree");
    let m = mount_with(
        tree,
        std::sync::Arc::new(source),
        Some(UpperDir::open(upper.path(), &image.id).expect("upper")),
    );

    // One byte into the middle of a block: its head and tail come from below.
    let path = m.path("stalled");
    let writer = std::thread::spawn(move || {
        let file = OpenOptions::new().write(true).open(&path)?;
        std::os::unix::fs::FileExt::write_all_at(&file, b"X", 5_000)
    });
    entered_rx.recv().expect("the write reaches the stalled source");

    // A truncate of the stalled file waits for its write (the kernel holds
    // the inode's lock across a write): it must hold up nothing else.
    let path = m.path("stalled");
    let truncator = std::thread::spawn(move || OpenOptions::new().write(true).open(&path)?.set_len(200_000));
    // Everything else, from a thread of its own: a hang is a failure.
    let root = m.path("");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let others_expected = others.clone();
    std::thread::spawn(move || {
        let result = (|| -> std::io::Result<()> {
            for i in 0..FILES {
                let path = root.join(format!("f{i}"));
                match i % 3 {
                    0 => drop(OpenOptions::new().write(true).truncate(true).open(&path)?),
                    1 => OpenOptions::new().write(true).open(&path)?.set_len(1_000)?,
                    _ => std::os::unix::fs::FileExt::write_all_at(
                        &OpenOptions::new().write(true).open(&path)?,
                        b"Y",
                        4_099,
                    )?,
                }
            }
            for (i, original) in others_expected.iter().enumerate() {
                let got = fs::read(root.join(format!("f{i}")))?;
                let want: Vec<u8> = match i % 3 {
                    0 => Vec::new(),
                    1 => original[..1_000].to_vec(),
                    _ => {
                        let mut w = original.clone();
                        w[4_099] = b'Y';
                        w
                    }
                };
                assert!(got == want, "f{i} reads back as written");
            }
            Ok(())
        })();
        let _ = done_tx.send(result);
    });
    let others_done = done_rx.recv_timeout(std::time::Duration::from_secs(60));
    // Released either way, so a failure ends here rather than hanging.
    for _ in 0..64 {
        release_tx.send(()).expect("release");
    }
    others_done
        .expect("the other files' changes completed while one write waited on its source")
        .expect("changes");
    writer.join().expect("join").expect("the stalled write completes once released");
    truncator.join().expect("join").expect("the truncate completes after it");
    let mut want = stalled_data[..200_000].to_vec();
    want[5_000] = b'X';
    assert!(fs::read(m.path("stalled")).expect("read") == want, "the stalled file holds both changes");
}
