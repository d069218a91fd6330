//! A `strata serve` process for tests: started, its addresses read from
//! its stdout, killed at the end of the test however it ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use super::Strata;

pub struct Node {
    pub child: Child,
    /// QUIC address peers reach it on.
    pub addr: String,
    /// host:port of its metrics endpoint.
    pub metrics: String,
    pub log: std::path::PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Node {
    /// Starts a node on `strata`'s data dir, joining through `seeds`.
    pub fn start(strata: &Strata, name: &str, certs: &str, seeds: &[&str], env: &[(&str, &str)]) -> Node {
        let log = strata.path(&format!("{name}.log"));
        let mut command = strata.command();
        command
            .args(["serve", "--node", name, "--cert-dir", certs, "--listen", "127.0.0.1:0"])
            .args(["--metrics", "127.0.0.1:0", "--fetch-deadline", "4"])
            .env("STRATA_LOG", "info,strata_node=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")));
        for seed in seeds {
            command.args(["--seed", seed]);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("strata serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut read_line = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("serve reports");
            match line.trim().strip_prefix(prefix) {
                Some(rest) => rest.to_owned(),
                None => panic!(
                    "node {name}: expected {prefix:?}, got {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        let addr = read_line("listening on ");
        let metrics = read_line("metrics on http://").trim_end_matches("/metrics").to_owned();
        read_line("control socket ");
        Node { child, addr, metrics, log, _stdout: stdout }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The node's `/metrics` body, one scrape.
    pub fn metrics_text(&self) -> String {
        let mut stream = std::net::TcpStream::connect(&self.metrics).expect("metrics endpoint");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        body
    }

    /// The value of a Prometheus metric (summed over its labels).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `done` holds, checking every 100 ms, failing after a minute.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The members `strata` sees as alive (its node must run).
pub fn alive_peers(strata: &Strata) -> Vec<String> {
    let peers = strata.json(&["peers"]);
    peers["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["state"] == "alive")
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect()
}

/// A CA and node certificates in `strata`'s scratch dir; returns the dir.
pub fn certs(strata: &Strata, nodes: &[&str]) -> String {
    let certs = strata.path("certs");
    let dir = certs.to_str().expect("utf-8").to_owned();
    strata.ok(&["cert", "init-ca", "--dir", &dir]);
    for node in nodes {
        strata.ok(&["cert", "issue", "--node", node, "--dir", &dir]);
    }
    dir
}
