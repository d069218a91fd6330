//! POSIX semantics of the writable mount, each probe run on a Strata mount
//! and on kernel overlayfs over the same layers: the kernel's answers are
//! the expected values. Open files unlinked or renamed over, directory
//! streams read while the directory changes, copy-up of capabilities and
//! setuid bits, paths as long as the kernel allows, fallocate in every mode
//! on copied-up files, and lookups in any order after a remount.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::kernel_overlay::KernelOverlay;
use common::{import, mount_with, Mounted};
use strata_mount::UpperDir;
use strata_sample::{base_layer, random_bytes, update_layer, LayerTar};

/// Entries of the large lower directories.
const BIG_DIR: usize = 600;

/// A file capability blob (VFS_CAP_REVISION_2, effective): cap_net_raw
/// permitted, as ping ships.
const CAP_NET_RAW: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn probe_layer() -> Vec<u8> {
    let mut t = LayerTar::new(Vec::new());
    t.dir("data", 0o755).expect("dir");
    for (i, name) in ["data/f1", "data/f2", "data/f3", "data/f4"].iter().enumerate() {
        t.file(name.as_bytes(), 0o644, &random_bytes(20 + i as u64, 256 << 10)).expect("file");
    }
    t.file(b"data/big", 0o640, &random_bytes(9, 3 << 20)).expect("file");
    t.file(b"data/open-lower", 0o644, &random_bytes(30, 100_000)).expect("file");
    t.file(b"data/ro-lower", 0o644, &random_bytes(31, 100_000)).expect("file");
    t.dir("data/tree", 0o755).expect("dir");
    t.file(b"data/tree/leaf", 0o644, b"leaf").expect("file");
    t.dir("bin", 0o755).expect("dir");
    let cap: &[u8] = &CAP_NET_RAW;
    for name in ["bin/ping-chmod", "bin/ping-touch", "bin/ping-write", "bin/ping-chown"] {
        t.file_with_pax_mode(
            name,
            0o4755,
            &random_bytes(40, 20_000),
            &[("SCHILY.xattr.security.capability", cap)],
        )
        .expect("file");
    }
    for dir in ["big", "big-rm"] {
        t.dir(dir, 0o755).expect("dir");
        for i in 0..BIG_DIR {
            t.file(format!("{dir}/entry-{i:04}").as_bytes(), 0o644, b"x").expect("file");
        }
    }
    t.finish().expect("tar")
}

type Probes = BTreeMap<String, String>;

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// "ok" or the errno name of a libc return value.
fn rc(ret: libc::c_int) -> String {
    if ret >= 0 {
        "ok".to_owned()
    } else {
        format!("errno {}", errno())
    }
}

fn fstat(f: &File) -> libc::stat {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: an open descriptor; filled on success, checked.
    assert_eq!(unsafe { libc::fstat(f.as_raw_fd(), st.as_mut_ptr()) }, 0, "fstat: errno {}", errno());
    // SAFETY: filled by the successful call.
    unsafe { st.assume_init() }
}

fn read_all_at(f: &File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, 0).expect("pread");
    let mut got = n;
    while got < len {
        let n = f.read_at(&mut buf[got..], got as u64).expect("pread");
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_owned()
}

