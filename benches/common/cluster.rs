//! Strata nodes for the end-to-end benches: `strata serve` processes, each
//! optionally inside a network namespace, with their metrics and membership.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{in_netns, Netns};
use super::strata;

pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cluster CA and certificates for `names`, under `dir`.
pub fn certs(dir: &Path, names: &[String]) -> PathBuf {
    let certs = dir.join("certs");
    ok(strata(dir).args(["cert", "init-ca", "--dir"]).arg(&certs));
    for name in names {
        ok(strata(dir).args(["cert", "issue", "--node", name, "--dir"]).arg(&certs));
    }
    certs
}

/// A running `strata serve`, killed on drop.
pub struct BenchNode {
    child: Child,
    pub data: PathBuf,
    /// host:port peers reach it on.
    pub addr: String,
    metrics: String,
    netns: Option<String>,
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct NodeSpec<'a> {
    pub data: &'a Path,
    pub name: &'a str,
    pub certs: &'a Path,
    /// Address to listen on (port 0 for any).
    pub listen: String,
    pub seed: Option<&'a str>,
    pub netns: Option<&'a Netns>,
}

/// Starts a node and returns once it listens; its log is `DATA.log`.
pub fn start_node(spec: NodeSpec<'_>) -> BenchNode {
    // Spawned from a thread inside the namespace (not `ip netns exec`,
    // which also gives the process a mount namespace of its own): the
    // node's mounts are the machine's, as containerd and `strata run`
    // need them.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    std::fs::create_dir_all(spec.data).expect("node data dir");
    cmd.arg("--data-dir").arg(spec.data);
    cmd.args(["serve", "--node", spec.name, "--listen", &spec.listen, "--metrics", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(spec.certs)
        .env("STRATA_LOG", std::env::var("STRATA_BENCH_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(spec.data.with_extension("log")).expect("node log")));
    if let Some(seed) = spec.seed {
        cmd.args(["--seed", seed]);
    }
    let mut child = match spec.netns {
        Some(ns) => ns.run(|| cmd.spawn()),
        None => cmd.spawn(),
    }
    .expect("strata serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = |prefix: &str| {
        let mut l = String::new();
        out.read_line(&mut l).expect("node stdout");
        l.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| {
                panic!("node {} said {l:?}; log {}", spec.name, spec.data.with_extension("log").display())
            })
            .to_owned()
    };
    let addr = line("listening on ");
    let metrics = line("metrics on http://").trim_end_matches("/metrics").to_owned();
    line("control socket ");
    // The node writes nothing more to stdout; the pipe stays open with it.
    std::mem::forget(out);
    BenchNode { child, data: spec.data.to_owned(), addr, metrics, netns: spec.netns.map(|n| n.name.clone()) }
}

impl BenchNode {
    /// CPU seconds (user and system) the node's process has used so far,
    /// from /proc/PID/stat.
    pub fn cpu_seconds(&self) -> f64 {
        super::cpu_seconds(self.child.id())
    }

    /// The sum of a Prometheus metric's samples (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let scrape = || {
            let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics");
            write!(s, "GET /metrics HTTP/1.0\r\n\r\n").expect("metrics request");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("metrics body");
            body
        };
        let body = match &self.netns {
            Some(ns) => in_netns(ns, scrape),
            None => scrape(),
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until metric `name` reaches `at_least`; panics after a minute.
    pub fn wait_metric(&self, name: &str, at_least: f64) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.metric(name) < at_least {
            assert!(Instant::now() < until, "{name} of {} never reached {at_least}", self.data.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the node holds `image` whole (`strata inspect`: no chunk
    /// missing); panics after ten minutes.
    pub fn wait_whole(&self, image: &str) {
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let out = strata(&self.data).args(["--json", "inspect", image]).output().expect("strata inspect");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["missing"]["chunks"].as_u64() == Some(0) {
                return;
            }
            assert!(Instant::now() < until, "{} never held {image} whole", self.data.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Other members this node's gossip sees alive.
    pub fn alive_peers(&self) -> usize {
        let out = strata(&self.data).args(["--json", "peers"]).output().expect("strata peers");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["members"].as_array().map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
    }

    /// Waits until gossip shows `n` other members alive here; panics after a minute.
    pub fn wait_peers(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.alive_peers() < n {
            assert!(Instant::now() < until, "{} never saw {n} peers alive", self.data.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A fresh node called `client` on `link`'s client side, data in `data`,
/// joined through `origin`; returns once it sees the origin alive.
pub fn start_client(
    link: &super::netns::DelayLink,
    certs: &Path,
    origin: &BenchNode,
    data: &Path,
) -> BenchNode {
    let client = start_node(NodeSpec {
        data,
        name: "client",
        certs,
        listen: format!("{}:0", link.b_ip),
        seed: Some(&origin.addr),
        netns: Some(&link.b),
    });
    client.wait_peers(1);
    client
}
