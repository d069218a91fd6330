//! `strata run` gives the program the environment `docker run` gives the same
//! image: each check runs the same image (a `strata export` loaded into
//! Docker 20.10) under both and compares what the program sees.

use std::process::Command;

use crate::common::Strata;
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

/// The entries of the last layer of a docker-save archive (`docker save`,
/// `strata export`): path without a trailing slash, and type, sorted.
fn last_layer_entries(archive: &std::path::Path) -> Vec<(String, char)> {
    use std::io::Read;
    let mut members = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
    for entry in tar.entries().expect("tar") {
        let mut entry = entry.expect("tar member");
        let path = entry.path().expect("path").to_string_lossy().trim_start_matches("./").to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("member");
        members.insert(path, bytes);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&members["manifest.json"]).expect("manifest.json");
    let layers = manifest[0]["Layers"].as_array().expect("Layers");
    let last = layers.last().and_then(|l| l.as_str()).expect("a layer");
    let mut blob = members[last.trim_start_matches("./")].clone();
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut plain).expect("gzip layer");
        blob = plain;
    }
    let mut out: Vec<(String, char)> = tar::Archive::new(&blob[..])
        .entries()
        .expect("layer tar")
        .map(|e| {
            let e = e.expect("layer member");
            let path = e
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let kind = match e.header().entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Regular => 'f',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                other => panic!("unexpected member type {other:?} for {path}"),
            };
            (path, kind)
        })
        .collect();
    out.sort();
    out
}

/// `strata run --upper` then `strata commit` gives the layer `docker run`
/// then `docker commit` gives: what the program changed, and (as docker
/// keeps them in its init layer) none of the mountpoints and /etc files
/// the run set up for the container in an image that lacked them.
#[test]
fn a_commit_after_strata_run_holds_what_docker_commit_holds() {
    let s = Strata::new();
    let case = Case { tag: "commit", user: "", workdir: "/srv/work" };
    let name = "strata-test/run-env:commit";
    s.import(&image(&s, &case));
    let exported = s.path("commit-export.tar");
    s.ok(&["export", name, "-o", exported.to_str().expect("utf-8")]);
    let load = Command::new("docker").arg("load").arg("-i").arg(&exported).output().expect("docker CLI");
    assert!(load.status.success(), "docker load: {}", String::from_utf8_lossy(&load.stderr));

    let programs = [
        ("nothing", "true"),
        ("tmp", "echo hi > /tmp/x"),
        ("etc", "echo x > /etc/extra && chmod 600 /etc/passwd"),
        ("rm", "rm /etc/group && mkdir -p /home/new"),
    ];
    let mut failures = Vec::new();
    let mut docker_tmp = Vec::new();
    for (tag, program) in programs {
        let container = format!("strata-test-commit-{tag}-{}", std::process::id());
        let committed = format!("strata-test/committed:{tag}");
        let run = Command::new("docker")
            .args(["run", "--name", &container, name, program])
            .output()
            .expect("docker");
        assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
        let commit =
            Command::new("docker").args(["commit", &container, &committed]).output().expect("docker");
        assert!(commit.status.success(), "docker commit: {}", String::from_utf8_lossy(&commit.stderr));
        let docker_tar = s.path(&format!("docker-{tag}.tar"));
        let save = Command::new("docker")
            .arg("save")
            .arg("-o")
            .arg(&docker_tar)
            .arg(&committed)
            .output()
            .expect("docker");
        let _ = Command::new("docker").args(["rm", "-f", &container]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &committed]).output();
        assert!(save.status.success(), "docker save: {}", String::from_utf8_lossy(&save.stderr));

        let upper = s.path(&format!("upper-{tag}"));
        let upper_arg = upper.to_str().expect("utf-8");
        // The image's Entrypoint is `/bin/sh -c`: the program replaces its Cmd.
        s.ok(&["run", "--upper", upper_arg, name, "--", program]);
        s.ok(&["commit", "--upper", upper_arg, "--name", &committed]);
        let ours_tar = s.path(&format!("strata-{tag}.tar"));
        s.ok(&["export", &committed, "-o", ours_tar.to_str().expect("utf-8")]);

        let (want, got) = (last_layer_entries(&docker_tar), last_layer_entries(&ours_tar));
        assert!(tag == "nothing" || want.len() > 2, "{program:?} changed something under docker: {want:?}");
        if tag == "tmp" {
            docker_tmp = want.clone();
        }
        if want != got {
            failures.push(format!("{program:?}:\n  docker: {want:?}\n  strata: {got:?}"));
        }
    }
    let _ = Command::new("docker").args(["rmi", "-f", name]).output();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // As `docker commit` of a running container: the commit of a live
    // run's mountpoint (its writable layer made for the run) holds the
    // same as docker's, the run's setup left out.
    let mut child = s
        .command()
        .args(["run", "-i", name, "--", "echo hi > /tmp/x && read line"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("strata run");
    let mut mountpoint = None;
    crate::common::node::wait_for("the run's mount with /tmp/x", || {
        let mounts = s.json(&["mounts"]);
        mountpoint = mounts.as_array().expect("mounts").iter().find_map(|m| {
            let path = std::path::PathBuf::from(m["mountpoint"].as_str()?);
            (m["state"] == "live" && path.join("tmp/x").exists()).then_some(path)
        });
        mountpoint.is_some()
    });
    let mountpoint = mountpoint.expect("found above");
    s.ok(&["commit", mountpoint.to_str().expect("utf-8"), "--name", "strata-test/committed:live"]);
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"go\n").expect("a line for the program");
    drop(stdin);
    assert!(child.wait().expect("strata run").success(), "the run ends once it reads its line");
    let live_tar = s.path("strata-live.tar");
    s.ok(&["export", "strata-test/committed:live", "-o", live_tar.to_str().expect("utf-8")]);
    assert_eq!(last_layer_entries(&live_tar), docker_tmp, "commit of a running container");
}
