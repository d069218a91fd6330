//! The baseline a container runtime gives, the docker/containerd way: pull
//! every layer whole over the link (zstd-compressed, three at a time, like
//! `docker pull`), unpack each in order into its own directory (OCI whiteouts
//! become overlayfs whiteouts), mount them with overlayfs, and start the
//! workload in the merged tree.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::netns::{in_netns, sh};

/// Layers a runtime downloads at once (docker's max-concurrent-downloads).
const CONCURRENT_DOWNLOADS: usize = 3;

/// A docker-archive's layers, base first, each as a zstd-compressed tar
/// (level 3), made once per archive and kept beside it.
pub fn compressed_layers(archive: &Path) -> Vec<PathBuf> {
    let dir = archive.with_extension("layers");
    let meta = std::fs::metadata(archive).expect("archive");
    let stamp = format!("{} {:?}", meta.len(), meta.modified().ok());
    let layers = layer_paths(archive);
    let outputs: Vec<PathBuf> = (0..layers.len()).map(|i| dir.join(format!("layer-{i}.tar.zst"))).collect();
    if std::fs::read_to_string(dir.join("stamp")).ok().as_deref() == Some(stamp.as_str()) {
        return outputs;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("layers dir");
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
    for entry in tar.entries().expect("archive entries") {
        let mut entry = entry.expect("archive entry");
        let path = entry.path().expect("entry path").to_string_lossy().into_owned();
        for (i, layer) in layers.iter().enumerate() {
            if *layer == path {
                let out = std::fs::File::create(&outputs[i]).expect("layer file");
                let mut encoder = zstd::Encoder::new(out, 3).expect("zstd");
                std::io::copy(&mut entry, &mut encoder).expect("compressing a layer");
                encoder.finish().expect("zstd");
            }
        }
    }
    std::fs::write(dir.join("stamp"), stamp).expect("stamp");
    outputs
}

/// The layer paths manifest.json lists, base first.
fn layer_paths(archive: &Path) -> Vec<String> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
    for entry in tar.entries().expect("archive entries") {
        let mut entry = entry.expect("archive entry");
        if entry.path().expect("entry path").as_os_str() == "manifest.json" {
            let mut json = String::new();
            entry.read_to_string(&mut json).expect("manifest.json");
            let manifest: serde_json::Value = serde_json::from_str(&json).expect("manifest.json");
            return manifest[0]["Layers"]
                .as_array()
                .expect("Layers")
                .iter()
                .map(|l| l.as_str().expect("layer path").to_owned())
                .collect();
        }
    }
    panic!("{} has no manifest.json", archive.display())
}

/// Serves files by index over TCP from inside a namespace: the client sends
/// "INDEX\n" and reads the file to the end.
pub struct BlobServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    netns: String,
}

impl BlobServer {
    pub fn start(netns: &str, ip: &str, files: Vec<PathBuf>) -> BlobServer {
        let listener = in_netns(netns, || TcpListener::bind((ip, 0)).expect("bind blob server"));
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let files = Arc::new(files);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let files = files.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    BufReader::new(&mut conn).read_line(&mut line).expect("request");
                    let index: usize = line.trim().parse().expect("index");
                    let mut file = std::fs::File::open(&files[index]).expect("blob");
                    let _ = std::io::copy(&mut file, &mut conn);
                });
            }
        });
        BlobServer { addr, stop, netns: netns.to_owned() }
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let addr = self.addr;
        in_netns(&self.netns, || drop(TcpStream::connect(addr)));
    }
}

/// Phases of one full-pull start, from the start of the pull.
pub struct FullPullTimes {
    pub downloaded: Duration,
    pub unpacked: Duration,
    pub ready: Duration,
    /// A second start in the same tree, its files in the page cache: the
    /// workload's own time, the floor under every way of starting it.
    pub warm: Duration,
    pub bytes_downloaded: u64,
}