/// Every operation on a descriptor whose name went: `prefix` names the case.
fn probe_open_unlinked(out: &mut Probes, prefix: &str, f: &File, name: &Path) {
    let mut put = |k: &str, v: String| out.insert(format!("{prefix}.{k}"), v);
    put("name-gone", (!name.exists()).to_string());
    let st = fstat(f);
    put("fstat.nlink", st.st_nlink.to_string());
    put("fstat.size", st.st_size.to_string());
    put("pwrite", f.write_at(b"HELLO", 0).map(|n| n.to_string()).unwrap_or_else(|e| e.to_string()));
    put("pread", String::from_utf8_lossy(&read_all_at(f, 5)).into_owned());
    // SAFETY: fchmod / fchown on an open descriptor.
    put("fchmod", rc(unsafe { libc::fchmod(f.as_raw_fd(), 0o600) }));
    put("mode", format!("{:o}", fstat(f).st_mode & 0o7777));
    // SAFETY: as above.
    put("fchown", rc(unsafe { libc::fchown(f.as_raw_fd(), 12, 34) }));
    put("owner", format!("{}:{}", fstat(f).st_uid, fstat(f).st_gid));
    // SAFETY: as above.
    put("ftruncate", rc(unsafe { libc::ftruncate(f.as_raw_fd(), 3) }));
    put("size-after-truncate", fstat(f).st_size.to_string());
    put("content-after-truncate", String::from_utf8_lossy(&read_all_at(f, 10)).into_owned());
    // SAFETY: as above.
    put("fsync", rc(unsafe { libc::fsync(f.as_raw_fd()) }));
    // SAFETY: as above.
    put("fallocate", rc(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }));
    put("size-after-fallocate", fstat(f).st_size.to_string());
    // SAFETY: a shared mapping of the first page of an open file of 8 KiB,
    // written, synced and unmapped here.
    let mapped = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            format!("errno {}", errno())
        } else {
            *(p as *mut u8).add(100) = b'M';
            let s = libc::msync(p, 4096, libc::MS_SYNC);
            libc::munmap(p, 4096);
            rc(s)
        }
    };
    put("mmap-write", mapped);
    let mut byte = [0u8; 1];
    f.read_at(&mut byte, 100).expect("pread");
    put("byte-written-by-mmap", String::from_utf8_lossy(&byte).into_owned());
}

