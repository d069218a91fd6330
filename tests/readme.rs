//! README.md's "Using it" block, tried line by line from a clean store, as
//! a new user would type it: each line through `sh -c` in a scratch
//! directory holding the files the lines name (busybox.tar, app.tar,
//! app.env), with a real registry (Debian's docker-registry) where the
//! README says registry.local:5000, Docker 20.10 for `docker save` and
//! `docker load`, and scratch paths for /mnt, /srv and /etc. Every line
//! must succeed. The substitutions are the only liberties taken.

use std::process::{Command, Stdio};

use crate::common::{busybox_image, Strata};
use sha2::Digest;
use strata_sample::registry::{TestRegistry, PASSWORD, USER};
use strata_sample::{sample_config, write_image};

/// The lines of README.md's "Using it" shell block.
fn using_it() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme.split("## Using it").nth(1).expect("a Using it section");
    let block = section.split("```sh\n").nth(1).expect("its shell block");
    let block = block.split("```").next().expect("block end");
    block.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
}

/// app.tar: busybox with a user `app`, as the README's run lines use it.
fn app_archive(s: &Strata) -> std::path::PathBuf {
    let layers = crate::common::busybox_with_app_user(&["sh", "ls", "echo", "id", "cat"]);
    let mut config = sample_config(&["echo app"]);
    config["config"]["Entrypoint"] = serde_json::Value::Null;
    config["config"]["Cmd"] = serde_json::json!(["sh", "-c", "echo app"]);
    let path = s.path("app.tar");
    write_image(
        strata_oci::ArchiveTarget::Tar(path.clone()),
        strata_oci::ArchiveLayout::DockerLegacy,
        strata_oci::LayerCompression::Gzip,
        &["example/app:build".to_owned()],
        config,
        &layers,
    )
    .expect("app.tar");
    path
}

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_readme_s_using_it_lines_run_as_written() {
    let s = Strata::new();
    let work = s.dir.path();
    // The files and images the lines name.
    busybox_image(&s); // busybox.tar
    let app = app_archive(&s);
    std::fs::write(work.join("app.env"), "MODE=dev\n").expect("app.env");
    for dir in ["mnt/app", "mnt/ro", "srv", "etc/bash_completion.d"] {
        std::fs::create_dir_all(work.join(dir)).expect("scratch dirs");
    }
    docker(&["load", "-i", work.join("busybox.tar").to_str().expect("utf-8")]);
    docker(&["tag", "strata-test/busybox:1", "busybox:latest"]);
    let _docker_images = DockerImages(&["busybox:latest", "strata-test/busybox:1", "app:1.4"]);
    let _mounts = Mounts(&s, ["mnt/app", "mnt/ro"]);
    let registry = TestRegistry::start();
    registry.push(&app, "app:1.4");
    registry.write_settings(&s.data_dir());
    let (manifest, _) = registry.manifest_and_config("app:1.4");
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&manifest));

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_strata")).parent().expect("bin dir").to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let scratch = work.to_str().expect("utf-8");
    let mut ran = 0;
    for line in using_it() {
        if line.starts_with("cargo build") {
            continue; // the binary under test is built
        }
        let line = line
            .replace("registry.local:5000", &registry.host)
            .replace("--username me", &format!("--username {USER}"))
            .replace("sha256:…", &digest)
            .replace(" /mnt/", &format!(" {scratch}/mnt/"))
            .replace(" /srv/", &format!(" {scratch}/srv/"))
            .replace(" /etc/bash_completion.d/", &format!(" {scratch}/etc/bash_completion.d/"));
        let mut command = Command::new("sh");
        if line.contains(" -it ") {
            // A terminal's input must come from a terminal: a pty, as a user's.
            command.args(["-c", "script -qec \"$LINE\" /dev/null"]).env("LINE", &line);
        } else {
            command.args(["-c", &line]);
        }
        let mut child = command
            .current_dir(work)
            .env("PATH", &path)
            .env("STRATA_DATA_DIR", s.data_dir())
            .env("STRATA_LOG", "warn")
            .env("PASSWORD", PASSWORD)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        // What a user types at the interactive shell of the -it line.
        std::io::Write::write_all(
            &mut child.stdin.take().expect("stdin"),
            b"echo mode=$MODE; id -un; pwd; exit\n",
        )
        .expect("stdin");
        let out = child.wait_with_output().expect("sh");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "README line failed: {line}\nstdout: {stdout}\nstderr: {stderr}");
        if line.contains(" -it ") {
            assert!(
                stdout.contains("mode=dev") && stdout.contains("app") && stdout.contains("/srv"),
                "{stdout}"
            );
        }
        ran += 1;
    }
    assert!(ran >= 30, "the README's block ran {ran} lines");
}

/// The README's mountpoints, unmounted however the test ends.
struct Mounts<'a>(&'a Strata, [&'a str; 2]);

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        for mountpoint in self.1 {
            let path = self.0.path(mountpoint);
            let _ = self.0.run(&["umount", "--lazy", path.to_str().unwrap_or_default()]);
        }
    }
}

/// Docker images the test made, removed however it ends.
struct DockerImages<'a>(&'a [&'a str]);

impl Drop for DockerImages<'_> {
    fn drop(&mut self) {
        for image in self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}
