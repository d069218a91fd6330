//! A real image from Debian's busybox-static package: imported, exported,
//! loaded into Docker and run.

use std::process::Command;

use crate::common::{busybox_image, Strata};
use strata_sample::debian_package_layer;

#[test]
fn busybox_from_debian_imports_exports_and_runs_in_docker() {
    let s = Strata::new();
    let report = s.import(&busybox_image(&s));
    assert_eq!(report["images"][0]["names"][0], "strata-test/busybox:1");
    let inspect = s.json(&["inspect", "strata-test/busybox:1"]);
    assert!(inspect["layers"][0]["size"].as_u64().unwrap() > 1_900_000, "bin/busybox is in the base layer");

    let exported = s.path("exported.tar");
    s.ok(&["export", "strata-test/busybox:1", "-o", exported.to_str().unwrap()]);
    let load = Command::new("docker").arg("load").arg("-i").arg(&exported).output().expect("docker CLI");
    assert!(load.status.success(), "docker load: {}", String::from_utf8_lossy(&load.stderr));
    let run = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network=none",
            "strata-test/busybox:1",
            "cat /etc/strata-release; sha256sum /bin/busybox",
        ])
        .output()
        .expect("docker run");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let _ = Command::new("docker").args(["rmi", "-f", "strata-test/busybox:1"]).output();
    assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.starts_with("strata-busybox\n"), "{stdout}");
    // The binary that ran is byte for byte Debian's.
    let deb = debian_package_layer("busybox-static").unwrap();
    let mut archive = tar::Archive::new(deb.as_slice());
    let mut original = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("./bin/busybox") {
            std::io::Read::read_to_end(&mut entry, &mut original).unwrap();
        }
    }
    let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&original));
    assert!(stdout.contains(&digest), "{stdout} lacks {digest}");
}

#[test]
fn strata_run_starts_busybox_from_a_mount_in_its_own_namespaces() {
    let s = Strata::new();
    s.import(&busybox_image(&s));
    let image = "strata-test/busybox:1";

    // The image's own command, from its config.
    let out = s.command().args(["run", image]).output().expect("strata run");
    assert!(out.status.success(), "strata run: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "strata-busybox\n");

    // A command of ours (after the Entrypoint, `/bin/sh -c`, as with docker run): PID 1 of its own namespace, its own hostname, /proc
    // and /dev there, /sys read-only, the exit code passed through.
    let script = "echo pid=$$; busybox hostname; busybox ls /proc/self/ >/dev/null && echo proc-ok; \
                  echo data > /dev/null && echo dev-ok; \
                  busybox touch /sys/strata 2>/dev/null || echo sys-ro; exit 7";
    let out = s.command().args(["run", image, "--", script]).output().expect("strata run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code passed through; stdout: {stdout}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = s.json(&["inspect", image])["id"].as_str().expect("id").trim_start_matches("blake3:")[..12]
        .to_owned();
    assert_eq!(stdout, format!("pid=1\n{id}\nproc-ok\ndev-ok\nsys-ro\n"));

    // Writes go to the writable layer given, which a later run (and commit) sees.
    let upper = s.path("upper");
    let upper_arg = upper.to_str().expect("utf-8");
    let out = s
        .command()
        .args(["run", "--upper", upper_arg, image, "--", "echo kept > /etc/note"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        s.command().args(["run", "--upper", upper_arg, image, "--", "cat /etc/note"]).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    // A command the image lacks: the shell's 127 comes back, and the run still cleans up.
    let out = s.command().args(["run", image, "--", "/no/such/program"]).output().expect("run");
    assert_eq!(out.status.code(), Some(127));
    assert!(s.json(&["mounts"]).as_array().expect("array").is_empty(), "every run unmounts");
    let runs = s.data_dir().join("run");
    assert!(std::fs::read_dir(&runs).map_or(true, |mut d| d.next().is_none()), "no run directory is left");
}
