//! P1 and P2: a container's cold start through Strata — lazily, from a peer,
//! nothing local — vs the full pull a runtime does (download every layer,
//! unpack, mount, start), over one shaped link, in the same run.
//!
//! Two network namespaces joined by a point-to-point link the bench makes:
//! each direction capped by `tc tbf` and delayed by half the RTT (a relay in
//! this process: this kernel has no netem). The origin side holds the image
//! (a Strata node that imported it, and a blob server with its layers
//! compressed by zstd); the client side starts the workload:
//! - lazy: a fresh node joins, `strata run` pulls the image's metadata and
//!   reads only what the workload touches, through that node;
//! - full pull: every layer downloaded (three at a time), unpacked into its
//!   own directory, mounted with overlayfs, then the workload started.
//!
//! Both are timed from the first byte asked for to the workload printing
//! `ready`. P2 comes from the lazy runs: metadata and chunk bytes the client
//! fetched vs the bytes the workload read (the mount's read trace).
//!
//! cargo bench --profile release --bench coldstart -- [--images python,gcc,busybox]
//!     [--rtt-ms 0,50,150] [--mbit 100] [--runs 1] [--out benches/results]
//!
//! Under `cargo test` (no `--bench`) it is a smoke run: busybox, RTT 0 and
//! 20 ms, results in a scratch directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{certs, ok, start_client, start_node, BenchNode, NodeSpec};
use common::fullpull::{self, BlobServer, FullPullTimes};
use common::images::{self, BenchImage, READY};
use common::netns::DelayLink;
use common::{mib, strata};
use serde_json::{json, Value};

struct LazyRun {
    ready: Duration,
    /// From the start to the node holding the image whole (its background
    /// fetch done).
    whole: Duration,
    /// The same start again on the same node, every chunk it read now
    /// local: the cost of the FUSE mount and the store without the network.
    local: Duration,
    /// Chunks the node fetched during that second start (0 when it was
    /// local as meant).
    local_fetched: f64,
    metadata_bytes: f64,
    chunk_bytes: f64,
    chunks: f64,
    prefetched: f64,
    /// Reads that waited on peers before `ready`, and their waits summed.
    demand_waits: f64,
    demand_wait_s: f64,
    trace: Value,
}

