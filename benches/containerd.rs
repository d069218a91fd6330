//! Issue 16, pt 7: a container's cold start with a real runtime — `ctr run`
//! of an image through containerd 1.6 — on Strata's snapshotter (remote
//! snapshots, read lazily from a peer) vs containerd's own overlayfs
//! snapshotter after a full pull, over one shaped link, in the same run.
//!
//! Two network namespaces joined by a shaped, delayed point-to-point link
//! (as in the coldstart bench). The origin side holds the image twice: in a
//! registry (Debian's docker-registry, TLS, htpasswd; pushed with skopeo)
//! and in a Strata node that imported it. The client side runs a containerd
//! of its own (root, state and socket per run) and, for Strata, a fresh
//! node serving the snapshotter:
//! - Strata: the client unpacks as CRI does (manifest and config into
//!   containerd's content store, each layer prepared with CRI's labels:
//!   remote snapshots the node finds by ChainID at the origin), then `ctr
//!   run --snapshotter strata` until the workload prints `ready`;
//! - overlayfs: `ctr image pull` from the registry across the link (every
//!   layer downloaded and unpacked), then `ctr run` until `ready`.
//!
//! Both timed from the first request to `ready`. Strata twice, as in the
//! coldstart bench: first starts (no startup profile anywhere yet; they
//! record none), then, after one start recorded the profile (the client
//! offers it to the origin when the container's chain mount ends), starts
//! that get it with the metadata and prefetch it. Reported: each, their
//! ratios, and the bytes that crossed the link (registry blob bytes
//! served; chunk and metadata bytes the client node fetched).
//!
//! cargo bench --profile release --bench containerd -- [--images python]
//!     [--rtt-ms 0,50] [--mbit 100] [--runs 1] [--out benches/results]
//!
//! Under `cargo test` (no `--bench`) it is a smoke run: busybox, RTT 0,
//! results in a scratch directory.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::{certs, ok, start_client, start_node, BenchNode, NodeSpec};
use common::images::{self, BenchImage, READY};
use common::netns::{in_netns, DelayLink};
use common::{mib, strata};
use serde_json::json;
use strata_sample::containerd::TestContainerd;
use strata_sample::registry::{TestRegistry, PASSWORD, USER};

struct Row {
    image: String,
    rtt_ms: u64,
    /// The first start anywhere: no startup profile exists yet.
    first: Start,
    /// A later start: the profile an earlier one recorded came with the
    /// metadata and was prefetched.
    profiled: Start,
    /// containerd's overlayfs snapshotter after `ctr image pull`.
    full: Start,
}

/// One start: time to `ready`, and what crossed the link for it.
struct Start {
    ready: Duration,
    /// Layer blob bytes the registry served.
    registry_bytes: u64,
    /// Chunk and metadata bytes the client node fetched (Strata only).
    strata_bytes: f64,
}

/// `ctr run` of the workload on `containerd`, timed from `since` to the
/// line `ready`; the container is removed after.
fn run_until_ready(
    containerd: &TestContainerd,
    snapshotter: &str,
    reference: &str,
    image: &BenchImage,
    since: Instant,
) -> Duration {
    let mut child = containerd
        .ctr()
        .args(["run", "--rm", "--snapshotter", snapshotter, reference, "bench"])
        .args(&image.command)
        .stdout(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let ready = common::wait_for_line(child.stdout.take().expect("stdout"), READY, since);
    let status = child.wait().expect("ctr run");
    assert!(status.success(), "ctr run {reference} on {snapshotter}: {status}\n{}", containerd.log());
    ready
}

/// containerd's hosts configuration for `registry` across the link: HTTPS
/// to the origin's address, the certificate (made for localhost) not
/// checked by name.
fn hosts_dir(dir: &Path, host: &str) -> std::path::PathBuf {
    let hosts = dir.join("containerd-hosts");
    std::fs::create_dir_all(hosts.join(host)).expect("hosts dir");
    std::fs::write(
        hosts.join(host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        ),
    )
    .expect("hosts.toml");
    hosts
}

fn registry_bytes(registry: &TestRegistry) -> u64 {
    registry.blob_downloads().iter().map(|(_, n)| n).sum()
}

/// Strata: a fresh client node and containerd; remote snapshots, `ctr run`.
#[allow(clippy::too_many_arguments)]
fn strata_start(
    link: &DelayLink,
    certs: &Path,
    origin: &BenchNode,
    registry: &TestRegistry,
    metadata: (&[u8], &[u8]),
    reference: &str,
    image: &BenchImage,
    dir: &Path,
    profile_window_secs: f64,
) -> Start {
    let data = dir.join("client");
    std::fs::create_dir_all(&data).expect("client dir");
    let socket = dir.join("snapshotter.sock");
    std::fs::write(
        data.join("strata.toml"),
        format!(
            "[snapshotter]\nsocket = {:?}\n[mount]\nprofile_window_secs = {profile_window_secs:?}\n",
            socket.display().to_string()
        ),
    )
    .expect("client settings");
    let client = start_client(link, certs, origin, &data);
    let containerd = in_netns(&link.b.name, || TestContainerd::start(&[("strata", &socket)], false));
    let before = registry_bytes(registry);
    let started = Instant::now();
    let pulled = containerd.pull_remote(reference, "strata", metadata, true);
    assert_eq!(pulled.remote, pulled.layers.len(), "every layer a remote snapshot");
    let ready = run_until_ready(&containerd, "strata", reference, image, started);
    let start = Start {
        ready,
        registry_bytes: registry_bytes(registry) - before,
        strata_bytes: client.metric("strata_chunk_bytes_fetched_total")
            + client.metric("strata_image_metadata_bytes_fetched_total"),
    };
    drop(containerd);
    drop(client);
    // The chain mounts the snapshotter made outlive the node by design.
    unmount_under(&data);
    start
}

/// Lazily unmounts every mount under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<&str> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p).starts_with(dir)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for mountpoint in found {
        let _ = std::process::Command::new("umount").arg("-l").arg(mountpoint).status();
    }
}