fn probes(root: &Path) -> Probes {
    let mut out = Probes::new();
    let put = |out: &mut Probes, k: &str, v: String| {
        out.insert(k.to_owned(), v);
    };

    // An upper file unlinked while open.
    let name = root.join("tmp/unlinked-upper");
    fs::write(&name, b"hello world").expect("write");
    let f = OpenOptions::new().read(true).write(true).open(&name).expect("open");
    fs::remove_file(&name).expect("unlink");
    probe_open_unlinked(&mut out, "upper", &f, &name);
    let listed = fs::read_dir(root.join("tmp"))
        .expect("readdir")
        .any(|e| e.expect("entry").file_name() == "unlinked-upper");
    put(&mut out, "upper.listed", listed.to_string());
    drop(f);

    // A lower file opened for writing, unlinked, then first changed.
    let name = root.join("data/open-lower");
    let f = OpenOptions::new().read(true).write(true).open(&name).expect("open");
    fs::remove_file(&name).expect("unlink");
    put(&mut out, "lower.content-before-write", hash(&read_all_at(&f, 200_000)));
    probe_open_unlinked(&mut out, "lower", &f, &name);
    drop(f);

    // A lower file open read-only, unlinked: reads the same bytes to the end.
    let name = root.join("data/ro-lower");
    let f = File::open(&name).expect("open");
    let before = read_all_at(&f, 200_000);
    fs::remove_file(&name).expect("unlink");
    put(&mut out, "lower-ro.same-bytes", (read_all_at(&f, 200_000) == before).to_string());
    put(&mut out, "lower-ro.nlink", fstat(&f).st_nlink.to_string());
    drop(f);

    // Renamed over while open.
    let (a, b) = (root.join("tmp/ren-a"), root.join("tmp/ren-b"));
    fs::write(&a, b"old contents").expect("write");
    fs::write(&b, b"new").expect("write");
    let f = OpenOptions::new().read(true).write(true).open(&a).expect("open");
    fs::rename(&b, &a).expect("rename");
    put(&mut out, "renamed-over.fd-reads", String::from_utf8_lossy(&read_all_at(&f, 100)).into_owned());
    put(&mut out, "renamed-over.fd-nlink", fstat(&f).st_nlink.to_string());
    f.write_at(b"OLD", 0).expect("pwrite");
    put(
        &mut out,
        "renamed-over.name-reads",
        String::from_utf8_lossy(&fs::read(&a).expect("read")).into_owned(),
    );
    drop(f);
    // A lower file renamed over while open.
    let f = File::open(root.join("data/f4")).expect("open");
    let before = read_all_at(&f, 300_000);
    fs::rename(root.join("tmp/ren-a"), root.join("data/f4")).expect("rename");
    put(&mut out, "renamed-over-lower.fd-reads-old", (read_all_at(&f, 300_000) == before).to_string());
    drop(f);

    // Directory streams: unlink every entry while reading the directory.
    put(&mut out, "readdir-unlink.lower", unlink_while_reading(&root.join("big")));
    fs::create_dir(root.join("tmp/new")).expect("mkdir");
    for i in 0..BIG_DIR {
        fs::write(root.join(format!("tmp/new/n{i}")), b"").expect("create");
    }
    put(&mut out, "readdir-unlink.upper", unlink_while_reading(&root.join("tmp/new")));
    let rm = Command::new("rm").arg("-rf").arg(root.join("big-rm")).output().expect("rm");
    put(
        &mut out,
        "rm-rf.lower",
        format!("{} {}", rm.status.success(), String::from_utf8_lossy(&rm.stderr).trim()),
    );
    put(&mut out, "rm-rf.gone", (!root.join("big-rm").exists()).to_string());

    // Copy-up keeps file capabilities and setuid bits; chown drops them as
    // the kernel does.
    let status = Command::new("chmod").arg("4755").arg(root.join("bin/ping-chmod")).status().expect("chmod");
    assert!(status.success());
    let status = Command::new("touch").arg(root.join("bin/ping-touch")).status().expect("touch");
    assert!(status.success());
    OpenOptions::new()
        .write(true)
        .open(root.join("bin/ping-write"))
        .expect("open")
        .write_at(b"x", 10)
        .expect("write");
    let status = Command::new("chown").arg("0:0").arg(root.join("bin/ping-chown")).status().expect("chown");
    assert!(status.success());
    for name in ["ping-chmod", "ping-touch", "ping-write", "ping-chown"] {
        let path = root.join("bin").join(name);
        put(
            &mut out,
            &format!("{name}.mode"),
            format!("{:o}", fs::symlink_metadata(&path).expect("stat").mode() & 0o7777),
        );
        let cap = common::xattr(&path, "security.capability")
            .map(|v| hash(&v))
            .unwrap_or_else(|| "none".to_owned());
        put(&mut out, &format!("{name}.capability"), cap);
    }

    // Paths as long as the kernel allows: a 4,095-byte relative path.
    put(&mut out, "long-path", long_path(root));

    // fallocate in every mode on copied-up lower files.
    let modes = [
        ("plain", "data/f1", 0, 200_000u64, 200_000u64),
        ("keep-size", "data/f2", libc::FALLOC_FL_KEEP_SIZE, 200_000, 200_000),
        (
            "punch-hole",
            "data/big",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            1 << 20,
            65_536 + 1000,
        ),
        ("zero-range", "data/f3", libc::FALLOC_FL_ZERO_RANGE, 1000, 5000),
    ];
    for (label, file, mode, offset, len) in modes {
        let f = OpenOptions::new().read(true).write(true).open(root.join(file)).expect("open");
        // SAFETY: fallocate on an open descriptor.
        let r = rc(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) });
        drop(f);
        let bytes = fs::read(root.join(file)).expect("read");
        put(&mut out, &format!("fallocate.{label}"), format!("{r} size={} {}", bytes.len(), hash(&bytes)));
    }

    // chown(-1, -1) changes only the ctime, as the kernel's filesystems do
    // (pjdfstest chown/00.t). Wait for the coarse clock to pass the ctime.
    let name = root.join("tmp/ctime");
    fs::write(&name, b"c").expect("write");
    let ctime = |p: &Path| {
        let m = fs::symlink_metadata(p).expect("stat");
        (m.ctime(), m.ctime_nsec())
    };
    let before = ctime(&name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
        <= before.0 + 1
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let c = cpath(&name);
    // SAFETY: chown of a valid path; -1 leaves both ids.
    put(&mut out, "chown-minus-one.rc", rc(unsafe { libc::chown(c.as_ptr(), u32::MAX, u32::MAX) }));
    put(&mut out, "chown-minus-one.ctime-changed", (ctime(&name) != before).to_string());

    // Link a lower file under a second name (checked after a remount).
    fs::hard_link(root.join("data/tree/leaf"), root.join("data/tree/no_leaf")).expect("link");
    out
}

