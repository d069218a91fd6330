//! The node's control API as callers use it: typed replies, an import's
//! progress, and its cancellation (the caller's half-close or death on the
//! socket, Ctrl-C in the CLI) with and without a node.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use strata_control::{read_message, write_message, Command, Outcome, Progress, Reply, Request};

use crate::common::node::{certs, wait_for, Node};
use crate::common::{archive_of_blobs, Strata};

/// A test build's import holds still once it has read its first bytes,
/// until cancelled (`fault-injection`): so a cancel lands mid-import.
const STALL: (&str, &str) = ("STRATA_FAULT_STALL_IMPORT", "1");

/// An image of two layers of 3 MiB of incompressible file content.
fn big_archive(s: &Strata) -> PathBuf {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let blobs: Vec<Vec<u8>> = (0..2)
        .map(|n| {
            let mut data = vec![0u8; 3 << 20];
            rng.fill_bytes(&mut data);
            let mut t = strata_sample::LayerTar::new(Vec::new());
            t.file(format!("data{n}").as_bytes(), 0o644, &data).expect("file");
            t.finish().expect("layer")
        })
        .collect();
    let path = s.path("big.tar");
    archive_of_blobs(&path, strata_oci::ArchiveLayout::OciWithDockerManifest, "big:1", &blobs);
    path
}

fn socket(s: &Strata) -> UnixStream {
    let stream = UnixStream::connect(s.data_dir().join("node.sock")).expect("control socket");
    // A node that never answers fails the test instead of hanging it.
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream
}

fn next(stream: &mut UnixStream) -> Option<Reply> {
    read_message::<Reply>(stream).expect("a reply within a minute")
}

/// Sends an import and reads replies up to its first progress step;
/// returns the connection and the bytes announced.
fn start_import(s: &Strata, archive: &Path) -> (UnixStream, u64) {
    let mut stream = socket(s);
    let command = Command::Import { file: archive.to_owned(), names: vec![] };
    write_message(&mut stream, &Request::Run { command }).expect("request");
    match next(&mut stream) {
        Some(Reply::Progress(Progress::Start { total_bytes })) => (stream, total_bytes),
        other => panic!("expected the import's start, got {other:?}"),
    }
}

