//! Pt 8 of the registry work: one full pull of a real image from a real
//! registry, three ways, in one run against one registry (Debian's
//! docker-registry on loopback, TLS, htpasswd; the image pushed with
//! skopeo):
//!
//! - `strata pull` into an empty store (no node): every layer blob
//!   streamed once through the import, durable when it returns;
//! - containerd's own pull and unpack: `ctr image pull` against a
//!   containerd 1.6 (Debian's) started for the run with its own root,
//!   overlayfs snapshotter;
//! - `skopeo copy` to a directory, then `tar -xzf` of each layer blob.
//!
//! Each run starts from nothing (a new store, a new containerd root, a new
//! directory); the registry's files are in the page cache after the first
//! run for all three alike. Reported: medians of wall time, and peak RSS
//! (the `strata` process; containerd's daemon, whose own `VmHWM` is read
//! before it stops, plus `ctr`; skopeo).
//!
//! cargo bench --profile release --bench pull -- [--image python] [--runs 3] [--out benches/results]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{measure, median, mib, scratch, strata};
use serde_json::json;
use strata_sample::registry::{TestRegistry, PASSWORD, USER};

/// A containerd of its own: root, state and sockets under `dir`, the CRI
/// plugin off; killed (and its root removed) when dropped.
struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n[debug]\n  address = {debug:?}\n",
            root = dir.join("root"),
            state = dir.join("state"),
            sock = socket,
            ttrpc = dir.join("ttrpc.sock"),
            debug = dir.join("debug.sock"),
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("log"))
            .spawn()
            .expect("containerd (deploy/setup bench installs it)");
        let started = Instant::now();
        let c = Self { child, dir: dir.to_owned(), socket };
        while !c.ctr().arg("version").output().is_ok_and(|o| o.status.success()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not start: see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address").arg(&self.socket).args(["--namespace", "bench"]);
        ctr
    }

    /// The daemon's peak resident set so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
struct Runs {
    secs: Vec<f64>,
    rss: Vec<f64>,
}

impl Runs {
    fn push(&mut self, secs: f64, rss: u64) {
        self.secs.push(secs);
        self.rss.push(rss as f64);
    }
    fn json(&self) -> serde_json::Value {
        json!({ "seconds": self.secs, "peak_rss": self.rss,
                "median_seconds": median(self.secs.clone()), "median_peak_rss": median(self.rss.clone()) })
    }
}

fn main() {
    let runs = common::arg("--runs", 3) as usize;
    let name = std::env::args().skip_while(|a| a != "--image").nth(1).unwrap_or_else(|| "python".into());
    let out_dir =
        std::env::args().skip_while(|a| a != "--out").nth(1).unwrap_or_else(|| "benches/results".into());
    let image = common::images::image(&name);
    let root = scratch("pull");
    let registry = TestRegistry::start();
    registry.push(&image.archive, &format!("bench/{name}:1"));
    let reference = format!("{}/bench/{name}:1", registry.host);
    let creds = format!("{USER}:{PASSWORD}");
    let certs = registry.ca_file().parent().expect("certs dir").to_owned();

    // containerd takes a `localhost` registry for plain HTTP unless its
    // hosts file says otherwise.
    let hosts = root.join("containerd-hosts");
    std::fs::create_dir_all(hosts.join(&registry.host)).expect("hosts dir");
    std::fs::write(
        hosts.join(&registry.host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca:?}\n",
            host = registry.host,
            ca = registry.ca_file(),
        ),
    )
    .expect("hosts.toml");
    let (mut strata_runs, mut ctr_runs, mut skopeo_runs) =
        (Runs::default(), Runs::default(), Runs::default());
    let mut blob_bytes = 0;
    for run in 0..runs {
        // Strata: a new store, no node.
        let data = root.join(format!("strata-{run}"));
        registry.write_settings(&data);
        let before: u64 = registry.blob_downloads().iter().map(|(_, n)| n).sum();
        let m = measure(strata(&data).args(["--json", "pull", &reference]).stdout(Stdio::null()));
        blob_bytes = registry.blob_downloads().iter().map(|(_, n)| n).sum::<u64>() - before;
        strata_runs.push(m.wall.as_secs_f64(), m.max_rss);
        let _ = std::fs::remove_dir_all(&data);

        // containerd: pull and unpack into overlayfs snapshots.
        let containerd = Containerd::start(&root.join(format!("containerd-{run}")));
        let m = measure(
            containerd
                .ctr()
                .args(["image", "pull", "--user", &creds, "--hosts-dir"])
                .arg(&hosts)
                .arg(&reference)
                .stdout(Stdio::null()),
        );
        ctr_runs.push(m.wall.as_secs_f64(), containerd.peak_rss() + m.max_rss);
        drop(containerd);

        // skopeo copy to a directory, then tar -x of each layer.
        let dir = root.join(format!("skopeo-{run}"));
        let copied = dir.join("image");
        std::fs::create_dir_all(&dir).expect("skopeo dir");
        let copy = measure(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-creds", &creds, "--src-cert-dir"])
                .arg(&certs)
                .arg(format!("docker://{reference}"))
                .arg(format!("dir:{}", copied.display())),
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(copied.join("manifest.json")).expect("manifest"))
                .expect("json");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        let script: String = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| {
                let hex = l["digest"].as_str().expect("digest").trim_start_matches("sha256:");
                format!("tar -xzf {} -C {} && ", copied.join(hex).display(), rootfs.display())
            })
            .collect();
        let untar = measure(Command::new("sh").arg("-c").arg(format!("{script}true")));
        skopeo_runs.push((copy.wall + untar.wall).as_secs_f64(), copy.max_rss.max(untar.max_rss));
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "run {run}: strata {:.2} s, ctr {:.2} s, skopeo + tar {:.2} s",
            strata_runs.secs[run], ctr_runs.secs[run], skopeo_runs.secs[run]
        );
    }

    let (s, c, k) =
        (median(strata_runs.secs.clone()), median(ctr_runs.secs.clone()), median(skopeo_runs.secs.clone()));
    let rss = |r: &Runs| mib(median(r.rss.clone()) as u64);
    println!(
        "| {name} ({:.1} MiB of blobs) | wall (median of {runs}) | ÷ containerd | peak RSS |",
        mib(blob_bytes)
    );
    println!("|---|---|---|---|");
    println!("| `strata pull` (durable) | {s:.2} s | **{:.2}** | {:.0} MiB |", s / c, rss(&strata_runs));
    println!(
        "| `ctr image pull` (containerd 1.6, overlayfs) | {c:.2} s | 1.00 | {:.0} MiB |",
        rss(&ctr_runs)
    );
    println!("| `skopeo copy` + `tar -xzf` | {k:.2} s | {:.2} | {:.0} MiB |", k / c, rss(&skopeo_runs));
    let result = json!({
        "image": name, "blob_bytes": blob_bytes, "runs": runs,
        "strata": strata_runs.json(), "containerd": ctr_runs.json(), "skopeo_tar": skopeo_runs.json(),
        "strata_over_containerd": s / c,
    });
    std::fs::create_dir_all(&out_dir).expect("out dir");
    std::fs::write(Path::new(&out_dir).join("pull.json"), result.to_string()).expect("results");
}
