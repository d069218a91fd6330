//! Killed and concurrent processes: a kill -9 mid-import leaves no image
//! and only garbage that gc collects; gc in a second process waits for an
//! import and never takes what it needs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::common::Strata;
use strata_oci::{ArchiveLayout, ArchiveTarget, ArchiveWriter, LayerCompression};

/// An image whose second layer is large enough that the import is still
/// running when we act on the "importing layer 2" log line.
fn two_layer_archive(s: &Strata) -> std::path::PathBuf {
    let path = s.path("big.tar");
    let mut w = ArchiveWriter::new(ArchiveTarget::Tar(path.clone()), ArchiveLayout::Oci).unwrap();
    let first = w
        .add_layer(LayerCompression::None, |out| {
            strata_sample::write_mixed_tree(out, 1, 48 << 20).map(|_| ())
        })
        .unwrap();
    let second = w
        .add_layer(LayerCompression::None, |out| {
            strata_sample::write_mixed_tree(out, 2, 192 << 20).map(|_| ())
        })
        .unwrap();
    w.add_image(&["big:1".into()], strata_sample::sample_config(&[]), &[first, second]).unwrap();
    w.finish().unwrap();
    path
}

/// Starts an import and returns once it has begun its second layer; the
/// caller waits for the child.
#[allow(clippy::zombie_processes)]
fn import_until_second_layer(
    s: &Strata,
    archive: &std::path::Path,
) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = s
        .command()
        .env("STRATA_LOG", "strata_oci=info")
        .args(["import", archive.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "import ended before its second layer");
        if line.contains("importing layer") && line.contains("layer=2") {
            return (child, stderr);
        }
    }
}

#[test]
fn kill_9_mid_import_leaves_nothing_visible_and_gc_cleans_up() {
    let s = Strata::new();
    s.import(&crate::common::sample_archive(s.dir.path(), "base.tar", "base:1"));
    let before = s.snapshot();
    let archive = two_layer_archive(&s);

    let (mut child, _stderr) = import_until_second_layer(&s, &archive);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the import was still running when killed");

    let (images, _) = s.snapshot();
    assert_eq!(images, before.0, "no image or layer of the killed import is visible");
    s.json(&["gc"]);
    assert_eq!(s.snapshot(), before, "gc removed what the killed import left");

    // The store still works: the same import now completes.
    s.import(&archive);
    assert_eq!(s.json(&["images"]).as_array().unwrap().len(), 2);
}

#[test]
fn gc_in_another_process_waits_for_a_running_import() {
    let s = Strata::new();
    let archive = two_layer_archive(&s);
    let (import, mut import_stderr) = import_until_second_layer(&s, &archive);

    let gc =
        s.command().args(["--json", "gc"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let import = import.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut import_stderr, &mut rest).unwrap();
    assert!(import.status.success(), "import: {rest}");
    let gc = gc.wait_with_output().unwrap();
    assert!(gc.status.success(), "gc: {}", String::from_utf8_lossy(&gc.stderr));
    let report: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(report["chunks_deleted"], 0);

    // Every chunk of the image is there and verifies: export reads them all.
    let out = s.path("check.tar");
    s.ok(&["export", "big:1", "-o", out.to_str().unwrap(), "--compression", "none"]);
}
