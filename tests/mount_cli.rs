//! `strata mount`, `mounts` and `umount` as a user runs them: a background
//! process serves the mount; the store stays usable beside it; a killed
//! mount process leaves a dead mount that `umount` clears.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{sample_archive, Strata};

/// A mountpoint that is unmounted (lazily) whatever the test's outcome.
struct Mountpoint<'a> {
    strata: &'a Strata,
    path: PathBuf,
}

impl<'a> Mountpoint<'a> {
    fn new(strata: &'a Strata, name: &str) -> Self {
        let path = strata.path(name);
        std::fs::create_dir_all(&path).expect("mountpoint");
        Self { strata, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for Mountpoint<'_> {
    fn drop(&mut self) {
        let _ = self.strata.run(&["umount", "--lazy", self.arg()]);
    }
}

fn wait_until_gone(pid: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn mount_serves_in_the_background_beside_imports_and_gc() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    let out = s.ok(&["mount", "sample:1", mp.arg(), "--read-only"]);
    assert!(out.contains("mounted sample:1"), "{out}");
    assert_eq!(std::fs::read(mp.path.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");

    let mounts = s.json(&["mounts"]);
    let mounts = mounts.as_array().expect("array");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["state"], "live");
    assert_eq!(mounts[0]["mountpoint"], mp.arg());
    assert_eq!(mounts[0]["read_only"], true);
    let id = s.json(&["inspect", "sample:1"])["id"].as_str().expect("id").to_owned();
    assert_eq!(mounts[0]["image_id"], id.trim_start_matches("blake3:"));

    // The mounted image cannot be removed; the store is not locked by the mount.
    let err = s.fails(&["rm", "sample:1"]);
    assert!(err.contains("is mounted at"), "{err}");
    s.import(&sample_archive(s.dir.path(), "other.tar", "other:1"));
    s.ok(&["rm", "other:1"]);
    s.ok(&["gc"]);
    let app = std::fs::read(mp.path.join("bin/app")).expect("read after gc in another process");
    assert_eq!(app, strata_sample::random_bytes(1, 300_000));

    // A second mount of the same mountpoint is refused.
    let err = s.fails(&["mount", "sample:1", mp.arg(), "--read-only"]);
    assert!(err.contains("already a mount"), "{err}");

    s.ok(&["umount", mp.arg()]);
    assert!(s.json(&["mounts"]).as_array().expect("array").is_empty());
    assert_eq!(std::fs::read_dir(&mp.path).expect("readdir").count(), 0, "the mountpoint is empty again");
    s.ok(&["rm", "sample:1"]);
}

#[test]
fn a_killed_mount_process_leaves_a_dead_mount_that_umount_clears() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    let mounted = s.json(&["mount", "sample:1", mp.arg(), "--read-only"]);
    let pid = mounted["pid"].as_u64().expect("pid");

    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    wait_until_gone(pid);

    let mounts = s.json(&["mounts"]);
    assert_eq!(mounts[0]["state"], "dead");
    let err = std::fs::read(mp.path.join("etc/hostname")).expect_err("a dead mount cannot serve");
    // The kernel answers ENOTCONN once the connection is gone, ECONNABORTED
    // for a request caught by the abort itself.
    let code = err.raw_os_error();
    assert!(code == Some(libc::ENOTCONN) || code == Some(libc::ECONNABORTED), "{err}");

    s.ok(&["umount", mp.arg()]);
    assert!(s.json(&["mounts"]).as_array().expect("array").is_empty());

    // And the same mountpoint mounts again.
    s.ok(&["mount", "sample:1", mp.arg(), "--read-only"]);
    assert_eq!(std::fs::read(mp.path.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    s.ok(&["umount", mp.arg()]);
}

#[test]
fn sigterm_unmounts_and_the_process_exits() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    let pid = s.json(&["mount", "sample:1", mp.arg(), "--read-only"])["pid"].as_u64().expect("pid");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    wait_until_gone(pid);
    assert!(s.json(&["mounts"]).as_array().expect("array").is_empty(), "the record goes with the process");
    assert_eq!(std::fs::read_dir(&mp.path).expect("readdir").count(), 0);
}

#[test]
fn mounting_what_does_not_exist_fails_clearly() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    let err = s.fails(&["mount", "nope:1", mp.arg(), "--read-only"]);
    assert!(err.contains("nope"), "{err}");
    let err = s.fails(&["mount", "sample:1", s.path("missing").to_str().expect("utf-8"), "--read-only"]);
    assert!(err.contains("does not exist"), "{err}");
    let err = s.fails(&["umount", mp.arg()]);
    assert!(err.contains("not a strata mount"), "{err}");
    assert!(s.json(&["mounts"]).as_array().expect("array").is_empty());
}

#[test]
fn writes_survive_a_killed_mount_process_and_never_touch_the_store() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let (images, stats) = s.snapshot();
    let mp = Mountpoint::new(&s, "mnt");
    let upper = s.path("upper");
    let mounted = s.json(&["mount", "sample:1", mp.arg(), "--upper", upper.to_str().expect("utf-8")]);
    std::fs::write(mp.path.join("etc/hostname"), b"changed\n").expect("write");
    std::fs::write(mp.path.join("new.txt"), b"new").expect("create");
    std::fs::remove_file(mp.path.join("etc/motd")).expect("unlink");
    assert_eq!(s.snapshot(), (images.clone(), stats.clone()), "writes never reach the store");

    let pid = mounted["pid"].as_u64().expect("pid");
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    wait_until_gone(pid);
    s.ok(&["umount", mp.arg()]);

    s.ok(&["mount", "sample:1", mp.arg(), "--upper", upper.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(mp.path.join("etc/hostname")).expect("read"), b"changed\n");
    assert_eq!(std::fs::read(mp.path.join("new.txt")).expect("read"), b"new");
    assert!(!mp.path.join("etc/motd").exists());
    let err = s.fails(&[
        "mount",
        "sample:1",
        s.path("mnt2").to_str().expect("utf-8"),
        "--upper",
        upper.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("does not exist") || err.contains("in use"), "{err}");
    s.ok(&["umount", mp.arg()]);
    assert_eq!(s.snapshot(), (images, stats));
}

#[test]
fn commit_makes_an_image_whose_last_layer_holds_the_changes() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    s.ok(&["mount", "sample:1", mp.arg()]);
    let root = &mp.path;
    let mut motd = std::fs::OpenOptions::new().append(true).open(root.join("etc/motd")).expect("open");
    std::io::Write::write_all(&mut motd, b"appended\n").expect("append");
    drop(motd);
    std::fs::write(root.join("new.txt"), b"new file\n").expect("create");
    std::fs::remove_file(root.join("etc/hostname")).expect("unlink");
    std::fs::remove_dir_all(root.join("var/cache/old-dir")).expect("rmdir");
    std::fs::create_dir(root.join("var/cache/old-dir")).expect("mkdir");
    std::fs::write(root.join("var/cache/old-dir/fresh"), b"fresh").expect("create");

    let committed = s.json(&["commit", mp.arg(), "--name", "sample:2"]);
    let base = s.json(&["inspect", "sample:1"]);
    let new = s.json(&["inspect", "sample:2"]);
    let (base_layers, new_layers) =
        (base["layers"].as_array().expect("layers"), new["layers"].as_array().expect("layers"));
    assert_eq!(new_layers.len(), base_layers.len() + 1);
    assert_eq!(&new_layers[..base_layers.len()], &base_layers[..], "the base layers are shared, not copied");
    // The changed motd is re-chunked, and all but its tail dedupes against the stored chunks.
    let layer_size = new_layers.last().expect("layer")["size"].as_u64().expect("size");
    let new_bytes = committed["new_chunk_bytes"].as_u64().expect("new bytes");
    assert!(
        new_bytes + (16 << 10) <= layer_size,
        "{new_bytes} new chunk bytes for a {layer_size}-byte layer: unchanged chunks must dedupe"
    );
    s.ok(&["umount", mp.arg()]);

    // The export is a valid OCI image whose rootfs shows the changes.
    let tar = s.path("sample2.tar");
    s.ok(&["export", "sample:2", "-o", tar.to_str().expect("utf-8")]);
    let layout = s.path("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    let untar =
        std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&layout).status().expect("tar");
    assert!(untar.success());
    let bundle = s.path("bundle");
    let unpack = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:2", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci is installed (.ci/run installs it)");
    assert!(unpack.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&unpack.stderr));
    let rootfs = bundle.join("rootfs");
    let motd = std::fs::read(rootfs.join("etc/motd")).expect("motd");
    assert!(motd.ends_with(b"one more line\nappended\n"));
    assert_eq!(std::fs::read(rootfs.join("new.txt")).expect("new"), b"new file\n");
    assert!(!rootfs.join("etc/hostname").exists(), "the whiteout applies");
    let fresh: Vec<_> = std::fs::read_dir(rootfs.join("var/cache/old-dir"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(fresh, ["fresh"], "the opaque directory hides the old children");
}

#[test]
fn a_mount_killed_mid_write_keeps_what_was_written_and_remounts_clean() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let (images, stats) = s.snapshot();
    let mp = Mountpoint::new(&s, "mnt");
    let upper = s.path("upper");
    let upper_arg = upper.to_str().expect("utf-8").to_owned();
    let pid = s.json(&["mount", "sample:1", mp.arg(), "--upper", &upper_arg])["pid"].as_u64().expect("pid");

    // A writer appends 1 MiB blocks to a new file and to a copied-up lower
    // file until the mount dies under it; each block's first byte says which.
    let (new_path, lower_path) = (mp.path.join("new.bin"), mp.path.join("bin/app"));
    let (progress_tx, progress_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut new = std::fs::File::create(&new_path).expect("create");
        let mut lower = std::fs::OpenOptions::new().append(true).open(&lower_path).expect("open lower");
        let mut written = 0u64;
        for n in 0..u8::MAX {
            let block = vec![n; 1 << 20];
            if new.write_all(&block).is_err() || lower.write_all(&block).is_err() {
                break;
            }
            written += 1;
            let _ = progress_tx.send(written);
        }
        written
    });
    // Kill once some blocks are in, while the writer is still going.
    while progress_rx.recv().expect("writer progresses") < 8 {}
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let written = writer.join().expect("writer");
    assert!(written >= 8 && written < u8::MAX as u64, "the writer was cut off ({written} blocks)");
    wait_until_gone(pid);
    // A mount over the dead one is refused with what happened and what to do.
    let err = s.fails(&["mount", "sample:1", mp.arg(), "--upper", &upper_arg]);
    assert!(err.contains("is a mount whose process died") && err.contains("strata umount"), "{err}");
    let mounts = s.json(&["mounts"]);
    assert_eq!(mounts[0]["state"], "dead", "{mounts}");
    s.ok(&["umount", mp.arg()]);