/// Pulls `layers` layers from `server` inside `netns`, unpacks them under
/// `dir`, mounts them and runs `command` until it prints `ready`.
pub fn start(
    netns: &str,
    server: SocketAddr,
    layers: usize,
    dir: &Path,
    command: &[String],
    ready: &str,
) -> FullPullTimes {
    let started = Instant::now();
    std::fs::create_dir_all(dir).expect("pull dir");
    let next = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel::<(usize, u64)>();
    for _ in 0..CONCURRENT_DOWNLOADS.min(layers) {
        let (next, done_tx, netns, dir) = (next.clone(), done_tx.clone(), netns.to_owned(), dir.to_owned());
        std::thread::spawn(move || {
            in_netns(&netns, || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= layers {
                    return;
                }
                let mut conn = TcpStream::connect(server).expect("connect blob server");
                writeln!(conn, "{i}").expect("request");
                let mut out =
                    std::fs::File::create(dir.join(format!("layer-{i}.tar.zst"))).expect("blob file");
                let n = std::io::copy(&mut conn, &mut out).expect("download");
                done_tx.send((i, n)).expect("report");
            })
        });
    }
    drop(done_tx);
    // Each layer is unpacked as soon as it and every layer below are here.
    let mut arrived = vec![false; layers];
    let (mut downloaded, mut bytes) = (Duration::ZERO, 0);
    let mut lowers = Vec::new();
    for i in 0..layers {
        while !arrived[i] {
            let (j, n) = done_rx.recv().expect("a download failed");
            arrived[j] = true;
            bytes += n;
            downloaded = started.elapsed();
        }
        let lower = dir.join(format!("l{i}"));
        unpack(&dir.join(format!("layer-{i}.tar.zst")), &lower);
        lowers.push(lower);
    }
    let unpacked = started.elapsed();
    let merged = dir.join("merged");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(dir.join(d)).expect("overlay dirs");
    }
    let lowerdir: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
    sh(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
        lowerdir.join(":"),
        dir.join("upper").display(),
        dir.join("work").display(),
        merged.display()
    ));
    let ready_at = run_until_ready(&merged, command, ready, started);
    let warm = run_until_ready(&merged, command, ready, Instant::now());
    sh(&format!("umount {}", merged.display()));
    FullPullTimes { downloaded, unpacked, ready: ready_at, warm, bytes_downloaded: bytes }
}

/// Unpacks a zstd-compressed layer tar into `dest`, as a runtime's
/// overlayfs snapshotter does.
fn unpack(blob: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("layer dir");
    let decoder = zstd::Decoder::new(std::fs::File::open(blob).expect("blob")).expect("zstd");
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    for entry in tar.entries().expect("layer entries") {
        let mut entry = entry.expect("layer entry");
        let path = entry.path().expect("entry path").into_owned();
        let name = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if name == b".wh..wh..opq" {
            std::fs::create_dir_all(&parent).expect("opaque dir");
            xattr_set(&parent, "trusted.overlay.opaque", b"y");
        } else if let Some(hidden) = name.strip_prefix(b".wh.") {
            std::fs::create_dir_all(&parent).expect("whiteout dir");
            let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
            nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                .expect("whiteout");
        } else {
            entry.unpack_in(dest).expect("unpacking an entry");
        }
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: C strings and a buffer that outlive the call.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Starts `command` in `rootfs` (new mount, PID and UTS namespaces, /dev
/// and /proc, chroot) and returns when it prints `ready`, measured from
/// `since`; then waits for it to exit.
fn run_until_ready(rootfs: &Path, command: &[String], ready: &str, since: Instant) -> Duration {
    for d in ["dev", "proc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("/dev, /proc");
    }
    let script = r#"mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#;
    let mut child = Command::new("unshare")
        .args(["--mount", "--pid", "--uts", "--fork", "sh", "-c", script])
        .arg(rootfs)
        .args(command)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let at = super::wait_for_line(child.stdout.take().expect("stdout"), ready, since);
    let status = child.wait().expect("wait");
    assert!(status.success(), "the workload failed in the full-pull rootfs: {status}");
    at
}
