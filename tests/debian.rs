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

/// Docker's image ID is the sha256 of the config, which names each layer
/// tar's sha256: an image keeps it through `strata import` and `strata
/// export` only if every layer tar comes back bit for bit. The layer here is
/// one Docker itself stored (`docker import` of Debian's own package tar,
/// GNU format with dpkg's member order), not one Strata would write.
#[test]
fn an_image_docker_saved_keeps_its_image_id_through_strata() {
    let s = Strata::new();
    let image = "strata-test/identity:1";
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker CLI");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let layer = s.path("busybox-static.tar");
    std::fs::write(&layer, debian_package_layer("busybox-static").unwrap()).unwrap();
    let _ = Command::new("docker").args(["rmi", "-f", image]).output();
    docker(&[
        "import",
        "--change",
        r#"CMD ["/bin/busybox", "echo", "identity kept"]"#,
        layer.to_str().unwrap(),
        image,
    ]);
    let upstream_id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
    let upstream_layers = docker(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", image]);
    let saved = s.path("saved.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), image]);
    docker(&["rmi", image]);

    s.import(&saved);
    let inspect = s.json(&["inspect", image]);
    let diff_ids: Vec<String> = inspect["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serde_json::to_string(&diff_ids).unwrap(), upstream_layers);
    for compression in ["gzip", "none"] {
        let exported = s.path(&format!("exported-{compression}.tar"));
        let report =
            s.json(&["export", image, "-o", exported.to_str().unwrap(), "--compression", compression]);
        assert_eq!(report["layers"][0]["diff_id"], diff_ids[0].as_str(), "{compression}");
        docker(&["load", "-i", exported.to_str().unwrap()]);
        let loaded_id = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
        let run = Command::new("docker")
            .args(["run", "--rm", "--network=none", image])
            .output()
            .expect("docker run");
        docker(&["rmi", image]);
        assert_eq!(loaded_id, upstream_id, "{compression}: docker shows another image ID");
        assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(String::from_utf8_lossy(&run.stdout), "identity kept\n");
    }
}