    s.ok(&["mount", "sample:1", mp.arg(), "--upper", &upper_arg]);
    let new = std::fs::read(mp.path.join("new.bin")).expect("new file after remount");
    assert!(new.len() as u64 >= written << 20, "every acknowledged block survives");
    for (i, block) in new.chunks(1 << 20).enumerate() {
        assert!(block.iter().all(|b| *b == i as u8), "block {i} holds what was written");
    }
    let app = std::fs::read(mp.path.join("bin/app")).expect("lower file after remount");
    assert_eq!(&app[..300_000], &strata_sample::random_bytes(1, 300_000)[..], "the lower bytes are intact");
    for (i, block) in app[300_000..].chunks(1 << 20).enumerate() {
        assert!(block.iter().all(|b| *b == i as u8), "appended block {i} holds what was written");
    }
    assert!(
        std::fs::read_dir(upper.join("work")).expect("work dir").next().is_none(),
        "nothing half made is left"
    );
    s.ok(&["umount", mp.arg()]);
    assert_eq!(s.snapshot(), (images, stats), "the store never saw the writes");
}

#[test]
fn commit_keeps_hardlinked_symlinks_and_leaves_sockets_out() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    s.ok(&["mount", "sample:1", mp.arg()]);
    let root = &mp.path;
    std::os::unix::fs::symlink("etc/motd", root.join("sym")).expect("symlink");
    std::fs::hard_link(root.join("sym"), root.join("sym-again")).expect("link a symlink");
    let listener = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("bind a socket");
    std::fs::hard_link(root.join("sock"), root.join("sock-again")).expect("link a socket");
    drop(listener);
    s.json(&["commit", mp.arg(), "--name", "sample:2"]);
    let check = Mountpoint::new(&s, "check");
    s.ok(&["mount", "sample:2", check.arg(), "--read-only"]);
    let (a, b) = (
        std::fs::symlink_metadata(check.path.join("sym")).expect("stat"),
        std::fs::symlink_metadata(check.path.join("sym-again")).expect("stat"),
    );
    assert!(a.file_type().is_symlink());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one symlink inode with two names");
    assert!(!check.path.join("sock").exists() && !check.path.join("sock-again").exists(), "sockets left out");
}

