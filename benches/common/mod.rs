//! Helpers for end-to-end benchmarks: run commands, time them, read their
//! peak memory, and print figures as Markdown.
#![allow(dead_code)]

pub mod cluster;
pub mod fullpull;
pub mod images;
pub mod netns;
pub mod plot;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Measured {
    pub wall: Duration,
    /// User plus system CPU time of the process and its waited children.
    pub cpu: Duration,
    /// Peak resident set size of the process, in bytes.
    pub max_rss: u64,
}

/// Runs `cmd` to completion and measures wall time and peak RSS (from wait4).
pub fn measure(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(r, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed with status {status}");
    std::mem::forget(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Measured { wall, cpu, max_rss: usage.ru_maxrss as u64 * 1024 }
}

pub fn strata(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("--data-dir").arg(data_dir).env("STRATA_LOG", "warn");
    cmd
}

/// A scratch directory on the disk that holds the cargo target dir (local,
/// not tmpfs), so both sides of a comparison write to the same device.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("STRATA_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/strata-bench"), PathBuf::from);
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench scratch dir");
    dir
}

/// Reads a file through the page cache without keeping it in memory.
pub fn warm(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open");
    std::io::copy(&mut f, &mut std::io::sink()).expect("read");
}

pub fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The most recent `n` distinct versions apt knows for `package`.
pub fn apt_versions(package: &str, n: usize) -> Vec<String> {
    let out = Command::new("apt-cache").args(["madison", package]).output().expect("apt-cache");
    let mut versions: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_owned()))
        .collect();
    versions.dedup();
    // Sort newest first with dpkg's own ordering.
    versions.sort_by(|a, b| {
        let newer = Command::new("dpkg")
            .args(["--compare-versions", a, "gt", b])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if newer {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    versions.dedup();
    versions.truncate(n);
    versions
}

/// Reads `from` until a line equal to `line`; returns the time since
/// `since` at that moment. The rest is drained in the background so the
/// writer never blocks. Panics if the output ends first.
pub fn wait_for_line(from: impl Read + Send + 'static, line: &str, since: Instant) -> Duration {
    let mut lines = BufReader::new(from).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.expect("reading output");
        if l.trim() == line {
            let at = since.elapsed();
            std::thread::spawn(move || lines.for_each(drop));
            return at;
        }
        seen.push(l);
    }
    panic!("the output ended without {line:?}: {seen:?}")
}

/// Whether this run is `cargo bench` (full figures) rather than `cargo
/// test` running the bench as a smoke test: cargo passes `--bench` only
/// to benchmarks.
pub fn is_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Comma-separated values of flag `name`, or `default`.
pub fn list_arg<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => {
            v.split(',').map(|x| x.parse().unwrap_or_else(|_| panic!("bad {name} value {x:?}"))).collect()
        }
        None => default.to_vec(),
    }
}

/// The machine, for result tables: CPU model and count, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} × {cpu}, Linux {}", kernel.trim())
}

/// Today's date (UTC), for result tables.
pub fn today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Where a bench writes its results: `--out DIR`, else benches/results
/// under `cargo bench`, else `scratch/results` (smoke runs).
pub fn results_dir(scratch: &Path) -> PathBuf {
    let out = match std::env::args().skip_while(|a| a != "--out").nth(1) {
        Some(dir) => dir.into(),
        None if is_bench() => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results"),
        None => scratch.join("results"),
    };
    std::fs::create_dir_all(&out).expect("results dir");
    out
}

/// CPU seconds (user and system) process `pid` has used so far, its
/// threads included, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // After the command name (which may hold spaces): the state first,
    // utime and stime the 12th and 13th fields.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<f64>().ok()).sum();
    // SAFETY: sysconf reads a constant.
    ticks / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

/// The machine's CPU time so far, busy and in all, from /proc/stat (in
/// clock ticks): two readings give how busy every core was in between.
#[derive(Clone, Copy)]
pub struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .expect("cpu line")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal: idle and iowait
        // are not busy.
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        CpuTicks { busy: total - idle, total }
    }

    /// The share of all cores' time that was busy since `self`.
    pub fn busy_since(self) -> f64 {
        let now = CpuTicks::now();
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64
    }
}
