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
        Self::start_with(snapshotters, cri, &[], "")
    }

    /// [`Self::start`], its config also importing the config files
    /// `imports` (containerd's top-level `imports`: the way an operator adds
    /// a drop-in such as `deploy/containerd/strata.toml`) and ending with
    /// `extra` (TOML tables, as an operator's own config.toml would hold).
    pub fn start_with(snapshotters: &[(&str, &Path)], cri: bool, imports: &[&Path], extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("containerd-").tempdir().expect("tempdir");
        let d = dir.path().display();
        let address = dir.path().join("containerd.sock");
        let disabled = if cri { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" };
        let imports: Vec<String> = imports.iter().map(|p| p.display().to_string()).collect();
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\nimports = {imports:?}\n{disabled}\n[grpc]\n  address = \"{d}/containerd.sock\"\n\n\
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
        if cri && !snapshotters.is_empty() {
            let snapshotter = snapshotters.first().map_or("overlayfs", |(name, _)| name);
            config.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = {snapshotter:?}\n    \
                 disable_snapshot_annotations = false\n\n"
            ));
        }
        config.push_str(extra);
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("containerd config");
        let dump =
            Command::new("containerd").arg("--config").arg(&config_path).args(["config", "dump"]).output();
        if let Ok(dump) = dump {
            let _ = std::fs::write(dir.path().join("config-dump.toml"), dump.stdout);
        }
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

    /// Its configuration as containerd reads it, imports merged
    /// (`containerd config dump`).
    pub fn config_dump(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("config-dump.toml")).unwrap_or_default()
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

/// An image's parts as containerd keeps them ([`TestContainerd::image_layers`]).
#[derive(Debug)]
pub struct ImageLayers {
    /// The manifest's digest.
    pub manifest: String,
    /// The config's digest.
    pub config: String,
    /// The layers' blob digests, base first.
    pub layers: Vec<String>,
    /// The layers' ChainIDs, base first.
    pub chain_ids: Vec<String>,
}

/// What [`TestContainerd::pull_remote`] did.
#[derive(Debug)]
pub struct RemotePull {
    /// The image's manifest digest (for its platform).
    pub manifest: String,
    /// Its layers' blob digests, base first.
    pub layers: Vec<String>,
    /// The ChainID of the whole stack.
    pub top_chain: String,
    /// Layers the snapshotter answered ALREADY_EXISTS (remote snapshots).
    pub remote: usize,
}