/// A fresh node on the client side starts `image` from the origin. With
/// `record`, its mount records the image's startup profile (the node keeps
/// it and offers it to the origin); otherwise it records none.
fn lazy_start(
    link: &DelayLink,
    certs: &Path,
    origin: &BenchNode,
    dir: &Path,
    image: &BenchImage,
    record: bool,
) -> LazyRun {
    let data = dir.join("client");
    let client = start_client(link, certs, origin, &data);
    let trace_path = dir.join("trace.json");
    let started = std::time::Instant::now();
    let ready = images::run_until_ready(&data, image, Some(&trace_path), record);
    let (metadata_bytes, chunk_bytes, chunks, prefetched) = (
        client.metric("strata_image_metadata_bytes_fetched_total"),
        client.metric("strata_chunk_bytes_fetched_total"),
        client.metric("strata_chunks_fetched_total"),
        client.metric("strata_prefetched_chunks_total"),
    );
    let (demand_waits, demand_wait_s) =
        (client.metric("strata_demand_waits_total"), client.metric("strata_demand_wait_seconds_total"));
    let trace: Value =
        serde_json::from_slice(&std::fs::read(&trace_path).expect("read trace")).expect("read trace JSON");
    if record {
        // The client hands the profile to the origin in the background.
        origin.wait_metric("strata_profiles_kept_total", 1.0);
    }
    // The node goes on to fetch the rest of the image (background fetch):
    // the second start, once it is whole, is local.
    client.wait_whole(&image.reference);
    let whole = started.elapsed();
    let mut run = LazyRun {
        ready,
        whole,
        local: Duration::ZERO,
        local_fetched: 0.0,
        metadata_bytes,
        chunk_bytes,
        chunks,
        prefetched,
        demand_waits,
        demand_wait_s,
        trace,
    };
    let before = client.metric("strata_chunks_fetched_total");
    run.local = images::run_until_ready(&data, image, None, false);
    run.local_fetched = client.metric("strata_chunks_fetched_total") - before;
    drop(client);
    // STRATA_BENCH_KEEP=1 keeps each run's node logs (DIR/client.log).
    if std::env::var_os("STRATA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    run
}

/// `strata pull --all` on a fresh client node: the image whole, nothing
/// else asked of the link (what the first start's bulk fetch can reach).
struct WholePull {
    took: Duration,
    /// Chunk bytes it fetched (stored form).
    chunk_bytes: f64,
    /// Batch requests it made.
    requests: f64,
    /// CPU seconds meanwhile: the client node, the origin node, this
    /// process (the link's relay), and the share of the machine's cores
    /// that were busy.
    client_cpu: f64,
    origin_cpu: f64,
    relay_cpu: f64,
    busy: f64,
}

fn pull_all(link: &DelayLink, certs: &Path, origin: &BenchNode, dir: &Path, image: &BenchImage) -> WholePull {
    let data = dir.join("client");
    let client = start_client(link, certs, origin, &data);
    let (client0, origin0, relay0) =
        (client.cpu_seconds(), origin.cpu_seconds(), common::cpu_seconds(std::process::id()));
    let machine = common::CpuTicks::now();
    let started = std::time::Instant::now();
    ok(strata(&data).args(["pull", "--all"]).arg(&image.reference));
    let took = started.elapsed();
    let run = WholePull {
        took,
        busy: machine.busy_since(),
        client_cpu: client.cpu_seconds() - client0,
        origin_cpu: origin.cpu_seconds() - origin0,
        relay_cpu: common::cpu_seconds(std::process::id()) - relay0,
        chunk_bytes: client.metric("strata_chunk_bytes_fetched_total"),
        requests: client.metric("strata_background_fetch_requests_total"),
    };
    drop(client);
    if std::env::var_os("STRATA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    run
}

struct Row {
    image: &'static str,
    /// The uncompressed archive's size.
    image_bytes: u64,
    rtt_ms: u64,
    /// The first start anywhere: no startup profile exists yet.
    lazy: LazyRun,
    /// A later start: the profile recorded by an earlier one came with the
    /// metadata and was prefetched.
    profiled: LazyRun,
    /// `strata pull --all` from a fresh node.
    whole: WholePull,
    full: FullPullTimes,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    let bench = common::is_bench();
    let images: Vec<String> = common::list_arg(
        "--images",
        &if bench { vec!["python".into(), "gcc".into(), "busybox".into()] } else { vec!["busybox".into()] },
    );
    let rtts: Vec<u64> = common::list_arg("--rtt-ms", if bench { &[0, 50, 150] } else { &[0, 20] });
    let mbit = common::arg("--mbit", 100);
    let runs = common::arg("--runs", 1) as usize;
    let root = common::scratch("coldstart");
    let out = common::results_dir(&root);
    eprintln!("scratch dir {} (node logs: */*.log)", root.display());

    let link = DelayLink::new("stb-p1", mbit);
    let certs = certs(&root, &["origin".into(), "client".into()]);
    let mut rows = Vec::new();
    for name in &images {
        let image = images::image(name);
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
        let image_bytes = std::fs::metadata(&image.archive).expect("archive").len();
        let layers = fullpull::compressed_layers(&image.archive);
        let server = BlobServer::start(&link.a.name, &link.a_ip, layers.clone());
        let dir = |what: &str, rtt_ms: u64, run: usize| root.join(format!("{name}-{what}-{rtt_ms}ms-{run}"));
        // First starts, before any profile exists (these record none).
        let mut first = Vec::new();
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: lazy start, no profile", run + 1);
                first.push(lazy_start(&link, &certs, &origin, &dir("first", rtt_ms, run), &image, false));
            }
        }
        // The image whole by `pull --all`, before any profile exists.
        let mut wholes = Vec::new();
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: strata pull --all", run + 1);
                wholes.push(pull_all(&link, &certs, &origin, &dir("whole", rtt_ms, run), &image));
            }
        }
        let mut wholes = wholes.into_iter();
        // One start records the profile; the origin keeps it.
        link.set_rtt(Duration::ZERO);
        eprintln!("{name}: recording the startup profile");
        lazy_start(&link, &certs, &origin, &dir("record", 0, 0), &image, true);
        let mut first = first.into_iter();
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: lazy start with the profile", run + 1);
                let profiled =
                    lazy_start(&link, &certs, &origin, &dir("profiled", rtt_ms, run), &image, false);
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: full pull", run + 1);
                let full = fullpull::start(
                    &link.b.name,
                    server.addr,
                    layers.len(),
                    &dir("full", rtt_ms, run),
                    &image.command,
                    READY,
                );
                let _ = std::fs::remove_dir_all(dir("full", rtt_ms, run));
                let lazy = first.next().expect("a first start per run");
                let whole = wholes.next().expect("a pull --all per run");
                eprintln!(
                    "  full pull {:.2} s (downloaded {:.2}, unpacked {:.2}); lazy: first start {:.2} s, with profile {:.2} s",
                    secs(full.ready),
                    secs(full.downloaded),
                    secs(full.unpacked),
                    secs(lazy.ready),
                    secs(profiled.ready),
                );
                rows.push(Row { image: image.name, image_bytes, rtt_ms, lazy, profiled, whole, full });
            }
        }
        drop(server);
        drop(origin);
        let _ = std::fs::remove_dir_all(&origin_data);
    }
    report(&rows, &images, &rtts, mbit, runs, &out);
    if !bench {
        smoke_checks(&rows);
    }
    if std::env::var_os("STRATA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn report(rows: &[Row], images: &[String], rtts: &[u64], mbit: u64, runs: usize, out: &Path) {
    let of = |image: &str, rtt: u64| -> Vec<&Row> {
        rows.iter().filter(|r| r.image == image && r.rtt_ms == rtt).collect()
    };
    // Each image and RTT that has runs, in order, with its runs.
    let cells: Vec<(&str, u64, Vec<&Row>)> = images
        .iter()
        .flat_map(|image| rtts.iter().map(move |&rtt| (image.as_str(), rtt)))
        .map(|(image, rtt)| (image, rtt, of(image, rtt)))
        .filter(|(_, _, rs)| !rs.is_empty())
        .collect();
    println!(
        "\nP1 cold start to `ready`, {mbit} Mbit/s link, median of {runs} run(s); {}; {}\n",
        common::machine(),
        common::today()
    );
    println!("| image | RTT (ms) | full pull: downloaded / unpacked / ready (s) | Strata, first start (s) | full ÷ first | first start: image whole (s) | Strata, with profile (s) | full ÷ profiled | physical limit (s) | profiled ÷ limit |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut p1 = Vec::new();
    for (image, rtt, rs) in &cells {
        let m = |f: &dyn Fn(&Row) -> f64| common::median(rs.iter().map(|r| f(r)).collect());
        let full = m(&|r| secs(r.full.ready));
        let downloaded = m(&|r| secs(r.full.downloaded));
        let unpacked = m(&|r| secs(r.full.unpacked));
        let first = m(&|r| secs(r.lazy.ready));
        let whole = m(&|r| secs(r.lazy.whole));
        let profiled = m(&|r| secs(r.profiled.ready));
        // The physical limit of a start with the profile: the bytes it
        // moved before `ready` at the link's rate, plus the workload
        // alone (page cache warm).
        let limit = m(&|r| {
            (r.profiled.metadata_bytes + r.profiled.chunk_bytes) * 8.0 / (mbit as f64 * 1e6)
                + secs(r.full.warm)
        });
        println!(
            "| {image} | {rtt} | {downloaded:.2} / {unpacked:.2} / {full:.2} | {first:.2} | {:.1}x | {whole:.2} | {profiled:.2} | {:.1}x | {limit:.2} | {:.2} |",
            full / first,
            full / profiled,
            profiled / limit,
        );
        p1.push(json!({
            "image": image, "rtt_ms": rtt, "full_ready_s": full, "full_downloaded_s": downloaded,
            "full_unpacked_s": unpacked, "first_ready_s": first, "profiled_ready_s": profiled,
            "first_whole_s": whole, "physical_limit_s": limit,
            "native_warm_s": m(&|r| secs(r.full.warm)), "strata_local_s": m(&|r| secs(r.profiled.local)),
            "local_start_chunks_fetched": m(&|r| r.profiled.local_fetched),
        }));
    }

    println!("\nThe image whole: `strata pull --all` on a fresh node vs the full pull's download (three HTTP downloads of the zstd layers), and the CPU it took (client node, origin node, the link's relay in the bench process; machine: share of both cores busy)\n");
    println!("| image | RTT (ms) | full pull: downloaded (s) | MiB | `pull --all` (s) | MiB (chunks) | requests | download ÷ pull --all | CPU s: client / origin / relay | machine busy | first start: ready / whole (s) | its reads that waited: count, mean wait (ms) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut whole_rows = Vec::new();
    for (image, rtt, rs) in &cells {
        let m = |f: &dyn Fn(&Row) -> f64| common::median(rs.iter().map(|r| f(r)).collect());
        let downloaded = m(&|r| secs(r.full.downloaded));
        let took = m(&|r| secs(r.whole.took));
        let waits = m(&|r| r.lazy.demand_waits);
        let (client, origin, relay, busy) = (
            m(&|r| r.whole.client_cpu),
            m(&|r| r.whole.origin_cpu),
            m(&|r| r.whole.relay_cpu),
            m(&|r| r.whole.busy),
        );
        println!(
            "| {image} | {rtt} | {downloaded:.2} | {:.1} | {took:.2} | {:.1} | {:.0} | {:.2} | {client:.1} / {origin:.1} / {relay:.1} | {:.0}% | {:.2} / {:.2} | {waits:.0}, {:.0} |",
            m(&|r| mib(r.full.bytes_downloaded)),
            m(&|r| r.whole.chunk_bytes) / (1024.0 * 1024.0),
            m(&|r| r.whole.requests),
            downloaded / took,
            busy * 100.0,
            m(&|r| secs(r.lazy.ready)),
            m(&|r| secs(r.lazy.whole)),
            m(&|r| r.lazy.demand_wait_s * 1000.0 / r.lazy.demand_waits.max(1.0)),
        );
        whole_rows.push(json!({
            "image": image, "rtt_ms": rtt, "full_downloaded_s": downloaded, "pull_all_s": took,
            "pull_all_chunk_bytes": m(&|r| r.whole.chunk_bytes), "pull_all_requests": m(&|r| r.whole.requests),
            "client_cpu_s": client, "origin_cpu_s": origin, "relay_cpu_s": relay, "machine_busy": busy,
            "first_demand_waits": waits, "first_demand_wait_s": m(&|r| r.lazy.demand_wait_s),
        }));
    }

    println!("\nWhere a start with the profile spends its time: the workload alone (a second start in the full pull's overlayfs tree, page cache warm), plus the FUSE mount and store (a second `strata run` on the same node, every chunk local), plus the network (the rest)\n");
    println!("| image | RTT (ms) | with profile (s) | workload alone (s) | + FUSE and store (s) | + network (s) | chunks fetched by the local start |");
    println!("|---|---|---|---|---|---|---|");
    for r in &p1 {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r["image"].as_str().unwrap_or(""),
            r["rtt_ms"],
            f("profiled_ready_s"),
            f("native_warm_s"),
            f("strata_local_s") - f("native_warm_s"),
            f("profiled_ready_s") - f("strata_local_s"),
            f("local_start_chunks_fetched"),
        );
    }

    println!("\nP2 bytes fetched before the workload is ready vs bytes it read (RTT {} ms)\n", rtts[0]);
    println!("| image | image (MiB) | full pull moved (MiB) | metadata (MiB) | first start: chunks fetched (MiB stored) | with profile: chunks fetched (MiB stored, prefetched) | workload read (MiB) | chunks it touched (MiB) | first start: fetched ÷ read |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut p2 = Vec::new();
    for image in images {
        let Some(r) = of(image, rtts[0]).first().copied() else { continue };
        let read = r.lazy.trace["bytes_read"].as_f64().unwrap_or(0.0);
        let touched = r.lazy.trace["chunk_bytes_touched"].as_f64().unwrap_or(0.0);
        let fetched = r.lazy.metadata_bytes + r.lazy.chunk_bytes;
        println!(
            "| {image} | {:.1} | {:.1} | {:.2} | {:.1} ({} chunks) | {:.1} ({} chunks, {} prefetched) | {:.1} | {:.1} | {:.2} |",
            mib(r.image_bytes),
            mib(r.full.bytes_downloaded),
            mib(r.lazy.metadata_bytes as u64),
            mib(r.lazy.chunk_bytes as u64),
            r.lazy.chunks,
            mib(r.profiled.chunk_bytes as u64),
            r.profiled.chunks,
            r.profiled.prefetched,
            mib(read as u64),
            mib(touched as u64),
            fetched / read.max(1.0),
        );
        p2.push(json!({
            "image": image, "image_bytes": r.image_bytes, "full_pull_bytes": r.full.bytes_downloaded,
            "metadata_bytes": r.lazy.metadata_bytes, "first_chunk_bytes": r.lazy.chunk_bytes,
            "first_chunks": r.lazy.chunks, "profiled_chunk_bytes": r.profiled.chunk_bytes,
            "profiled_chunks": r.profiled.chunks, "prefetched_chunks": r.profiled.prefetched,
            "bytes_read": read, "chunk_bytes_touched": touched, "files_read": r.lazy.trace["files_read"],
        }));
        std::fs::write(
            out.join(format!("trace-{image}.json")),
            serde_json::to_vec_pretty(&r.lazy.trace).expect("json"),
        )
        .expect("trace");
    }
    let results = json!({
        "date": common::today(), "machine": common::machine(), "mbit": mbit, "runs": runs,
        "p1": p1, "p2": p2, "whole": whole_rows,
    });
    std::fs::write(out.join("coldstart.json"), serde_json::to_vec_pretty(&results).expect("json"))
        .expect("results");
    let series = |image: &str, label: &str, key: &str| common::plot::Series {
        label: label.to_owned(),
        points: results["p1"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["image"] == image)
            .map(|r| (r["rtt_ms"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(0.0)))
            .collect(),
    };
    let charts: Vec<common::plot::Chart> = images
        .iter()
        .map(|image| common::plot::Chart {
            title: format!("{image}: cold start to 'ready', {mbit} Mbit/s"),
            x_label: "round-trip time (ms)".into(),
            y_label: "seconds".into(),
            series: vec![
                series(image, "full pull", "full_ready_s"),
                series(image, "Strata, first start", "first_ready_s"),
                series(image, "Strata, with profile", "profiled_ready_s"),
                series(image, "physical limit (profile's bytes at link rate + workload)", "physical_limit_s"),
            ],
        })
        .collect();
    common::plot::save(&out.join("coldstart.png"), &charts);
    eprintln!("results: {}", out.display());
}

/// What the smoke run must show for the scripts to be sound.
fn smoke_checks(rows: &[Row]) {
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r.lazy.trace["bytes_read"].as_u64().unwrap_or(0) > 0, "the read trace saw no reads");
        assert!(r.lazy.chunk_bytes > 0.0, "the lazy start fetched no chunk from the origin");
        assert!(r.lazy.metadata_bytes > 0.0, "the lazy start fetched no metadata");
        assert!(r.full.bytes_downloaded > 0, "the full pull moved nothing");
        assert!(r.profiled.prefetched > 0.0, "the start with a profile prefetched nothing");
        assert_eq!(
            r.profiled.local_fetched, 0.0,
            "the second start on a node fetched chunks: it was not local"
        );
    }
}