#[test]
fn an_import_through_the_node_reports_progress_and_stops_when_its_caller_cancels_or_dies() {
    let s = Strata::new();
    let certs = certs(&s, &["n1"]);
    let node = Node::start(&s, "n1", &certs, &[], &[STALL]);
    let archive = big_archive(&s);
    let before = s.snapshot();

    // The protocol's cancel: the caller shuts down its writing half and
    // still reads the answer, which comes before the blobs were read.
    let (mut stream, total) = start_import(&s, &archive);
    stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut advanced = 0;
    let last = loop {
        match next(&mut stream) {
            Some(Reply::Progress(Progress::Advance { bytes, .. })) => advanced += bytes,
            Some(Reply::Progress(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(last, Some(Reply::Cancelled));
    assert!(advanced < total, "cancelled mid-import: {advanced} of {total} bytes");
    assert_eq!(next(&mut stream), None, "the node closes the connection");
    assert_eq!(s.snapshot(), before, "a cancelled import adds nothing");

    // A caller that dies mid-import cancels it too.
    drop(start_import(&s, &archive));
    wait_for("the node to cancel the import of a caller that left", || {
        node.log_text().matches("command cancelled: nothing changed").count() == 2
    });
    assert_eq!(s.snapshot(), before);

    // A relative path is refused: the node does not share the caller's directory.
    let mut stream = socket(&s);
    let command = Command::Import { file: "big.tar".into(), names: vec![] };
    write_message(&mut stream, &Request::Run { command }).expect("request");
    match next(&mut stream) {
        Some(Reply::Failed { error }) => assert!(error.contains("not an absolute path"), "{error}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn progress_through_the_node_adds_up_to_the_blob_bytes_read() {
    let s = Strata::new();
    let certs = certs(&s, &["n1"]);
    let _node = Node::start(&s, "n1", &certs, &[], &[]);
    let archive = big_archive(&s);
    let (mut stream, total) = start_import(&s, &archive);
    let (mut advanced, mut layers, mut done) = (0, 0, 0);
    // Per layer: its size as announced, and the bytes reported for it.
    let mut per_layer = std::collections::HashMap::<String, (u64, u64)>::new();
    let imported = loop {
        match next(&mut stream) {
            Some(Reply::Progress(Progress::Advance { member, bytes })) => {
                advanced += bytes;
                per_layer.get_mut(&member).expect("bytes of an announced layer").1 += bytes;
            }
            Some(Reply::Progress(Progress::Layer { member, size })) => {
                layers += 1;
                per_layer.insert(member, (size, 0));
            }
            Some(Reply::Progress(Progress::LayerDone { member })) => {
                done += 1;
                assert!(per_layer.contains_key(&member), "{member} was announced");
            }
            Some(Reply::Done(Outcome::Imported(imported))) => break imported,
            other => panic!("expected progress or the outcome, got {other:?}"),
        }
    };
    assert_eq!(imported.images[0].names, ["big:1"]);
    assert_eq!((total, advanced, layers, done), (imported.blob_bytes, imported.blob_bytes, 2, 2));
    for (member, (size, read)) in &per_layer {
        assert_eq!(size, read, "{member}: every byte of its blob reported");
    }
    // The connection takes further requests after a command that ended.
    write_message(&mut stream, &Request::Run { command: Command::Images }).expect("request");
    match next(&mut stream) {
        Some(Reply::Done(Outcome::Images(images))) => assert_eq!(images.len(), 1),
        other => panic!("expected the image list, got {other:?}"),
    }
}

/// Ctrl-C in `strata import`: "cancelled", exit 130, nothing added, both
/// when a node runs the import and when the CLI does.
#[test]
fn ctrl_c_cancels_an_import_with_or_without_a_node() {
    for with_node in [true, false] {
        let s = Strata::new();
        let certs = certs(&s, &["n1"]);
        // A store with an image in it, which the cancelled import must leave
        // as it is (imported before the node, whose imports stall).
        s.import(&crate::common::sample_archive(s.dir.path(), "sample.tar", "sample:1"));
        let node = with_node.then(|| Node::start(&s, "n1", &certs, &[], &[STALL]));
        let archive = big_archive(&s);
        let before = s.snapshot();
        let log = s.path("import.log");
        let mut child = s
            .command()
            .env("STRATA_LOG", "info")
            .env(STALL.0, STALL.1)
            .args(["import", archive.to_str().expect("utf-8")])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("strata import");
        // Where the import runs, it logs each layer it starts.
        let started = || match &node {
            Some(node) => node.log_text().contains("importing layer"),
            None => std::fs::read_to_string(&log).unwrap_or_default().contains("importing layer"),
        };
        wait_for("the import to start", started);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let mut status = None;
        wait_for("strata import to exit", || {
            status = child.try_wait().expect("wait");
            status.is_some()
        });
        let mut stdout = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("stdout");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.and_then(|s| s.code()), Some(130), "with node {with_node}: {stderr}");
        assert!(stderr.contains("cancelled: nothing was imported"), "with node {with_node}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(s.snapshot(), before, "with node {with_node}: a cancelled import adds nothing");
    }
}

/// A mount on a node's data dir reports its reads to the node: counters
/// and a latency histogram per mount on the node's `/metrics`, gone when
/// the mount ends.
#[test]
fn a_mounts_reads_show_on_its_nodes_metrics() {
    let s = Strata::new();
    let certs = certs(&s, &["n1"]);
    let node = Node::start(&s, "n1", &certs, &[], &[]);
    s.import(&crate::common::sample_archive(s.dir.path(), "sample.tar", "sample:1"));
    let mnt = s.path("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let out = s
        .command()
        .env("STRATA_MOUNT__STATS_INTERVAL_SECS", "0.2")
        .args(["mount", "sample:1", mnt.to_str().expect("utf-8"), "--read-only"])
        .output()
        .expect("strata mount");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hostname = std::fs::read(mnt.join("etc/hostname")).expect("read");
    wait_for("the mount's reads on the node's metrics", || {
        node.metric("strata_fuse_read_seconds_count") >= 1.0
            && node.metric("strata_fuse_read_bytes_total") >= hostname.len() as f64
    });
    // One scrape: every read in the histogram, buckets cumulative.
    let text = node.metrics_text();
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a value");
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(value)
            .sum()
    };
    let buckets: Vec<f64> =
        text.lines().filter(|l| l.starts_with("strata_fuse_read_seconds_bucket{")).map(value).collect();
    assert_eq!(buckets.len(), 13, "12 bounds and +Inf: {text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last().copied(), Some(sum("strata_fuse_read_seconds_count")));
    assert_eq!(sum("strata_fuse_read_seconds_count"), sum("strata_fuse_reads_total"));
    assert_eq!(sum("strata_fuse_read_errors_total"), 0.0);
    s.ok(&["umount", mnt.to_str().expect("utf-8")]);
    wait_for("the ended mount's series to go", || node.metric("strata_fuse_reads_total") == 0.0);
}
