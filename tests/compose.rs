//! The docker-compose cluster end to end (deploy/docker-compose.yml): three
//! nodes in containers, each with its own address, killed, cut off and
//! restarted. Needs docker and docker-compose (deploy/setup installs both)
//! and fails without them. The image is built from this test's own binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{busybox_image_with, Strata};

const PROJECT: &str = "strata-e2e";
const IMAGE: &str = "strata:e2e";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_available() -> bool {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    ok(Command::new("docker").arg("info")) && ok(Command::new("docker-compose").arg("version"))
}

/// The cluster; `docker-compose down -v` when dropped, however the test ends.
struct Cluster;

fn compose(args: &[&str]) -> Output {
    Command::new("docker-compose")
        .args(["-p", PROJECT, "-f"])
        .arg(repo().join("deploy/docker-compose.yml"))
        .args(args)
        .env("STRATA_DEPLOY_IMAGE", IMAGE)
        .env("STRATA_DEPLOY_SUBNET_PREFIX", "10.213.77")
        // The lazy path alone: what a read fetches is what is counted.
        .env("STRATA_DEPLOY_BACKGROUND_FETCH", "profile")
        .output()
        .expect("docker-compose runs")
}

fn compose_ok(args: &[&str]) -> String {
    let out = compose(args);
    assert!(out.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn container(service: &str) -> String {
    compose_ok(&["ps", "-q", service]).trim().to_owned()
}

/// `strata ARGS` in a node's container.
fn strata(node: &str, args: &[&str]) -> Output {
    let mut all = vec!["exec", "-T", node, "strata"];
    all.extend_from_slice(args);
    compose(&all)
}

fn strata_ok(node: &str, args: &[&str]) -> String {
    let out = strata(node, args);
    assert!(
        out.status.success(),
        "{node}: strata {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Prometheus counter of a node, summed over labels.
fn metric(node: &str, name: &str) -> f64 {
    let out = compose_ok(&["exec", "-T", node, "wget", "-q", "-O", "-", "http://127.0.0.1:9420/metrics"]);
    out.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn alive(node: &str) -> Vec<String> {
    let out = strata(node, &["--json", "peers"]);
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    peers["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["state"] == "alive")
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_cluster(nodes: &[&str]) {
    for node in nodes {
        wait_for(&format!("{node} to see the others alive"), || alive(node).len() == nodes.len() - 1);
    }
}

impl Cluster {
    fn up() -> Cluster {
        let built = Command::new(repo().join("deploy/image/build"))
            .arg(IMAGE)
            .env("STRATA_DEPLOY_BINARY", env!("CARGO_BIN_EXE_strata"))
            .output()
            .expect("deploy/image/build");
        assert!(built.status.success(), "image build: {}", String::from_utf8_lossy(&built.stderr));
        let _ = compose(&["down", "-v", "--remove-orphans"]);
        let cluster = Cluster;
        compose_ok(&["up", "-d"]);
        wait_cluster(&["node1", "node2", "node3"]);
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!("cluster logs:\n{}", String::from_utf8_lossy(&logs.stdout));
        }
        let _ = compose(&["down", "-v", "--remove-orphans"]);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

fn copy_into(node: &str, file: &Path, to: &str) {
    docker_ok(&["cp", file.to_str().expect("utf-8"), &format!("{}:{to}", container(node))]);
}

#[test]
fn a_three_node_compose_cluster_runs_an_image_lazily_and_survives_failures() {
    // Never a silent pass: a machine without Docker fails here, as the
    // other Docker tests do.
    assert!(
        docker_available(),
        "docker and docker-compose are needed (deploy/setup test installs and starts them)"
    );
    let scratch = Strata::new();
    // busybox, and 8 MiB of random bytes: many chunks, spread by the relays.
    let data = strata_sample::random_bytes(5, 8 << 20);
    let archive = busybox_image_with(&scratch, Some(&data));
    let cluster = Cluster::up();

    // Import on node1 (through its node); run lazily on node2 and node3.
    copy_into("node1", &archive, "/tmp/busybox.tar");
    strata_ok("node1", &["import", "/tmp/busybox.tar"]);
    let image_bytes: u64 = serde_json::from_str::<serde_json::Value>(&strata_ok(
        "node1",
        &["--json", "inspect", "strata-test/busybox:1"],
    ))
    .expect("json")["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["size"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(strata_ok("node2", &["run", "strata-test/busybox:1"]), "strata-busybox\n");
    let fetched = metric("node2", "strata_chunk_bytes_fetched_total");
    assert!(fetched > 0.0 && fetched < image_bytes as f64, "node2 fetched {fetched} of {image_bytes} bytes");

    // node3 reads all of /data.bin: it holds copies of its chunks (node2
    // about half of them: those it relayed for node3).
    let sum = ["run", "strata-test/busybox:1", "--", "sha256sum /data.bin"];
    let digest = strata_ok("node3", &sum);
    assert!(digest.starts_with(&sha256_hex(&data)), "{digest}");

    // node2 cut off: a file nobody has read fails with EIO within the
    // deadline; back on the network, it reads.
    let network = format!("{PROJECT}_cluster");
    let node2 = container("node2");
    let copyright = ["run", "strata-test/busybox:1", "--", "cat /usr/share/doc/busybox-static/copyright"];
    docker_ok(&["network", "disconnect", &network, &node2]);
    let cut = strata("node2", &copyright);
    let stderr = String::from_utf8_lossy(&cut.stderr).into_owned();
    assert!(!cut.status.success() && stderr.contains("Input/output error"), "read while cut off: {stderr}");
    docker_ok(&["network", "connect", "--ip", "10.213.77.12", "--alias", "node2", &network, &node2]);
    wait_for("node2 to read again after reconnecting", || strata("node2", &copyright).status.success());

    // node1 dies while node2 reads the whole file: the chunks node2 lacks
    // come from node3.
    let before = metric("node2", "strata_chunks_fetched_total");
    let reader = std::thread::spawn(move || strata("node2", &sum));
    docker_ok(&["kill", &container("node1")]);
    let read = reader.join().expect("reader");
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    assert_eq!(String::from_utf8_lossy(&read.stdout), digest);
    assert!(metric("node2", "strata_chunks_fetched_total") > before, "node2 fetched the rest");

    // A rolling restart of every node keeps the cluster serving.
    compose_ok(&["start", "node1"]);
    wait_cluster(&["node1", "node2", "node3"]);
    for node in ["node1", "node2", "node3"] {
        compose_ok(&["restart", "-t", "20", node]);
        wait_cluster(&["node1", "node2", "node3"]);
        assert_eq!(strata_ok(node, &["run", "strata-test/busybox:1"]), "strata-busybox\n");
    }
    let changelog =
        strata_ok("node3", &["run", "strata-test/busybox:1", "--", "ls /usr/share/doc/busybox-static"]);
    assert!(changelog.contains("copyright"), "{changelog}");
    drop(cluster);
}
