//! Issue 4 fan-out: N nodes on loopback start one image together. Each runs
//! `strata serve` (joining through the origin node, which imported the
//! image), mounts the image and reads its working set at the same moment.
//! Reported: origin egress ÷ stored bytes of the working set (target ≤ 1.1)
//! and the slowest node's read time vs N = 1; in the same run, the baseline
//! where every node fetches from the origin only (mounts with `--peer
//! ORIGIN`, no node of their own).
//!
//! cargo bench --profile release --bench fanout -- [--nodes 1,2,4,8] [--size-mib 64]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::strata;

struct Node {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, name: &str, certs: &Path, seed: Option<&str>) -> Node {
    let mut cmd = strata(data);
    cmd.args(["serve", "--node", name, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(certs)
        .env("STRATA_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(data.with_extension("log")).unwrap()));
    if let Some(seed) = seed {
        cmd.args(["--seed", seed]);
    }
    let mut child = cmd.spawn().expect("strata serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("{l:?}")).to_owned()
    };
    let addr = line("listening on ");
    let metrics = line("metrics on http://").trim_end_matches("/metrics").to_owned();
    line("control socket ");
    std::mem::forget(out);
    Node { child, addr, metrics }
}

fn metric(node: &Node, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(&node.metrics).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn members(data: &Path) -> usize {
    let out = strata(data).args(["--json", "peers"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
}

fn ok(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Run {
    slowest: Duration,
    origin_bytes: f64,
}

/// N readers start together; `cluster` says whether they run nodes (else
/// they mount from the origin directly).
fn run(root: &Path, certs: &Path, image: &Path, n: usize, cluster: bool) -> Run {
    let origin_dir = root.join(format!("origin-{n}-{cluster}"));
    ok(strata(&origin_dir).arg("import").arg(image));
    let origin = start(&origin_dir, "origin", certs, None);
    let mut nodes = Vec::new();
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("n{i}-{n}-{cluster}"))).collect();
    if cluster {
        for (i, dir) in dirs.iter().enumerate() {
            nodes.push(start(dir, &format!("node-{i}"), certs, Some(&origin.addr)));
        }
        for dir in &dirs {
            let until = Instant::now() + Duration::from_secs(60);
            while members(dir) < n && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut mountpoints = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut cmd = strata(dir);
        cmd.arg("mount").arg("bench:1").arg(&mnt).arg("--read-only");
        if !cluster {
            cmd.args(["--peer", &origin.addr, "--node", &format!("node-{i}")]).arg("--cert-dir").arg(certs);
        }
        ok(&mut cmd);
        mountpoints.push(mnt);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = mountpoints
        .iter()
        .map(|mnt| {
            let (file, barrier) = (mnt.join("data.bin"), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let mut f = std::fs::File::open(&file).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                while f.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", file.display())) > 0 {}
                started.elapsed()
            })
        })
        .collect();
    let slowest = threads.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    let origin_bytes = metric(&origin, "strata_chunk_bytes_served_total");
    for (dir, mnt) in dirs.iter().zip(&mountpoints) {
        ok(strata(dir).arg("umount").arg(mnt));
    }
    drop(nodes);
    drop(origin);
    Run { slowest, origin_bytes }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut counts = vec![1usize, 2, 4, 8];
    let mut size_mib = 64usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => counts = args.next().unwrap().split(',').map(|n| n.parse().unwrap()).collect(),
            "--size-mib" => size_mib = args.next().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    // Kept if the run fails, for its logs; removed at the end otherwise.
    let root = std::mem::ManuallyDrop::new(root);
    eprintln!("scratch dir {} (node logs: *.log)", root.path().display());
    let certs = root.path().join("certs");
    ok(strata(root.path()).args(["cert", "init-ca", "--dir"]).arg(&certs));
    for name in ["origin".to_owned()]
        .into_iter()
        .chain((0..*counts.iter().max().unwrap()).map(|i| format!("node-{i}")))
    {
        ok(strata(root.path()).args(["cert", "issue", "--node", &name, "--dir"]).arg(&certs));
    }
    // Random bytes: incompressible, so stored bytes = working set.
    let data = strata_sample::random_bytes(42, size_mib << 20);
    let mut layer = strata_sample::LayerTar::new(Vec::new());
    layer.file(b"data.bin", 0o644, &data).unwrap();
    let image = root.path().join("image.tar");
    strata_sample::write_image(
        strata_oci::ArchiveTarget::Tar(image.clone()),
        strata_oci::ArchiveLayout::DockerLegacy,
        strata_oci::LayerCompression::None,
        &["bench:1".into()],
        strata_sample::sample_config(&["true"]),
        &[layer.finish().unwrap()],
    )
    .unwrap();
    let working_set = (size_mib << 20) as f64;

    println!("| N | slowest read, nodes (s) | t(N)/t(1) | origin egress ÷ working set | slowest read, origin only (s) | origin-only egress ÷ working set |");
    println!("|---|---|---|---|---|---|");
    let mut t1 = None;
    for n in counts {
        let cluster = run(root.path(), &certs, &image, n, true);
        let direct = run(root.path(), &certs, &image, n, false);
        let t = cluster.slowest.as_secs_f64();
        let base = *t1.get_or_insert(t);
        println!(
            "| {n} | {t:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            t / base,
            cluster.origin_bytes / working_set,
            direct.slowest.as_secs_f64(),
            direct.origin_bytes / working_set,
        );
    }
    let _ = std::fs::remove_dir_all(root.path());
}
