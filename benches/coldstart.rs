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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::{certs, ok, start_node, BenchNode, NodeSpec};
use common::fullpull::{self, BlobServer, FullPullTimes};
use common::images::{self, BenchImage, READY};
use common::netns::DelayLink;
use common::{mib, strata, wait_for_line};
use serde_json::{json, Value};

struct LazyRun {
    ready: Duration,
    metadata_bytes: f64,
    chunk_bytes: f64,
    chunks: f64,
    trace: Value,
}

/// A fresh node on the client side starts `image` from the origin.
fn lazy_start(link: &DelayLink, certs: &Path, origin: &BenchNode, dir: &Path, image: &BenchImage) -> LazyRun {
    let data = dir.join("client");
    let client = start_node(NodeSpec {
        data: &data,
        name: "client",
        certs,
        listen: format!("{}:0", link.b_ip),
        seed: Some(&origin.addr),
        netns: Some(&link.b),
    });
    client.wait_peers(1);
    let trace_path = dir.join("trace.json");
    let started = Instant::now();
    let mut child = strata(&data)
        .arg("run")
        .arg("--trace-reads")
        .arg(&trace_path)
        .arg(&image.reference)
        .arg("--")
        .args(&image.command)
        .stdout(Stdio::piped())
        .spawn()
        .expect("strata run");
    let ready = wait_for_line(child.stdout.take().expect("stdout"), READY, started);
    let status = child.wait().expect("strata run");
    assert!(status.success(), "strata run {} failed: {status}", image.reference);
    let trace: Value =
        serde_json::from_slice(&std::fs::read(&trace_path).expect("read trace")).expect("read trace JSON");
    LazyRun {
        ready,
        metadata_bytes: client.metric("strata_image_metadata_bytes_fetched_total"),
        chunk_bytes: client.metric("strata_chunk_bytes_fetched_total"),
        chunks: client.metric("strata_chunks_fetched_total"),
        trace,
    }
}