/// Reads `dir` with readdir(3), unlinking each entry as it comes (what
/// busybox `rm -rf` and a lazy `os.scandir` loop do): "unlinked,left".
fn unlink_while_reading(dir: &Path) -> String {
    let c = cpath(dir);
    let mut unlinked = 0;
    // SAFETY: opendir/readdir/closedir on a valid path; each entry's name is
    // copied before the next readdir.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir: errno {}", errno());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let path = cpath(&dir.join(std::ffi::OsStr::from_bytes(&name)));
            assert_eq!(libc::unlink(path.as_ptr()), 0, "unlink: errno {}", errno());
            unlinked += 1;
        }
        libc::closedir(d);
    }
    let left = fs::read_dir(dir).expect("readdir").count();
    format!("{unlinked},{left}")
}

/// Makes, uses and removes a file at a 4,095-byte path relative to `root`.
fn long_path(root: &Path) -> String {
    let root_dir = File::open(root).expect("open root");
    let fd = root_dir.as_raw_fd();
    let component = "d".repeat(250);
    let mut rel = String::new();
    let mut steps = Vec::new();
    for _ in 0..16 {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&component);
        let c = CString::new(rel.clone()).expect("path");
        // SAFETY: mkdirat relative to an open directory.
        steps.push(rc(unsafe { libc::mkdirat(fd, c.as_ptr(), 0o755) }));
    }
    let file = format!("{rel}/{}", "f".repeat(4095 - rel.len() - 1));
    assert_eq!(file.len(), 4095);
    let c = CString::new(file.clone()).expect("path");
    // SAFETY: openat / write / fstatat / unlinkat relative to an open directory.
    unsafe {
        let f = libc::openat(fd, c.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o644);
        steps.push(rc(f));
        if f >= 0 {
            steps.push(rc(libc::write(f, b"deep".as_ptr().cast(), 4) as i32));
            steps.push(rc(libc::fsetxattr(f, c"user.deep".as_ptr(), b"1".as_ptr().cast(), 1, 0)));
            libc::close(f);
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        steps.push(rc(libc::fstatat(fd, c.as_ptr(), st.as_mut_ptr(), 0)));
        let renamed = CString::new(format!("{rel}/{}", "g".repeat(4095 - rel.len() - 1))).expect("path");
        steps.push(rc(libc::renameat(fd, c.as_ptr(), fd, renamed.as_ptr())));
        steps.push(rc(libc::unlinkat(fd, renamed.as_ptr(), 0)));
    }
    let mut dirs: Vec<String> = Vec::new();
    let mut at = String::new();
    for _ in 0..16 {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(&component);
        dirs.push(at.clone());
    }
    for dir in dirs.iter().rev() {
        let c = CString::new(dir.clone()).expect("path");
        // SAFETY: unlinkat relative to an open directory.
        steps.push(rc(unsafe { libc::unlinkat(fd, c.as_ptr(), libc::AT_REMOVEDIR) }));
    }
    let failed: Vec<String> =
        steps.iter().enumerate().filter(|(_, s)| *s != "ok").map(|(i, s)| format!("step {i}: {s}")).collect();
    if failed.is_empty() {
        "ok".to_owned()
    } else {
        failed.join("; ")
    }
}

