//! P3: N nodes start one image at once. Every host — the origin and N
//! nodes — is a network namespace on one bridge, its link capped both ways
//! by `tc tbf`. The origin imported the image and serves it as a Strata
//! node and as a blob server (zstd-compressed layers).
//!
//! - Strata: N fresh nodes join through the origin, then all run the
//!   workload at the same moment (`strata run`, lazily, through their node).
//!   The image was started once before (not measured), so its startup
//!   profile exists and comes with its metadata.
//! - Baseline, same run: every node pulls the whole image from the origin
//!   (download, unpack, overlayfs, start: as in the coldstart bench).
//!
//! Reported per N: the slowest node's time to `ready`, t(N)/t(1), and the
//! origin's egress ÷ the working set (the chunk bytes one node fetches
//! alone, N = 1).
//!
//! cargo bench --profile release --bench fanout -- [--nodes 1,2,4,8,16] [--image python]
//!     [--mbit 100] [--out benches/results]
//!
//! Under `cargo test` (no `--bench`): busybox, N = 1 and 2, results in a
//! scratch directory.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::cluster::{certs, ok, start_node, BenchNode, NodeSpec};
use common::fullpull::{self, BlobServer};
use common::images::{self, BenchImage, READY};
use common::netns::Switch;
use common::{mib, strata};
use serde_json::json;

struct Round {
    n: usize,
    /// Each node's time to `ready`.
    strata: Vec<Duration>,
    strata_origin_bytes: f64,
    /// Chunk bytes the nodes fetched, all sources.
    strata_fetched_bytes: f64,
    /// Each node's prefetch of the startup profile, first fetch to last:
    /// the data's arrival, apart from the workload's CPU time.
    prefetch: Vec<f64>,
    /// How busy the machine's cores were from the start to the last `ready`.
    strata_cpu: f64,
    baseline: Vec<Duration>,
    baseline_cpu: f64,
    baseline_origin_bytes: f64,
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn slowest(times: &[Duration]) -> f64 {
    times.iter().max().copied().unwrap_or_default().as_secs_f64()
}

/// N nodes join through the origin, then all start `image` at once.
fn strata_round(
    switch: &Switch,
    hosts: &[(usize, String)],
    origin: &BenchNode,
    certs: &Path,
    root: &Path,
    image: &BenchImage,
    record: bool,
) -> (Vec<Duration>, f64, Vec<f64>, f64) {
    let nodes: Vec<BenchNode> = hosts
        .iter()
        .enumerate()
        .map(|(i, (host, ip))| {
            start_node(NodeSpec {
                data: &root.join(format!("node-{i}")),
                name: &format!("node-{i}"),
                certs,
                listen: format!("{ip}:7420"),
                seed: Some(&origin.addr),
                netns: Some(&switch.hosts[*host]),
            })
        })
        .collect();
    for node in &nodes {
        node.wait_peers(nodes.len());
    }
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let cpu = common::CpuTicks::now();
    let threads: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (data, barrier, image) = (node.data.clone(), barrier.clone(), image.clone());
            std::thread::spawn(move || {
                barrier.wait();
                images::run_until_ready(&data, &image, None, record)
            })
        })
        .collect();
    let times = threads.into_iter().map(|t| t.join().expect("node thread")).collect();
    let cpu = cpu.busy_since();
    if record {
        // The node hands the profile to the origin in the background.
        origin.wait_metric("strata_profiles_kept_total", 1.0);
    }
    let fetched = nodes.iter().map(|n| n.metric("strata_chunk_bytes_fetched_total")).sum();
    let prefetch = nodes.iter().map(|n| n.metric("strata_prefetch_seconds_total")).collect();
    (times, fetched, prefetch, cpu)
}

