//! `strata run` gives the program the environment `docker run` gives the same
//! image: each check runs the same image (a `strata export` loaded into
//! Docker 20.10) under both and compares what the program sees.

mod common;

use std::process::Command;

use common::Strata;
use strata_sample::{debian_package_layer, sample_config, write_image, LayerTar};

/// What the program reports about its environment. Hostnames and ids differ
/// between runtimes by design; what is compared is who it runs as, where,
/// and which standard mounts and files it finds.
const PROBE: &str = r#"
id
echo HOME=$HOME
echo HOSTNAME=${HOSTNAME:+set}
echo PWD=$(pwd)
ls -ld . | awk '{print "cwd", $1, $3, $4}'
grep '^Groups:' /proc/self/status | tr -s '\t ' ' '
echo dev: $(ls /dev | sort | tr '\n' ' ')
for m in /proc /dev /dev/pts /dev/shm /dev/mqueue /sys /etc/hostname /etc/hosts /etc/resolv.conf; do
  awk -v m="$m" '$5 == m {found=1} END {print m, (found ? "mounted" : "missing")}' /proc/self/mountinfo
done
awk '$5 == "/dev/shm" {print "shm", $6}' /proc/self/mountinfo | cut -d, -f1-4
test "$(cat /etc/hostname)" = "$(hostname)" && echo hostname-file-matches
grep -q '^127.0.0.1[[:space:]]*localhost' /etc/hosts && echo hosts-has-localhost
grep -q "[[:space:]]$(hostname)\$" /etc/hosts && echo hosts-has-hostname
test -w /dev/shm && echo shm-writable
"#;

struct Case {
    tag: &'static str,
    user: &'static str,
    workdir: &'static str,
}

const CASES: [Case; 6] = [
    Case { tag: "root", user: "", workdir: "" },
    Case { tag: "name", user: "app", workdir: "/home/app/work" },
    Case { tag: "uid", user: "1000", workdir: "/srv/missing/deep" },
    Case { tag: "named-group", user: "app:extra", workdir: "/" },
    Case { tag: "uid-gid", user: "1000:3000", workdir: "/tmp" },
    Case { tag: "unknown-uid", user: "4242", workdir: "/var/empty-dir" },
];

fn image(s: &Strata, case: &Case) -> std::path::PathBuf {
    let busybox = debian_package_layer("busybox-static").expect("busybox-static from Debian");
    let mut etc = LayerTar::new(Vec::new());
    etc.dir("etc", 0o755).expect("tar");
    etc.file(b"etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        .expect("tar");
    etc.file(b"etc/group", 0o644, b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nmore:x:3000:other,app\n")
        .expect("tar");
    etc.dir("home", 0o755).expect("tar");
    etc.dir("tmp", 0o1777).expect("tar");
    for applet in ["sh", "id", "ls", "awk", "grep", "cat", "cut", "tr", "sort", "hostname", "test", "pwd"] {
        etc.symlink(&format!("bin/{applet}"), "busybox").expect("tar");
    }
    let mut config = sample_config(&[PROBE]);
    config["config"]["User"] = case.user.into();
    config["config"]["WorkingDir"] = case.workdir.into();
    if let Some(env) = config["config"]["Env"].as_array_mut() {
        env.retain(|e| !e.as_str().unwrap_or("").starts_with("HOME="));
    }
    let path = s.path(&format!("{}.tar", case.tag));
    write_image(
        strata_oci::ArchiveTarget::Tar(path.clone()),
        strata_oci::ArchiveLayout::DockerLegacy,
        strata_oci::LayerCompression::Gzip,
        &[format!("strata-test/run-env:{}", case.tag)],
        config,
        &[busybox, etc.finish().expect("tar")],
    )
    .expect("image");
    path
}

fn lines(out: &std::process::Output, who: &str) -> Vec<String> {
    assert!(
        out.status.success(),
        "{who}: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn strata_run_gives_the_environment_docker_run_gives() {
    let s = Strata::new();
    let mut failures = Vec::new();
    for case in &CASES {
        let name = format!("strata-test/run-env:{}", case.tag);
        s.import(&image(&s, case));
        let exported = s.path(&format!("{}-export.tar", case.tag));
        s.ok(&["export", &name, "-o", exported.to_str().expect("utf-8")]);
        let load = Command::new("docker").arg("load").arg("-i").arg(&exported).output().expect("docker CLI");
        assert!(load.status.success(), "docker load: {}", String::from_utf8_lossy(&load.stderr));
        // Docker's default network: the container's hostname resolves in
        // its /etc/hosts (strata run shares the host's network, and maps its
        // hostname to 127.0.1.1).
        let docker = Command::new("docker").args(["run", "--rm", &name]).output().expect("docker");
        let _ = Command::new("docker").args(["rmi", "-f", &name]).output();
        let ours = s.command().args(["run", &name]).output().expect("strata run");
        let (want, got) = (lines(&docker, "docker run"), lines(&ours, "strata run"));
        assert!(want.len() > 15, "the probe ran under docker: {want:?}");
        if want != got {
            failures.push(format!(
                "User {:?}, WorkingDir {:?}:\n  docker: {want:#?}\n  strata: {got:#?}",
                case.user, case.workdir
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