impl TestContainerd {
    /// An image made runnable on `snapshotter` the way containerd's client
    /// unpacker does it for a remote snapshotter (CRI, nerdctl): only the
    /// image's `manifest` and `config` (bytes as its registry serves them)
    /// go into containerd's content store, with the image record
    /// `reference` (`ctr images import --no-unpack` of an OCI layout
    /// holding just those two blobs: no layer blob), then, under a lease,
    /// each layer's snapshot is prepared with the
    /// `containerd.io/snapshot.ref` label
    /// ([`strata_snapshotter::client::prepare_remote_chain`]) and, when
    /// `cri`, CRI's labels (`cri.image-ref`, `cri.manifest-digest`,
    /// `cri.layer-digest`, `cri.image-layers`); then the config is labelled
    /// `containerd.io/gc.ref.snapshot.<snapshotter>` = the top ChainID, so
    /// the chain outlives the lease. Panics on any failure.
    pub fn pull_remote(
        &self,
        reference: &str,
        snapshotter: &str,
        (manifest, config): (&[u8], &[u8]),
        cri: bool,
    ) -> RemotePull {
        self.import_metadata(reference, manifest, config);
        let ImageLayers { manifest: manifest_digest, config: config_digest, layers, chain_ids } =
            self.image_layers(reference);
        let top_chain = chain_ids.last().expect("a layer").clone();

        let lease = self.ctr_ok(&["leases", "create"]).trim().to_owned();
        let labels = |i: usize| {
            let mut labels = std::collections::HashMap::new();
            if cri {
                let prefix = "containerd.io/snapshot/cri.";
                labels.insert(format!("{prefix}image-ref"), reference.to_owned());
                labels.insert(format!("{prefix}manifest-digest"), manifest_digest.clone());
                labels.insert(format!("{prefix}layer-digest"), layers[i].clone());
                labels.insert(format!("{prefix}image-layers"), layers[i..].join(","));
            }
            labels
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let remote = runtime
            .block_on(async {
                let mut client =
                    strata_snapshotter::client::connect(&self.address).await.expect("containerd socket");
                strata_snapshotter::client::prepare_remote_chain(
                    &mut client,
                    snapshotter,
                    &self.namespace,
                    &lease,
                    &chain_ids,
                    &labels,
                )
                .await
            })
            .unwrap_or_else(|e| {
                panic!("remote snapshots of {reference}: {e}\ncontainerd's log:\n{}", self.log())
            });
        self.ctr_ok(&[
            "content",
            "label",
            &config_digest,
            &format!("containerd.io/gc.ref.snapshot.{snapshotter}={top_chain}"),
        ]);
        self.ctr_ok(&["leases", "delete", &lease]);
        RemotePull { manifest: manifest_digest, layers, top_chain, remote }
    }

    /// The image `reference` as containerd keeps it (this machine's
    /// platform of an index): its manifest, config, layer blobs and layer
    /// ChainIDs (from the config's diff_ids).
    pub fn image_layers(&self, reference: &str) -> ImageLayers {
        let images = self.ctr_ok(&["images", "ls"]);
        let target = images
            .lines()
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&reference)).then(|| cols.get(2).map(|d| d.to_string())).flatten()
            })
            .unwrap_or_else(|| panic!("{reference} not in ctr images ls:\n{images}"));
        let mut manifest_digest = target;
        let mut manifest = self.content_json(&manifest_digest);
        if let Some(list) = manifest.get("manifests").and_then(|m| m.as_array()) {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let chosen = list
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .unwrap_or_else(|| panic!("no linux/{arch} manifest in {manifest}"));
            manifest_digest = chosen["digest"].as_str().expect("digest").to_owned();
            manifest = self.content_json(&manifest_digest);
        }
        let config_digest = manifest["config"]["digest"].as_str().expect("config digest").to_owned();
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["digest"].as_str().expect("layer digest").to_owned())
            .collect();
        let config = self.content_json(&config_digest);
        let diff_ids: Vec<strata_types::OciDigest> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .iter()
            .map(|d| d.as_str().expect("diff_id").parse().expect("sha256 diff_id"))
            .collect();
        let chain_ids: Vec<String> =
            strata_types::OciDigest::chain_ids(&diff_ids).iter().map(|c| c.to_string()).collect();

        ImageLayers { manifest: manifest_digest, config: config_digest, layers, chain_ids }
    }

    /// `ctr images import --no-unpack` of an OCI layout tar holding only
    /// `manifest` and `config`, the image named `reference`.
    fn import_metadata(&self, reference: &str, manifest: &[u8], config: &[u8]) {
        let parsed: serde_json::Value = serde_json::from_slice(manifest).expect("manifest JSON");
        let media_type = parsed["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let digest = strata_types::OciDigest::sha256_of(manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": manifest.len(),
                "annotations": { "io.containerd.image.name": reference },
            }],
        });
        let path = self.dir.path().join(format!("metadata-{}.tar", digest.hex()));
        let mut tar = tar::Builder::new(std::fs::File::create(&path).expect("tar"));
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, data).expect("tar member");
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &serde_json::to_vec(&index).expect("json"));
        add(&format!("blobs/sha256/{}", digest.hex()), manifest);
        add(&format!("blobs/sha256/{}", strata_types::OciDigest::sha256_of(config).hex()), config);
        tar.into_inner().expect("tar");
        self.ctr_ok(&["images", "import", "--no-unpack", path.to_str().expect("path")]);
    }

    /// The blob `digest` of containerd's content store, as JSON.
    fn content_json(&self, digest: &str) -> serde_json::Value {
        let out = self.ctr_output(&["content", "get", digest]);
        assert!(out.status.success(), "ctr content get {digest}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"))
    }

    /// The digests in containerd's content store (`ctr content ls`).
    pub fn content_digests(&self) -> Vec<String> {
        self.ctr_ok(&["content", "ls", "-q"]).lines().map(str::to_owned).collect()
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
