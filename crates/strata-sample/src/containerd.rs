//! A real containerd for tests and benches: Debian's containerd 1.6 with
//! runc, started with its own root, state directory and sockets (never the
//! host's `/run/containerd`), and a config that registers proxy
//! snapshotters (containerd's `[proxy_plugins]`, type "snapshot"). `ctr`
//! drives it. Dropped: containerd stops, the shims it started are killed
//! and anything mounted under its directories is unmounted.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A containerd process; stopped when dropped.
pub struct TestContainerd {
    child: Child,
    dir: tempfile::TempDir,
    /// Its gRPC socket (`ctr --address`).
    pub address: PathBuf,
    /// The namespace `ctr` uses: one per instance, since runc keeps its
    /// state per namespace under the host's /run/containerd/runc.
    pub namespace: String,
}

impl TestContainerd {
    /// Starts containerd with `snapshotters` registered as proxy plugins
    /// (name, socket). The CRI plugin is left out unless `cri` (its
    /// `disable_snapshot_annotations = false`, so CRI pulls send the
    /// remote-snapshot labels, and `snapshotter` = the first proxy).
    /// Garbage collection runs right after a deletion (deletion_threshold
    /// 1), as a busy node's would soon after.
    pub fn start(snapshotters: &[(&str, &Path)], cri: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("containerd-").tempdir().expect("tempdir");
        let d = dir.path().display();
        let address = dir.path().join("containerd.sock");
        let disabled = if cri { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" };
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n{disabled}\n[grpc]\n  address = \"{d}/containerd.sock\"\n\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\n[metrics]\n  address = \"\"\n\n\
             [plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n  schedule_delay = \"0ms\"\n  \
             startup_delay = \"0ms\"\n\n"
        );
        for (name, socket) in snapshotters {
            config.push_str(&format!(
                "[proxy_plugins.{name:?}]\n  type = \"snapshot\"\n  address = {:?}\n\n",
                socket.display().to_string()
            ));
        }
        if cri {
            let snapshotter = snapshotters.first().map_or("overlayfs", |(name, _)| name);
            config.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = {snapshotter:?}\n    \
                 disable_snapshot_annotations = false\n\n"
            ));
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (deploy/setup installs it)");
        let namespace = format!(
            "strata-test-{}",
            dir.path().file_name().map_or_else(String::new, |n| n.to_string_lossy().replace(['.', '_'], "-"))
        );
        let mut containerd = Self { child, dir, address, namespace };
        let started = Instant::now();
        while UnixStream::connect(&containerd.address).is_err() {
            if let Ok(Some(status)) = containerd.child.try_wait() {
                panic!("containerd exited ({status}): {}", containerd.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "containerd never listened: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        containerd
    }

    /// What containerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Its root directory (content store, metadata, its own snapshotters).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A `ctr` command on this containerd, in its namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.address).args(["--namespace", &self.namespace]);
        command
    }

    /// Runs `ctr ARGS`; its output whatever the exit status.
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.ctr().args(args).output().expect("ctr (deploy/setup installs containerd)")
    }

    /// Runs `ctr ARGS`, which must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}\ncontainerd's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Mount points under `dir` in /proc/self/mountinfo, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        // SAFETY: kill with a child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; these are this test's.
        let address = self.address.display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
                if shim && args.contains(&address.as_bytes()) {
                    // SAFETY: kill with a pid read from /proc.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for mount in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
        // runc's state of containers the killed shims left.
        let runc_root = Path::new("/run/containerd/runc").join(&self.namespace);
        if let Ok(entries) = std::fs::read_dir(&runc_root) {
            for entry in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force"])
                    .arg(entry.file_name())
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&runc_root);
    }
}