/// overlayfs: a fresh containerd pulls the image whole, then `ctr run`.
fn overlayfs_start(
    link: &DelayLink,
    registry: &TestRegistry,
    reference: &str,
    image: &BenchImage,
    dir: &Path,
) -> Start {
    let hosts = hosts_dir(dir, reference.split('/').next().expect("host"));
    let containerd = in_netns(&link.b.name, || TestContainerd::start(&[], false));
    let before = registry_bytes(registry);
    let started = Instant::now();
    let user = format!("{USER}:{PASSWORD}");
    // ctr fetches the blobs itself (containerd 1.6 pulls client-side): it
    // runs on the client side of the link too.
    let hosts = hosts.to_str().expect("path");
    in_netns(&link.b.name, || {
        containerd.ctr_ok(&["image", "pull", "--user", &user, "--hosts-dir", hosts, reference])
    });
    let ready = run_until_ready(&containerd, "overlayfs", reference, image, started);
    Start { ready, registry_bytes: registry_bytes(registry) - before, strata_bytes: 0.0 }
}

fn main() {
    let bench = common::is_bench();
    let images: Vec<String> =
        common::list_arg("--images", &if bench { vec!["python".into()] } else { vec!["busybox".into()] });
    let rtts: Vec<u64> = common::list_arg("--rtt-ms", if bench { &[0, 50] } else { &[0] });
    let mbit = common::arg("--mbit", 100);
    let runs = common::arg("--runs", 1) as usize;
    let root = common::scratch("containerd");
    let out = common::results_dir(&root);
    eprintln!("scratch dir {} (node and containerd logs under it)", root.display());

    let link = DelayLink::new("stb-ctr", mbit);
    let certs = certs(&root, &["origin".into(), "client".into()]);
    let registry = in_netns(&link.a.name, || TestRegistry::start_on("0.0.0.0"));
    let mut rows = Vec::new();
    for name in &images {
        let image = images::image(name);
        let repo = format!("bench/{name}:1");
        let metadata = in_netns(&link.a.name, || {
            registry.push(&image.archive, &repo);
            registry.manifest_and_config(&repo)
        });
        let reference = format!("{}:{}/{repo}", link.a_ip, registry.port);
        let origin_data = root.join(format!("origin-{name}"));
        ok(strata(&origin_data).arg("import").arg(&image.archive));
        let origin = start_node(NodeSpec {
            data: &origin_data,
            name: "origin",
            certs: &certs,
            listen: format!("{}:7420", link.a_ip),
            seed: None,
            netns: Some(&link.a),
        });
        let dir = |what: &str, rtt_ms: u64, run: usize| {
            let dir = root.join(format!("{name}-{what}-{rtt_ms}ms-{run}"));
            std::fs::create_dir_all(&dir).expect("run dir");
            dir
        };
        let strata_run = |dir: &Path, window: f64| {
            let start = strata_start(
                &link,
                &certs,
                &origin,
                &registry,
                (&metadata.0, &metadata.1),
                &reference,
                &image,
                dir,
                window,
            );
            let _ = std::fs::remove_dir_all(dir);
            start
        };
        // First starts, before any startup profile exists (they record none).
        let mut first = Vec::new();
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: Strata, first start (no profile)", run + 1);
                first.push(strata_run(&dir("first", rtt_ms, run), 0.0));
            }
        }
        // One start records the profile; the client offers it to the origin
        // when its chain mount ends with the container.
        link.set_rtt(Duration::ZERO);
        eprintln!("{name}: recording the startup profile");
        strata_run(&dir("record", 0, 0), 60.0);
        origin.wait_metric("strata_profiles_kept_total", 1.0);
        let mut first = first.into_iter();
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: Strata with the profile", run + 1);
                let profiled = strata_run(&dir("profiled", rtt_ms, run), 0.0);
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: overlayfs after a full pull", run + 1);
                let full_dir = dir("full", rtt_ms, run);
                let full = overlayfs_start(&link, &registry, &reference, &image, &full_dir);
                let _ = std::fs::remove_dir_all(&full_dir);
                let lazy = first.next().expect("a first start per run");
                eprintln!(
                    "  overlayfs {:.2} s ({:.1} MiB from the registry); Strata first {:.2} s, with profile {:.2} s ({:.1} / {:.1} MiB from the origin node)",
                    full.ready.as_secs_f64(),
                    mib(full.registry_bytes),
                    lazy.ready.as_secs_f64(),
                    profiled.ready.as_secs_f64(),
                    mib(lazy.strata_bytes as u64),
                    mib(profiled.strata_bytes as u64),
                );
                rows.push(Row { image: name.clone(), rtt_ms, first: lazy, profiled, full });
            }
        }
        drop(origin);
        let _ = std::fs::remove_dir_all(&origin_data);
    }

    println!(
        "\n`ctr run` to `ready` with containerd 1.6 + runc, {mbit} Mbit/s link, median of {runs} run(s); {}; {}\n",
        common::machine(),
        common::today()
    );
    println!("| image | RTT (ms) | overlayfs after `ctr image pull` (s) | Strata, first start (s) | overlayfs ÷ first | Strata, with profile (s) | overlayfs ÷ profiled | registry MiB: overlayfs / Strata | MiB Strata fetched from the origin node: first / profiled |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for name in &images {
        for &rtt in &rtts {
            let rs: Vec<&Row> = rows.iter().filter(|r| &r.image == name && r.rtt_ms == rtt).collect();
            let m = |f: &dyn Fn(&Row) -> f64| common::median(rs.iter().map(|r| f(r)).collect());
            let full = m(&|r| r.full.ready.as_secs_f64());
            let first = m(&|r| r.first.ready.as_secs_f64());
            let profiled = m(&|r| r.profiled.ready.as_secs_f64());
            let full_registry = m(&|r| r.full.registry_bytes as f64);
            let strata_registry = m(&|r| (r.first.registry_bytes + r.profiled.registry_bytes) as f64);
            let first_fetched = m(&|r| r.first.strata_bytes);
            let profiled_fetched = m(&|r| r.profiled.strata_bytes);
            println!(
                "| {name} | {rtt} | {full:.2} | {first:.2} | **{:.1}x** | {profiled:.2} | **{:.1}x** | {:.1} / {:.1} | {:.1} / {:.1} |",
                full / first,
                full / profiled,
                full_registry / 1048576.0,
                strata_registry / 1048576.0,
                first_fetched / 1048576.0,
                profiled_fetched / 1048576.0,
            );
            results.push(json!({
                "image": name, "rtt_ms": rtt, "overlayfs_ready_s": full, "strata_first_ready_s": first,
                "strata_profiled_ready_s": profiled, "overlayfs_registry_bytes": full_registry,
                "strata_registry_bytes": strata_registry, "strata_first_fetched_bytes": first_fetched,
                "strata_profiled_fetched_bytes": profiled_fetched,
            }));
        }
    }
    std::fs::write(
        out.join("containerd.json"),
        serde_json::to_vec_pretty(&json!({
            "date": common::today(), "machine": common::machine(), "mbit": mbit, "runs": runs, "rows": results,
        }))
        .expect("json"),
    )
    .expect("results");
    eprintln!("results: {}", out.display());
    if !bench {
        for r in &rows {
            let (name, rtt) = (&r.image, r.rtt_ms);
            for lazy in [&r.first, &r.profiled] {
                assert_eq!(
                    lazy.registry_bytes, 0,
                    "{name} at {rtt} ms: Strata's start took layer blobs from the registry"
                );
                assert!(
                    lazy.strata_bytes > 0.0,
                    "{name} at {rtt} ms: Strata's start fetched nothing from the origin"
                );
            }
            assert!(r.full.registry_bytes > 0, "{name} at {rtt} ms: the full pull moved nothing");
        }
    }
    drop(registry);
    let _ = std::fs::remove_dir_all(&root);
}
