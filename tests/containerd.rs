//! Real containerd (Debian's 1.6, with runc) using Strata as its
//! snapshotter: `strata serve --snapshotter-socket` registered under
//! containerd's `proxy_plugins`, images pulled from the test registry
//! (TLS, htpasswd), containers run with `ctr`.

use std::path::{Path, PathBuf};

use strata_sample::containerd::TestContainerd;
use strata_sample::registry::{TestRegistry, PASSWORD, USER};

use crate::common::node::{certs, wait_for, Node};
use crate::common::{busybox_image, Strata};

/// A node serving the snapshotter, a containerd using it, and the busybox
/// image in the registry as `tools/busybox:1`.
struct Setup {
    registry: TestRegistry,
    s: Strata,
    certs: String,
    socket: PathBuf,
    node: Node,
    containerd: TestContainerd,
    reference: String,
}

impl Setup {
    fn start() -> Setup {
        let registry = TestRegistry::start();
        let s = Strata::new();
        registry.push(&busybox_image(&s), "tools/busybox:1");
        let certs = certs(&s, &["n1"]);
        let socket = s.path("snapshotter.sock");
        let node = start_node(&s, &certs, &socket);
        let containerd = TestContainerd::start(&[("strata", &socket)], false);
        let reference = format!("{}/tools/busybox:1", registry.host);
        Setup { registry, s, certs, socket, node, containerd, reference }
    }

    /// `ctr image pull --snapshotter strata` with the registry's
    /// credentials and CA.
    fn pull(&self) {
        let user = format!("{USER}:{PASSWORD}");
        let hosts = hosts_dir(&self.s, &self.registry);
        let hosts = hosts.to_str().expect("path");
        self.containerd.ctr_ok(&[
            "image",
            "pull",
            "--snapshotter",
            "strata",
            "--user",
            &user,
            "--hosts-dir",
            hosts,
            &self.reference,
        ]);
    }
}

/// containerd's registry host configuration for the test registry
/// (`hosts.toml`, containerd docs/hosts.md): HTTPS with its CA. Without
/// it containerd speaks plain HTTP to any `localhost` registry.
fn hosts_dir(s: &Strata, registry: &TestRegistry) -> PathBuf {
    let dir = s.path("containerd-hosts");
    let host_dir = dir.join(&registry.host);
    std::fs::create_dir_all(&host_dir).expect("hosts dir");
    let config = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca:?}\n",
        host = registry.host,
        ca = registry.ca_file().display().to_string(),
    );
    std::fs::write(host_dir.join("hosts.toml"), config).expect("hosts.toml");
    dir
}

fn start_node(s: &Strata, certs: &str, socket: &Path) -> Node {
    Node::start(s, "n1", certs, &[], &[("STRATA_SNAPSHOTTER__SOCKET", socket.to_str().expect("path"))])
}

/// Files named `name` in the snapshotter's snapshot directories: where a
/// container's writes land (its upper).
fn in_snapshots(s: &Strata, name: &str) -> Vec<PathBuf> {
    let root = s.data_dir().join("snapshotter/snapshots");
    let Ok(dirs) = std::fs::read_dir(&root) else { return Vec::new() };
    dirs.flatten().map(|d| d.path().join("fs").join(name)).filter(|p| p.exists()).collect()
}

/// (a) and (d): containerd pulls the image into Strata's snapshotter and
/// runs it: the image's output, a container's exit code, and a
/// container's writes in its own upper directory, gone with the container.
#[test]
fn containerd_pulls_and_runs_an_image_on_the_strata_snapshotter() {
    let t = Setup::start();
    t.pull();
    let c = &t.containerd;
    assert_eq!(c.ctr_ok(&["run", "--rm", "--snapshotter", "strata", &t.reference, "c1"]), "strata-busybox\n");
    let out =
        c.ctr_output(&["run", "--rm", "--snapshotter", "strata", &t.reference, "c2", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));

    let write = "echo written > /written-by-c3 && rm /etc/strata-release && cat /written-by-c3";
    let out = c.ctr_ok(&["run", "--snapshotter", "strata", &t.reference, "c3", "sh", "-c", write]);
    assert_eq!(out, "written\n");
    let uppers = in_snapshots(&t.s, "written-by-c3");
    assert_eq!(uppers.len(), 1, "the write is in one snapshot, the container's: {uppers:?}");
    assert_eq!(std::fs::read(&uppers[0]).expect("upper"), b"written\n");
    // The layers below are untouched: a new container sees the image as it was.
    assert_eq!(c.ctr_ok(&["run", "--rm", "--snapshotter", "strata", &t.reference, "c4"]), "strata-busybox\n");

    c.ctr_ok(&["containers", "rm", "c3"]);
    // containerd removes the backend snapshot in its garbage collection,
    // right after the deletion here (deletion_threshold 1).
    wait_for("the container's snapshot is removed", || in_snapshots(&t.s, "written-by-c3").is_empty());
    assert!(t.node.log_text().contains("containerd snapshotter listening"), "{}", t.node.log_text());
}

/// (e): the node restarts (killed with -9) while a container runs: the
/// container keeps running and reading, its snapshots are still there for
/// containerd (Mounts through the restarted node), and a new container
/// starts.
#[test]
fn a_node_restart_leaves_a_running_container_running() {
    let mut t = Setup::start();
    t.pull();
    let c = &t.containerd;
    let looping =
        "while /bin/busybox test -e /etc/strata-release; do /bin/busybox sleep 0.1; done; echo gone";
    c.ctr_ok(&["run", "-d", "--snapshotter", "strata", &t.reference, "long", "sh", "-c", looping]);

    t.node.kill();
    t.node = start_node(&t.s, &t.certs, &t.socket);

    let tasks = c.ctr_ok(&["tasks", "ls"]);
    assert!(tasks.lines().any(|l| l.starts_with("long") && l.contains("RUNNING")), "{tasks}");
    let read = c.ctr_ok(&["tasks", "exec", "--exec-id", "read1", "long", "cat", "/etc/strata-release"]);
    assert_eq!(read, "strata-busybox\n");
    let target = t.s.path("mnt");
    let args = ["snapshots", "--snapshotter", "strata", "mounts", target.to_str().expect("path"), "long"];
    // containerd dials the proxy again after its gRPC backoff.
    wait_for("containerd to reach the restarted snapshotter", || c.ctr_output(&args).status.success());
    let mounts = c.ctr_ok(&args);
    assert!(mounts.contains("mount -t overlay") && mounts.contains("upperdir="), "{mounts}");
    assert_eq!(
        c.ctr_ok(&["run", "--rm", "--snapshotter", "strata", &t.reference, "after"]),
        "strata-busybox\n"
    );

    c.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", "long"]);
    wait_for("the task stops", || {
        c.ctr_ok(&["tasks", "ls"]).lines().any(|l| l.starts_with("long") && l.contains("STOPPED"))
    });
    c.ctr_ok(&["tasks", "rm", "long"]);
    c.ctr_ok(&["containers", "rm", "long"]);
}
