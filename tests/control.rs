//! The node's control API as callers use it: typed replies, an import's
//! progress, and its cancellation (the caller's half-close or death on the
//! socket, Ctrl-C in the CLI) with and without a node.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use strata_control::{read_message, write_message, Command, Progress, Reply, Request};

use crate::common::node::{certs, wait_for, Node};
use crate::common::{archive_of_blobs, Strata};

/// An image of three layers of 40 MiB of incompressible file content:
/// long enough to import that a cancel sent when it starts lands while it runs.
fn big_archive(s: &Strata) -> PathBuf {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let mut data = vec![0u8; 40 << 20];
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
    UnixStream::connect(s.data_dir().join("node.sock")).expect("control socket")
}

/// Sends an import and reads replies up to its first progress step.
fn start_import(s: &Strata, archive: &Path) -> UnixStream {
    let mut stream = socket(s);
    let command = Command::Import { file: archive.to_owned(), names: vec![] };
    write_message(&mut stream, &Request::Run { command }).expect("request");
    match read_message::<Reply>(&mut stream).expect("reply") {
        Some(Reply::Progress(Progress::Start { total_bytes })) => assert!(total_bytes > 100 << 20),
        other => panic!("expected the import's start, got {other:?}"),
    }
    stream
}

#[test]
fn an_import_through_the_node_reports_progress_and_stops_when_its_caller_cancels_or_dies() {
    let s = Strata::new();
    let certs = certs(&s, &["n1"]);
    let node = Node::start(&s, "n1", &certs, &[], &[]);
    let archive = big_archive(&s);
    let before = s.snapshot();

    // The protocol's cancel: the caller shuts down its writing half and
    // still reads the answer.
    let mut stream = start_import(&s, &archive);
    stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    let last = loop {
        match read_message::<Reply>(&mut stream).expect("reply") {
            Some(Reply::Progress(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(last, Some(Reply::Cancelled));
    assert_eq!(read_message::<Reply>(&mut stream).expect("end"), None, "the node closes the connection");
    assert_eq!(s.snapshot(), before, "a cancelled import adds nothing");

    // A caller that dies mid-import cancels it too.
    drop(start_import(&s, &archive));
    wait_for("the node to cancel the import of a caller that left", || {
        node.log_text().matches("command cancelled: nothing changed").count() == 2
    });
    // Another request on a new connection waits for nothing: the store is
    // the node's, and the import is gone.
    let mut stream = socket(&s);
    write_message(&mut stream, &Request::Run { command: Command::Images }).expect("request");
    match read_message::<Reply>(&mut stream).expect("reply") {
        Some(Reply::Done(strata_control::Outcome::Images(images))) => {
            assert!(images.is_empty(), "{images:?}")
        }
        other => panic!("expected the image list, got {other:?}"),
    }

    // Left alone, the import completes, its progress adding up to the
    // blob bytes it reports.
    let mut stream = start_import(&s, &archive);
    let mut advanced = 0;
    let imported = loop {
        match read_message::<Reply>(&mut stream).expect("reply") {
            Some(Reply::Progress(Progress::Advance { bytes })) => advanced += bytes,
            Some(Reply::Progress(_)) => {}
            Some(Reply::Done(strata_control::Outcome::Imported(imported))) => break imported,
            other => panic!("expected progress or the outcome, got {other:?}"),
        }
    };
    assert_eq!(imported.images[0].names, ["big:1"]);
    assert!(advanced <= imported.blob_bytes && advanced + (1 << 20) >= imported.blob_bytes, "{advanced}");
    // The connection takes further requests after a command that ended.
    write_message(&mut stream, &Request::Run { command: Command::Images }).expect("request");
    assert!(matches!(read_message::<Reply>(&mut stream).expect("reply"), Some(Reply::Done(_))));
}

/// Ctrl-C in `strata import`: "cancelled", exit 130, nothing added, both
/// when a node runs the import and when the CLI does.
#[test]
fn ctrl_c_cancels_an_import_with_or_without_a_node() {
    for with_node in [true, false] {
        let s = Strata::new();
        let certs = certs(&s, &["n1"]);
        let node = with_node.then(|| Node::start(&s, "n1", &certs, &[], &[]));
        let archive = big_archive(&s);
        let before = s.snapshot();
        let log = s.path("import.log");
        let mut child = s
            .command()
            .env("STRATA_LOG", "info")
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
        let status = child.wait().expect("exit");
        let mut stdout = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("stdout");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(130), "with node {with_node}: {stderr}");
        assert!(stderr.contains("cancelled: nothing was imported"), "with node {with_node}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(s.snapshot(), before, "with node {with_node}: a cancelled import adds nothing");
    }
}
