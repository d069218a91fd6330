//! Step 7 of `strata demo`: two `strata serve` processes on loopback; B
//! mounts an image only A holds and shows what its reads fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::output::bytes;
use crate::output::outln;

/// A node process, stopped with SIGTERM when dropped.
struct DemoNode {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn strata(data_dir: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe().context("finding the strata binary")?);
    command.arg("--data-dir").arg(data_dir).env("STRATA_LOG", "warn");
    Ok(command)
}

fn ok(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start(data_dir: &Path, name: &str, certs: &Path, seed: Option<&str>) -> anyhow::Result<DemoNode> {
    let mut command = strata(data_dir)?;
    command
        .args(["serve", "--node", name, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(seed) = seed {
        command.args(["--seed", seed]);
    }
    let mut child = command.spawn().context("starting strata serve")?;
    let mut out = BufReader::new(child.stdout.take().context("node stdout")?);
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line)?;
        lines.push(line.trim().to_owned());
    }
    let field = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned);
    let node = DemoNode {
        addr: field("listening on ").context("the node did not start")?,
        metrics: field("metrics on http://").unwrap_or_default().trim_end_matches("/metrics").to_owned(),
        child,
    };
    Ok(node)
}

/// A counter's value, summed over its labels.
fn metric(node: &DemoNode, name: &str) -> anyhow::Result<u64> {
    let mut stream = std::net::TcpStream::connect(&node.metrics)?;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

pub fn run(a_dir: &Path, scratch: &Path) -> anyhow::Result<()> {
    let certs = scratch.join("certs");
    ok(strata(a_dir)?.args(["cert", "init-ca", "--dir"]).arg(&certs))?;
    for node in ["demo-a", "demo-b"] {
        ok(strata(a_dir)?.args(["cert", "issue", "--node", node, "--dir"]).arg(&certs))?;
    }
    let b_dir = scratch.join("node-b");
    let a = start(a_dir, "demo-a", &certs, None)?;
    let b = start(&b_dir, "demo-b", &certs, Some(&a.addr))?;
    outln!("   node A at {} holds strata/sample:v1; node B at {} joined through A", a.addr, b.addr);
    let until = Instant::now() + Duration::from_secs(30);
    while !ok(strata(&b_dir)?.args(["peers"]))?.contains("alive") {
        if Instant::now() > until {
            bail!("node B did not see node A within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mountpoint = scratch.join("mnt-b");
    std::fs::create_dir_all(&mountpoint)?;
    ok(strata(&b_dir)?.args(["mount", "strata/sample:v1"]).arg(&mountpoint).arg("--read-only"))?;
    let read = (|| -> anyhow::Result<()> {
        let entries = std::fs::read_dir(mountpoint.join("usr/share/doc"))?.count();
        outln!(
            "   B mounted it: ls /usr/share/doc → {}; fetched {} so far",
            strata_daemon::format::plural_as(entries as u64, "entry", "entries"),
            strata_daemon::format::plural(metric(&b, "strata_chunks_fetched_total")?, "chunk")
        );
        let hostname = std::fs::read_to_string(mountpoint.join("etc/hostname"))?;
        let app = std::fs::read(mountpoint.join("bin/app"))?;
        outln!(
            "   B read /etc/hostname ({:?}) and /bin/app ({}): fetched {}, {} from A, each checked against its id",
            hostname.trim_end(),
            bytes(app.len() as u64),
            strata_daemon::format::plural(metric(&b, "strata_chunks_fetched_total")?, "chunk"),
            bytes(metric(&b, "strata_chunk_bytes_fetched_total")?),
        );
        outln!(
            "   A served {}; B now holds them and would serve them on to a third node",
            strata_daemon::format::plural(metric(&a, "strata_chunks_served_total")?, "chunk")
        );
        Ok(())
    })();
    let unmounted = ok(strata(&b_dir)?.arg("umount").arg(&mountpoint));
    read?;
    unmounted?;
    Ok(())
}
