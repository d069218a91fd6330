//! Real containerd (Debian's 1.6, with runc) using Strata as its
//! snapshotter: `strata serve --snapshotter-socket` registered under
//! containerd's `proxy_plugins`, images pulled from the test registry
//! (TLS, htpasswd), containers run with `ctr`: (a) pulled by containerd
//! itself, (b) on a second node by chain id from the cluster, (c) with
//! CRI's labels from the registry through the node, no layer blob
//! downloaded by containerd; (d) writes; (e) a node restart.

use std::path::{Path, PathBuf};

use strata_sample::containerd::TestContainerd;
use strata_sample::registry::{TestRegistry, PASSWORD, USER};

use crate::common::node::{alive_peers, certs, wait_for, Node};
use crate::common::{busybox_image, busybox_image_with, trust_registry, Strata};

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

    fn pull(&self) {
        ctr_pull(&self.containerd, &self.s, &self.registry, &self.reference);
    }
}

/// `ctr image pull --snapshotter strata REFERENCE` with the registry's
/// credentials and CA: containerd downloads and applies every layer.
fn ctr_pull(containerd: &TestContainerd, s: &Strata, registry: &TestRegistry, reference: &str) {
    let user = format!("{USER}:{PASSWORD}");
    let hosts = hosts_dir(s, registry);
    let hosts = hosts.to_str().expect("path");
    containerd.ctr_ok(&[
        "image",
        "pull",
        "--snapshotter",
        "strata",
        "--user",
        &user,
        "--hosts-dir",
        hosts,
        reference,
    ]);
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
    Node::start(
        s,
        "n1",
        certs,
        &[],
        &[
            ("STRATA_SNAPSHOTTER__SOCKET", socket.to_str().expect("path")),
            // The lazy path alone: the tests count what reads fetch.
            ("STRATA_NODE__BACKGROUND_FETCH", "profile"),
        ],
    )
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
    // ctr sent no remote-snapshot label: the node says why containerd unpacked.
    assert!(t.node.log_text().contains("containerd unpacks this layer itself"), "{}", t.node.log_text());
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

/// Two nodes, each serving the snapshotter to its own containerd, and an
/// image in the registry with a top layer of 8 MiB no container reads.
struct TwoNodes {
    registry: TestRegistry,
    s: [Strata; 2],
    nodes: [Node; 2],
    containerd: [TestContainerd; 2],
    reference: String,
    image_bytes: f64,
}

impl TwoNodes {
    fn start() -> TwoNodes {
        let registry = TestRegistry::start();
        let s = [Strata::new(), Strata::new()];
        let data = strata_sample::random_bytes(7, 8 << 20);
        registry.push(&busybox_image_with(&s[0], Some(&data)), "tools/busybox:big");
        let certs = certs(&s[0], &["n1", "n2"]);
        for dir in &s {
            trust_registry(dir, &registry);
        }
        let sockets = [s[0].path("snapshotter.sock"), s[1].path("snapshotter.sock")];
        let n1 = start_node_named(&s[0], "n1", &certs, &[], &sockets[0]);
        let n2 = start_node_named(&s[1], "n2", &certs, &[&n1.addr], &sockets[1]);
        for dir in &s {
            wait_for("the nodes to see each other", || alive_peers(dir).len() == 1);
        }
        let containerd = [
            TestContainerd::start(&[("strata", &sockets[0])], false),
            TestContainerd::start(&[("strata", &sockets[1])], false),
        ];
        let reference = format!("{}/tools/busybox:big", registry.host);
        TwoNodes { registry, s, nodes: [n1, n2], containerd, reference, image_bytes: data.len() as f64 }
    }

    /// [`TestContainerd::pull_remote`] on node `i`'s containerd, the
    /// manifest and config from the registry.
    fn pull_remote(&self, i: usize, cri: bool) -> strata_sample::containerd::RemotePull {
        let (manifest, config) = self.registry.manifest_and_config("tools/busybox:big");
        self.containerd[i].pull_remote(&self.reference, "strata", (&manifest, &config), cri)
    }

    /// `ctr run --rm --snapshotter strata` of the image on node `i`'s
    /// containerd as container `name`, with `command` when given; its
    /// output.
    fn run(&self, i: usize, name: &str, command: &[&str]) -> String {
        let mut args = vec!["run", "--rm", "--snapshotter", "strata", &self.reference, name];
        args.extend_from_slice(command);
        self.containerd[i].ctr_ok(&args)
    }

    /// How often the registry served each of `blobs`.
    fn downloads(&self, blobs: &[String]) -> Vec<usize> {
        let log = self.registry.blob_downloads();
        blobs.iter().map(|b| log.iter().filter(|(d, _)| d == b).count()).collect()
    }
}

fn start_node_named(s: &Strata, name: &str, certs: &str, seeds: &[&str], socket: &Path) -> Node {
    Node::start(
        s,
        name,
        certs,
        seeds,
        &[
            ("STRATA_SNAPSHOTTER__SOCKET", socket.to_str().expect("path")),
            // The lazy path alone: the tests count what reads fetch.
            ("STRATA_NODE__BACKGROUND_FETCH", "profile"),
        ],
    )
}

/// (b): node 1 pulled the image into Strata; node 2's containerd, asked as
/// `ctr` asks (no CRI label: only the ChainID), gets every layer answered
/// ALREADY_EXISTS from the chain node 1 announces, downloads no layer
/// blob, and runs the container with chunks read lazily from node 1.
#[test]
fn a_second_node_runs_the_image_by_chain_id_without_containerd_unpacking_a_layer() {
    let t = TwoNodes::start();
    t.s[0].ok(&["pull", &t.reference]);

    let pulled = t.pull_remote(1, false);
    assert_eq!(pulled.remote, pulled.layers.len(), "every layer a remote snapshot: {pulled:?}");
    let content = t.containerd[1].content_digests();
    assert!(pulled.layers.iter().all(|l| !content.contains(l)), "no layer blob in containerd: {content:?}");
    assert_eq!(
        t.downloads(&pulled.layers),
        vec![1; pulled.layers.len()],
        "each layer left the registry once"
    );

    assert_eq!(t.run(1, "c1", &[]), "strata-busybox\n");
    let fetched = t.nodes[1].metric("strata_chunk_bytes_fetched_total");
    assert!(
        fetched > 0.0 && fetched < t.image_bytes,
        "node 2 read lazily from node 1: {fetched} bytes of an image over {} bytes",
        t.image_bytes
    );
    assert!(t.nodes[1].log_text().contains("image metadata pulled"), "{}", t.nodes[1].log_text());
    // A second container starts on the same chain, still nothing from the registry.
    assert_eq!(t.run(1, "c2", &[]), "strata-busybox\n");
    assert_eq!(t.downloads(&pulled.layers), vec![1; pulled.layers.len()]);
}

/// Point 3: layers containerd downloaded and applied itself on node 1
/// (`ctr image pull`, the normal path) are kept as Strata layers there and
/// announced; node 2's containerd then gets every layer as a remote
/// snapshot from node 1, and its container reads the 8 MiB file intact,
/// lazily, with no further registry download.
#[test]
fn layers_containerd_applied_are_kept_and_served_to_the_cluster() {
    let t = TwoNodes::start();
    ctr_pull(&t.containerd[0], &t.s[0], &t.registry, &t.reference);
    let image = t.containerd[0].image_layers(&t.reference);
    let top = format!("chain:{}", image.chain_ids.last().expect("layers"));
    let names = || -> Vec<String> {
        t.s[0]
            .json(&["images"])
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    };
    wait_for("node 1 to keep the layers containerd applied", || names().contains(&top));
    let base = format!("chain:{}", image.chain_ids[0]);
    assert!(names().contains(&base), "each layer's chain: {:?}", names());

    let pulled = t.pull_remote(1, false);
    assert_eq!(pulled.remote, pulled.layers.len(), "{pulled:?}");
    let sum = t.run(1, "c1", &["sha256sum", "/data.bin"]);
    let expected = strata_types::OciDigest::sha256_of(&strata_sample::random_bytes(7, 8 << 20));
    assert_eq!(sum.split_whitespace().next(), Some(expected.hex().as_str()), "{sum}");
    assert_eq!(
        t.downloads(&pulled.layers),
        vec![1; pulled.layers.len()],
        "containerd 1 downloaded each layer once, nobody else"
    );
    let content = t.containerd[1].content_digests();
    assert!(pulled.layers.iter().all(|l| !content.contains(l)), "{content:?}");
    assert!(t.nodes[0].log_text().contains("a layer containerd applied is kept as a Strata layer"));
}

/// (c): CRI's flow, neither node holding the image: node 2's containerd
/// prepares each layer with CRI's labels; the node pulls the image from the
/// registry once for the cluster (the image-ref label) and answers
/// ALREADY_EXISTS; containerd finds the snapshots by the label filter,
/// prepares the container's snapshot on them, mounts and runs it. Then
/// node 1's containerd does the same: node 1 takes the image from node 2,
/// the registry serves no layer blob again, and no containerd ever
/// downloaded one.
#[test]
fn the_cri_flow_downloads_no_layer_blob_into_containerd() {
    let t = TwoNodes::start();
    let first = t.pull_remote(1, true);
    assert_eq!(first.remote, first.layers.len(), "{first:?}");
    assert_eq!(t.downloads(&first.layers), vec![1; first.layers.len()], "node 2 pulled the layers once");
    let read = t.run(1, "c1", &["sh", "-c", "cat /etc/strata-release; ls /data.bin"]);
    assert_eq!(read, "strata-busybox\n/data.bin\n");

    let second = t.pull_remote(0, true);
    assert_eq!(second.remote, second.layers.len(), "{second:?}");
    assert_eq!(t.run(0, "c1", &[]), "strata-busybox\n");
    assert_eq!(t.downloads(&first.layers), vec![1; first.layers.len()], "node 1 took the image from node 2");
    for c in &t.containerd {
        let content = c.content_digests();
        assert!(
            first.layers.iter().all(|l| !content.contains(l)),
            "no layer blob in containerd: {content:?}"
        );
    }
}

/// deploy/containerd as an operator installs it: the drop-in
/// (`strata.toml`) imported by containerd's own config, and CRI's two keys
/// (`cri.toml`) in that config beside its other CRI settings (here a
/// sandbox image of its own): containerd reads all of it, the operator's
/// CRI settings survive, and the Strata snapshotter and CRI load.
#[test]
fn the_deploy_snippets_register_strata_for_ctr_and_cri() {
    let s = Strata::new();
    let certs = certs(&s, &["n1"]);
    let socket = s.path("snapshotter.sock");
    let _node = start_node(&s, &certs, &socket);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/containerd");
    let drop_in = std::fs::read_to_string(deploy.join("strata.toml")).expect("drop-in");
    assert!(drop_in.contains("\"/run/strata/snapshotter.sock\""), "{drop_in}");
    assert!(
        !drop_in.contains("io.containerd.grpc.v1.cri"),
        "an imported CRI table replaces the node's: {drop_in}"
    );
    let installed = s.path("strata.toml");
    std::fs::write(
        &installed,
        drop_in.replace("/run/strata/snapshotter.sock", socket.to_str().expect("path")),
    )
    .expect("write");
    let cri_keys = std::fs::read_to_string(deploy.join("cri.toml")).expect("cri.toml");
    let own = "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.example/pause:own\"\n\n";
    let c = TestContainerd::start_with(&[], true, &[&installed], &format!("{own}{cri_keys}"));
    let dump = c.config_dump();
    let cri = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd]")
        .nth(1)
        .expect("CRI's containerd section");
    // Its own keys: up to the next table header.
    let cri: String =
        cri.lines().skip(1).take_while(|l| !l.trim_start().starts_with('[')).collect::<Vec<_>>().join("\n");
    assert!(cri.contains("snapshotter = \"strata\""), "{cri}");
    assert!(cri.contains("disable_snapshot_annotations = false"), "{cri}");
    assert!(dump.contains("[proxy_plugins.strata]"), "{dump}");
    assert!(
        dump.contains("sandbox_image = \"registry.example/pause:own\""),
        "the operator's CRI settings stay: {dump}"
    );
    let plugins = c.ctr_ok(&["plugins", "ls"]);
    let strata = plugins
        .lines()
        .find(|l| {
            l.starts_with("io.containerd.snapshotter.v1") && l.split_whitespace().nth(1) == Some("strata")
        })
        .unwrap_or_else(|| panic!("no strata snapshotter in:\n{plugins}"));
    assert!(strata.trim_end().ends_with("ok"), "{strata}");
    let cri_plugin =
        plugins.lines().find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri ")).expect("cri");
    assert!(cri_plugin.trim_end().ends_with("ok"), "{cri_plugin}");
    // containerd reaches the node through the snapshotter the snippet names.
    c.ctr_ok(&["snapshots", "--snapshotter", "strata", "ls"]);
}