/// Every node pulls the whole image from the origin at once.
fn baseline_round(
    switch: &Switch,
    hosts: &[(usize, String)],
    server: &BlobServer,
    layers: usize,
    root: &Path,
    image: &BenchImage,
) -> (Vec<Duration>, u64, f64) {
    let barrier = Arc::new(Barrier::new(hosts.len()));
    let cpu = common::CpuTicks::now();
    let threads: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, (host, _))| {
            let netns = switch.hosts[*host].name.clone();
            let (dir, barrier, addr, command) =
                (root.join(format!("pull-{i}")), barrier.clone(), server.addr, image.command.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let times = fullpull::start(&netns, addr, layers, &dir, &command, READY);
                let _ = std::fs::remove_dir_all(&dir);
                (times.ready, times.bytes_downloaded)
            })
        })
        .collect();
    let results: Vec<(Duration, u64)> = threads.into_iter().map(|t| t.join().expect("pull thread")).collect();
    let cpu = cpu.busy_since();
    (results.iter().map(|r| r.0).collect(), results.iter().map(|r| r.1).sum(), cpu)
}

fn main() {
    let bench = common::is_bench();
    let counts: Vec<usize> = common::list_arg("--nodes", if bench { &[1, 2, 4, 8, 16] } else { &[1, 2] });
    let image_name = std::env::args().skip_while(|a| a != "--image").nth(1).unwrap_or_else(|| {
        if bench {
            "python".into()
        } else {
            "busybox".into()
        }
    });
    let mbit = common::arg("--mbit", 100);
    let root = common::scratch("fanout");
    let out = common::results_dir(&root);
    eprintln!("scratch dir {} (node logs: */*.log)", root.display());

    let image = images::image(&image_name);
    let max = *counts.iter().max().expect("--nodes");
    let mut switch = Switch::new("stb-p3");
    let (origin_host, origin_ip) = switch.add_host(mbit);
    let hosts: Vec<(usize, String)> = (0..max).map(|_| switch.add_host(mbit)).collect();
    let names: Vec<String> =
        std::iter::once("origin".to_owned()).chain((0..max).map(|i| format!("node-{i}"))).collect();
    let certs = certs(&root, &names);
    let origin_data = root.join("origin");
    ok(strata(&origin_data).arg("import").arg(&image.archive));
    let layers = fullpull::compressed_layers(&image.archive);
    let server = BlobServer::start(&switch.hosts[origin_host].name, &origin_ip, layers.clone());

    let start_origin = || {
        start_node(NodeSpec {
            data: &origin_data,
            name: "origin",
            certs: &certs,
            listen: format!("{origin_ip}:7420"),
            seed: None,
            netns: Some(&switch.hosts[origin_host]),
        })
    };
    // The image has been started once before: its startup profile exists.
    eprintln!("recording the startup profile");
    let origin = start_origin();
    strata_round(&switch, &hosts[..1], &origin, &certs, &root.join("record"), &image, true);
    drop(origin);
    let _ = std::fs::remove_dir_all(root.join("record"));

    let mut rounds = Vec::new();
    for &n in &counts {
        let round_dir = root.join(format!("n{n}"));
        eprintln!("N = {n}: Strata");
        let origin = start_origin();
        let (times, fetched, prefetch, strata_cpu) =
            strata_round(&switch, &hosts[..n], &origin, &certs, &round_dir, &image, false);
        let origin_bytes = origin.metric("strata_chunk_bytes_served_total");
        drop(origin);
        eprintln!("N = {n}: full pull from the origin");
        let (baseline, baseline_bytes, baseline_cpu) =
            baseline_round(&switch, &hosts[..n], &server, layers.len(), &round_dir, &image);
        let _ = std::fs::remove_dir_all(&round_dir);
        let round = Round {
            n,
            strata: times,
            strata_origin_bytes: origin_bytes,
            strata_fetched_bytes: fetched,
            prefetch,
            strata_cpu,
            baseline,
            baseline_cpu,
            baseline_origin_bytes: baseline_bytes as f64,
        };
        eprintln!(
            "  slowest: Strata {:.2} s, full pull {:.2} s; origin egress {:.1} MiB vs {:.1} MiB",
            slowest(&round.strata),
            slowest(&round.baseline),
            round.strata_origin_bytes / (1 << 20) as f64,
            round.baseline_origin_bytes / (1 << 20) as f64,
        );
        rounds.push(round);
    }
    drop(server);
    report(&rounds, &image_name, mbit, &out);
    if !bench {
        for r in &rounds {
            assert!(r.strata_origin_bytes > 0.0, "the origin served nothing");
            assert!(
                r.strata_fetched_bytes >= r.strata_origin_bytes * 0.99,
                "nodes fetched less than the origin sent"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn report(rounds: &[Round], image: &str, mbit: u64, out: &Path) {
    // The working set: what one node fetches alone.
    let working_set = rounds.iter().find(|r| r.n == 1).map_or(0.0, |r| r.strata_fetched_bytes);
    let t1 = rounds.iter().find(|r| r.n == 1).map(|r| slowest(&r.strata));
    let b1 = rounds.iter().find(|r| r.n == 1).map(|r| slowest(&r.baseline));
    println!(
        "\nP3 fan-out: {image}, every host capped at {mbit} Mbit/s each way; working set {:.1} MiB; {}; {}\n",
        mib(working_set as u64),
        common::machine(),
        common::today()
    );
    println!("| N | Strata: slowest ready (s) | t(N)/t(1) | slowest prefetch (s) | its ÷ N = 1 | origin egress ÷ working set | CPU busy | full pull: slowest ready (s) | t(N)/t(1) | origin egress ÷ working set | CPU busy |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let p1 = rounds.iter().find(|r| r.n == 1).map(|r| max(&r.prefetch));
    let mut rows = Vec::new();
    for r in rounds {
        let (t, b) = (slowest(&r.strata), slowest(&r.baseline));
        let ws = working_set.max(1.0);
        let p = max(&r.prefetch);
        println!(
            "| {} | {t:.2} | {:.2} | {p:.2} | {:.2} | {:.2} | {:.0}% | {b:.2} | {:.2} | {:.2} | {:.0}% |",
            r.n,
            t / t1.unwrap_or(t),
            p / p1.unwrap_or(p).max(1e-3),
            r.strata_origin_bytes / ws,
            100.0 * r.strata_cpu,
            b / b1.unwrap_or(b),
            r.baseline_origin_bytes / ws,
            100.0 * r.baseline_cpu,
        );
        rows.push(json!({
            "n": r.n,
            "strata_ready_s": r.strata.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "strata_slowest_s": t, "strata_origin_bytes": r.strata_origin_bytes,
            "strata_fetched_bytes": r.strata_fetched_bytes, "strata_prefetch_s": r.prefetch,
            "strata_cpu_busy": r.strata_cpu, "baseline_cpu_busy": r.baseline_cpu,
            "baseline_ready_s": r.baseline.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "baseline_slowest_s": b, "baseline_origin_bytes": r.baseline_origin_bytes,
        }));
    }
    let results = json!({
        "date": common::today(), "machine": common::machine(), "image": image, "mbit": mbit,
        "working_set_bytes": working_set, "rounds": rows,
    });
    std::fs::write(out.join("fanout.json"), serde_json::to_vec_pretty(&results).expect("json"))
        .expect("results");
    let points = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(|r| (r.n as f64, f(r))).collect::<Vec<_>>();
    let ws = working_set.max(1.0);
    use common::plot::{Chart, Series};
    common::plot::save(
        &out.join("fanout.png"),
        &[
            Chart {
                title: format!("{image}: slowest node to 'ready'"),
                x_label: "nodes starting at once (N)".into(),
                y_label: "seconds".into(),
                series: vec![
                    Series { label: "Strata (lazy, P2P)".into(), points: points(&|r| slowest(&r.strata)) },
                    Series {
                        label: "Strata, profile prefetched".into(),
                        points: points(&|r| max(&r.prefetch)),
                    },
                    Series {
                        label: "full pull from origin".into(),
                        points: points(&|r| slowest(&r.baseline)),
                    },
                ],
            },
            Chart {
                title: "origin egress ÷ working set".into(),
                x_label: "nodes starting at once (N)".into(),
                y_label: "ratio".into(),
                series: vec![
                    Series { label: "Strata".into(), points: points(&|r| r.strata_origin_bytes / ws) },
                    Series {
                        label: "full pull from origin".into(),
                        points: points(&|r| r.baseline_origin_bytes / ws),
                    },
                ],
            },
        ],
    );
    eprintln!("results: {}", out.display());
}