struct Row {
    image: &'static str,
    /// The uncompressed archive's size.
    image_bytes: u64,
    rtt_ms: u64,
    lazy: LazyRun,
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
    let out: PathBuf = match std::env::args().skip_while(|a| a != "--out").nth(1) {
        Some(dir) => dir.into(),
        None if bench => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results"),
        None => root.join("results"),
    };
    std::fs::create_dir_all(&out).expect("results dir");
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
        for &rtt_ms in &rtts {
            link.set_rtt(Duration::from_millis(rtt_ms));
            for run in 0..runs {
                let dir = root.join(format!("{name}-{rtt_ms}ms-{run}"));
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: lazy start", run + 1);
                let lazy = lazy_start(&link, &certs, &origin, &dir.join("lazy"), &image);
                eprintln!("{name}, RTT {rtt_ms} ms, run {}: full pull", run + 1);
                let full = fullpull::start(
                    &link.b.name,
                    server.addr,
                    layers.len(),
                    &dir.join("full"),
                    &image.command,
                    READY,
                );
                eprintln!(
                    "  lazy {:.2} s, full pull {:.2} s (download {:.2}, unpacked {:.2})",
                    secs(lazy.ready),
                    secs(full.ready),
                    secs(full.downloaded),
                    secs(full.unpacked)
                );
                let _ = std::fs::remove_dir_all(&dir);
                rows.push(Row { image: image.name, image_bytes, rtt_ms, lazy, full });
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
    let _ = std::fs::remove_dir_all(&root);
}

/// Medians over runs of one image at one RTT.
fn median_of(rows: Vec<&Row>, f: impl Fn(&Row) -> f64) -> f64 {
    common::median(rows.into_iter().map(f).collect())
}

fn report(rows: &[Row], images: &[String], rtts: &[u64], mbit: u64, runs: usize, out: &Path) {
    let of = |image: &str, rtt: u64| -> Vec<&Row> {
        rows.iter().filter(|r| r.image == image && r.rtt_ms == rtt).collect()
    };
    println!(
        "\nP1 cold start, {mbit} Mbit/s link, median of {runs} run(s); {}; {}\n",
        common::machine(),
        common::today()
    );
    println!("| image | RTT (ms) | full pull: downloaded / unpacked / ready (s) | lazy start: ready (s) | full ÷ lazy |");
    println!("|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for image in images {
        for &rtt in rtts {
            if of(image, rtt).is_empty() {
                continue;
            }
            let full = median_of(of(image, rtt), |r| secs(r.full.ready));
            let lazy = median_of(of(image, rtt), |r| secs(r.lazy.ready));
            let downloaded = median_of(of(image, rtt), |r| secs(r.full.downloaded));
            let unpacked = median_of(of(image, rtt), |r| secs(r.full.unpacked));
            println!(
                "| {image} | {rtt} | {downloaded:.2} / {unpacked:.2} / {full:.2} | {lazy:.2} | {:.1}x |",
                full / lazy
            );
            json_rows.push(json!({
                "image": image, "rtt_ms": rtt, "full_ready_s": full, "full_downloaded_s": downloaded,
                "full_unpacked_s": unpacked, "lazy_ready_s": lazy, "ratio": full / lazy,
            }));
        }
    }

    println!("\nP2 bytes before the workload is ready (lazy start, RTT {} ms)\n", rtts[0]);
    println!("| image | image size (MiB) | full pull moved (MiB) | metadata fetched (MiB) | chunks fetched (MiB, stored) | workload read (MiB) | chunks it touched (MiB) | fetched ÷ read |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut p2 = Vec::new();
    for image in images {
        let Some(r) = of(image, rtts[0]).first().copied() else { continue };
        let read = r.lazy.trace["bytes_read"].as_f64().unwrap_or(0.0);
        let touched = r.lazy.trace["chunk_bytes_touched"].as_f64().unwrap_or(0.0);
        let size = r.image_bytes;
        let fetched = r.lazy.metadata_bytes + r.lazy.chunk_bytes;
        println!(
            "| {image} | {:.1} | {:.1} | {:.2} | {:.1} ({} chunks) | {:.1} | {:.1} | {:.2} |",
            mib(size),
            mib(r.full.bytes_downloaded),
            mib(r.lazy.metadata_bytes as u64),
            mib(r.lazy.chunk_bytes as u64),
            r.lazy.chunks,
            mib(read as u64),
            mib(touched as u64),
            fetched / read.max(1.0),
        );
        p2.push(json!({
            "image": image, "image_bytes": size, "full_pull_bytes": r.full.bytes_downloaded,
            "metadata_bytes": r.lazy.metadata_bytes, "chunk_bytes_fetched": r.lazy.chunk_bytes,
            "chunks_fetched": r.lazy.chunks, "bytes_read": read, "chunk_bytes_touched": touched,
            "files_read": r.lazy.trace["files_read"],
        }));
    }
    let results = json!({
        "date": common::today(), "machine": common::machine(), "mbit": mbit, "runs": runs,
        "p1": json_rows, "p2": p2,
    });
    std::fs::write(out.join("coldstart.json"), serde_json::to_vec_pretty(&results).expect("json"))
        .expect("results");
    let series = |image: &str, label: &str, key: &str| common::plot::Series {
        label: format!("{image}: {label}"),
        points: results["p1"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["image"] == image)
            .map(|r| (r["rtt_ms"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(0.0)))
            .collect(),
    };
    let mut all = Vec::new();
    for image in images {
        all.push(series(image, "full pull", "full_ready_s"));
        all.push(series(image, "Strata lazy", "lazy_ready_s"));
    }
    common::plot::save(
        &out.join("coldstart.png"),
        &[common::plot::Chart {
            title: format!("Cold start to 'ready' over a {mbit} Mbit/s link"),
            x_label: "round-trip time (ms)".into(),
            y_label: "seconds".into(),
            series: all,
        }],
    );
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
    }
}