#[test]
fn umount_acts_on_its_own_data_dir_s_mounts_and_failed_mounts_leave_no_layer() {
    let (a, b) = (Strata::new(), Strata::new());
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    b.import(&sample_archive(b.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&a, "mnt");
    a.ok(&["mount", "sample:1", mp.arg()]);
    // B's umount names the owner and leaves A's mount alone.
    let err = b.fails(&["umount", mp.arg()]);
    let a_dir = a.data_dir();
    assert!(err.contains("a mount of the store in") && err.contains(a_dir.to_str().expect("utf-8")), "{err}");
    assert!(mp.path.join("etc/hostname").exists(), "still mounted");

    // A busy mount says who holds it.
    let holder = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&mp.path)
        .spawn()
        .expect("a process with its cwd in the mount");
    let err = a.fails(&["umount", mp.arg()]);
    assert!(err.contains("is busy") && err.contains(&format!("sleep (pid {})", holder.id())), "{err}");
    let mut holder = holder;
    holder.kill().expect("kill");
    holder.wait().expect("wait");

    a.ok(&["umount", mp.arg()]);
    // The writable layer the mount made stays (a remount with --upper takes
    // it); `uppers` lists it unused, `uppers prune` removes it.
    let uppers = a.json(&["uppers"]);
    let uppers = uppers.as_array().expect("array");
    assert_eq!(uppers.len(), 1, "{uppers:?}");
    assert_eq!(uppers[0]["in_use"], false);
    assert_eq!(uppers[0]["image_names"][0], "sample:1");
    let removed = a.json(&["uppers", "prune"]);
    assert_eq!(removed.as_array().expect("array").len(), 1);
    assert!(a.json(&["uppers"]).as_array().expect("array").is_empty());

    // A mount that fails makes no writable layer that stays (an id that
    // matches nothing: never asked of a registry).
    let err = a.fails(&["mount", "0000deadbeef", mp.arg()]);
    assert!(err.contains("0000deadbeef"), "{err}");
    assert!(a.json(&["uppers"]).as_array().expect("array").is_empty(), "no layer left by a failed mount");
    let given = a.path("given-upper");
    a.fails(&["mount", "0000deadbeef", mp.arg(), "--upper", given.to_str().expect("utf-8")]);
    assert!(!given.exists(), "a --upper the failed mount created is gone again");

    // An upper a live mount holds is not removed.
    a.ok(&["mount", "sample:1", mp.arg()]);
    let name = a.json(&["uppers"])[0]["name"].as_str().expect("name").to_owned();
    let err = a.fails(&["uppers", "rm", &name]);
    assert!(err.contains("in use by a mount"), "{err}");
    assert!(a.json(&["uppers", "prune"]).as_array().expect("array").is_empty());
    a.ok(&["umount", mp.arg()]);
    assert_eq!(a.json(&["uppers", "rm", &name])[0]["name"], name.as_str());
}

#[test]
fn a_mount_process_that_cannot_unmount_on_a_signal_says_who_holds_the_mount() {
    let s = Strata::new();
    s.import(&sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mp = Mountpoint::new(&s, "mnt");
    s.ok(&["mount", "sample:1", mp.arg(), "--read-only"]);
    let record = &s.json(&["mounts"])[0];
    let (pid, log) = (record["pid"].as_u64().expect("pid"), record["log"].as_str().expect("log").to_owned());
    let mut holder =
        std::process::Command::new("sleep").arg("600").current_dir(&mp.path).spawn().expect("a holder");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let said = format!("sleep (pid {})", holder.id());
    crate::common::node::wait_for("the mount process to say why it stays", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("cannot unmount on signal") && l.contains(&said))
    });
    assert!(mp.path.join("etc/hostname").exists(), "still served while held");
    holder.kill().expect("kill");
    holder.wait().expect("wait");
    s.ok(&["umount", mp.arg()]);
    wait_until_gone(pid);
}