/// After a remount: unlink the second name before anything looks up the first.
fn probes_after_remount(root: &Path) -> Probes {
    let mut out = Probes::new();
    let r = fs::remove_file(root.join("data/tree/no_leaf"));
    out.insert("remount.unlink-second-name".into(), format!("{r:?}"));
    let first = fs::read(root.join("data/tree/leaf")).map(|b| String::from_utf8_lossy(&b).into_owned());
    out.insert("remount.first-name-reads".into(), format!("{first:?}"));
    let mut names: Vec<String> = fs::read_dir(root.join("data/tree"))
        .map(|d| d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    out.insert("remount.listing".into(), names.join(","));
    for name in ["ping-chmod", "ping-touch", "ping-write"] {
        let path = root.join("bin").join(name);
        let cap = common::xattr(&path, "security.capability")
            .map(|v| hash(&v))
            .unwrap_or_else(|| "none".to_owned());
        out.insert(format!("remount.{name}.capability"), cap);
        out.insert(
            format!("remount.{name}.mode"),
            format!("{:o}", fs::symlink_metadata(&path).expect("stat").mode() & 0o7777),
        );
    }
    out
}

fn strata_mount(image: &common::Image, upper: &Path) -> Mounted {
    let tree = strata_mount::load_lower(&image.store, &image.store.resolve("test:1").expect("image").1)
        .expect("tree");
    mount_with(tree, image.store.clone(), Some(UpperDir::open(upper, &image.id).expect("upper")))
}

/// Where Strata answers as ext4 does rather than as overlayfs: the probe,
/// the value, and why.
const DELIBERATE: &[(&str, &str, &str)] = &[(
    "lower-ro.nlink",
    "0",
    "an unlinked file has no links (ext4, and overlayfs for upper files); overlayfs shows the lower file's count",
)];

fn assert_same(ours: &Probes, kernel: &Probes) {
    let mut diffs = Vec::new();
    for (k, kernel_value) in kernel {
        let want = DELIBERATE.iter().find(|(p, _, _)| p == k).map_or(kernel_value.as_str(), |(_, v, _)| v);
        let got = ours.get(k).map_or("(missing)", String::as_str);
        if got != want {
            diffs.push(format!("{k}: kernel overlayfs {want:?}, strata {got:?}"));
        }
    }
    assert!(diffs.is_empty(), "differences from kernel overlayfs:\n{}", diffs.join("\n"));
}

#[test]
fn posix_semantics_match_kernel_overlayfs() {
    let layers = vec![base_layer().expect("base"), update_layer().expect("update"), probe_layer()];
    let image = import(layers.clone());
    let scratch = tempfile::tempdir().expect("scratch");
    let mut kernel = KernelOverlay::new(&layers, scratch.path());
    // The upper directory sits deep, so host path lengths would show.
    let upper_parent = tempfile::tempdir().expect("upper");
    let upper = upper_parent.path().join("a-fairly-long-directory-name-for-the-writable-layer/upper");
    fs::create_dir_all(&upper).expect("mkdir");

    let ours = strata_mount(&image, &upper);
    let kernel_probes = probes(&kernel.merged);
    // The probes ran on overlayfs as written.
    assert_eq!(kernel_probes["upper.pread"], "HELLO");
    assert_eq!(kernel_probes["readdir-unlink.lower"], format!("{BIG_DIR},0"));
    assert_eq!(kernel_probes["long-path"], "ok");
    assert_ne!(kernel_probes["ping-chmod.capability"], "none");
    let our_probes = probes(ours.dir.path());
    assert_same(&our_probes, &kernel_probes);

    drop(ours);
    kernel.unmount();
    kernel.mount();
    let ours = strata_mount(&image, &upper);
    assert_same(&probes_after_remount(ours.dir.path()), &probes_after_remount(&kernel.merged));
}

#[test]
fn an_unlinked_open_files_blocks_are_freed_at_last_close() {
    let image = import(vec![base_layer().expect("base")]);
    let upper = tempfile::tempdir().expect("upper");
    let m = strata_mount(&image, upper.path());
    let name = m.path("tmp/big");
    fs::write(&name, random_bytes(1, 4 << 20)).expect("write");
    let f = File::open(&name).expect("open");
    let g = File::open(&name).expect("open twice");
    fs::remove_file(&name).expect("unlink");
    let orphans = || fs::read_dir(upper.path().join("work")).expect("work").count();
    assert_eq!(orphans(), 1, "the unlinked file's data is kept while open");
    drop(f);
    assert_eq!(read_all_at(&g, 10).len(), 10, "the second descriptor still reads");
    drop(g);
    // The kernel forgets the inode at the last close; FORGET carries no
    // reply, so poll for its effect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while orphans() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(orphans(), 0, "blocks freed at the last close");
}
