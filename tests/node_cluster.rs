//! Real nodes (`strata serve`) on loopback: gossip membership, the CLI
//! routed through the node, images and chunks found through the directory
//! and fetched lazily by mounts, failures survived.

use crate::common::node::{alive_peers, certs, wait_for, Node};
use crate::common::{busybox_image, sample_archive, trust_registry, Strata};

fn mount(s: &Strata, image: &str, name: &str) -> std::path::PathBuf {
    let mountpoint = s.path(name);
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    s.ok(&["mount", image, mountpoint.to_str().expect("utf-8"), "--read-only"]);
    mountpoint
}

fn umount(s: &Strata, mountpoint: &std::path::Path) {
    s.ok(&["umount", mountpoint.to_str().expect("utf-8")]);
}

/// A data dir and the node running on it.
type Member = (Strata, Node);

/// Three nodes that see each other alive, and the certificates' dir.
struct Cluster {
    a: Member,
    b: Member,
    c: Member,
    certs: String,
}

/// Nodes that fetch what is read and startup profiles, nothing more: the
/// lazy path alone (`background_fetch = "profile"`).
const LAZY: [(&str, &str); 1] = [("STRATA_NODE__BACKGROUND_FETCH", "profile")];

fn three_nodes() -> Cluster {
    let (a, b, c) = (Strata::new(), Strata::new(), Strata::new());
    let certs = certs(&a, &["node-a", "node-b", "node-c"]);
    let node_a = Node::start(&a, "node-a", &certs, &[], &LAZY);
    let node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &LAZY);
    let node_c = Node::start(&c, "node-c", &certs, &[&node_a.addr], &LAZY);
    for (s, others) in [(&a, ["node-b", "node-c"]), (&b, ["node-a", "node-c"]), (&c, ["node-a", "node-b"])] {
        wait_for("every node to see the other two", || {
            let alive = alive_peers(s);
            others.iter().all(|o| alive.iter().any(|a| a == o))
        });
    }
    Cluster { a: (a, node_a), b: (b, node_b), c: (c, node_c), certs }
}

#[test]
fn three_nodes_read_an_image_imported_on_one_and_survive_its_death() {
    let Cluster { a: (a, mut node_a), b: (b, node_b), c: (c, mut node_c), .. } = three_nodes();

    // A's node owns its store: the import goes through it.
    let report = a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    assert_eq!(report["images"][0]["names"][0], "sample:1");

    // B has never seen the image: the mount pulls its metadata, reads pull chunks.
    let mnt_b = mount(&b, "sample:1", "mnt");
    assert_eq!(b.json(&["images"])[0]["name"], "sample:1", "metadata is stored on B");
    assert_eq!(std::fs::read(mnt_b.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    // Two mounts on B read one file at once: one fetch per chunk on the node.
    let mnt_b2 = mount(&b, "sample:1", "mnt2");
    let readers: Vec<_> = [mnt_b.join("bin/app"), mnt_b2.join("bin/app")]
        .into_iter()
        .map(|file| std::thread::spawn(move || std::fs::read(file).expect("read")))
        .collect();
    for reader in readers {
        assert_eq!(reader.join().expect("reader"), strata_sample::random_bytes(1, 300_000));
    }
    umount(&b, &mnt_b2);
    assert!(node_b.metric("strata_chunks_fetched_total") >= 2.0);
    // Every chunk fetched from a peer is one observation of its fetch time.
    assert_eq!(
        node_b.metric("strata_chunk_fetch_seconds_count"),
        node_b.metric("strata_chunks_fetched_total"),
        "a fetch-time observation per fetched chunk"
    );
    let fetched_bytes = node_b.metric("strata_chunk_bytes_fetched_total");
    // bin/app is random (stored as is); each of its chunks came once.
    assert!(
        (300_000.0..450_000.0).contains(&fetched_bytes),
        "B fetched what it read, once, not the image: {fetched_bytes}"
    );

    // C reads through the cluster too: contents identical.
    let mnt_c = mount(&c, "sample:1", "mnt");
    assert_eq!(std::fs::read(mnt_c.join("bin/app")).expect("read"), strata_sample::random_bytes(1, 300_000));
    let motd = std::fs::read(mnt_c.join("etc/motd")).expect("read");
    assert!(motd.ends_with(b"one more line\n"));

    // A dies (kill -9); C holds etc/motd, so B's first read of it costs a
    // retry elsewhere, not an error.
    node_a.kill();
    assert_eq!(std::fs::read(mnt_b.join("etc/motd")).expect("read from C"), motd);
    wait_for("B's gossip to declare A down", || !alive_peers(&b).contains(&"node-a".to_owned()));

    // With C gone too, a file nobody fetched fails with EIO within the
    // deadline, and the log says which chunk, which file, which peers.
    node_c.kill();
    let err = std::fs::read(mnt_b.join("usr/share/doc/README")).expect_err("no holder left");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let mount_logs: Vec<String> = b
        .data_dir()
        .join("mounts")
        .read_dir()
        .expect("logs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).expect("log"))
        .collect();
    assert!(
        mount_logs.iter().any(|log| log.contains("usr/share/doc/README") && log.contains("chunk")),
        "{mount_logs:?}"
    );
    // The node logs as its fetch ends, which may be just after the read's EIO.
    wait_for("B's node to log the unavailable chunk", || node_b.log_text().contains("chunk unavailable"));
    umount(&b, &mnt_b);
    umount(&c, &mnt_c);
}

#[test]
fn a_container_runs_on_a_node_that_never_had_its_image_and_later_nodes_prefetch_what_it_read() {
    let Cluster { a: (a, node_a), b: (b, node_b), c: (c, node_c), .. } = three_nodes();
    a.import(&busybox_image(&a));
    let out = b.ok(&["run", "strata-test/busybox:1"]);
    assert_eq!(out, "strata-busybox\n");
    // busybox is ~2 MB; the run read a small part of it... and all of it is
    // executed, so at least the binary's pages came over.
    let fetched = node_b.metric("strata_chunk_bytes_fetched_total");
    assert!(fetched > 0.0);
    assert_eq!(node_c.metric("strata_prefetched_chunks_total"), 0.0);
    // B's run recorded the image's startup profile; A, which holds the
    // image whole, was given it.
    wait_for("A to keep B's startup profile", || node_a.metric("strata_profiles_kept_total") >= 1.0);
    // A second node gets the profile with the image and fetches those
    // chunks ahead of its reads.
    let out = c.ok(&["run", "strata-test/busybox:1", "--", "echo from-c; cat /etc/strata-release"]);
    assert_eq!(out, "from-c\nstrata-busybox\n");
    wait_for("C to prefetch the profile", || node_c.metric("strata_prefetched_chunks_total") > 0.0);
    assert_eq!(node_c.metric("strata_fetch_failures_total"), 0.0);
}

#[test]
fn a_peer_without_a_cluster_certificate_is_refused() {
    let a = Strata::new();
    let certs = certs(&a, &["node-a"]);
    // Settings from the environment reach the node: here, JSON logs.
    let node_a = Node::start(&a, "node-a", &certs, &[], &[("STRATA_NODE__LOG_FORMAT", "json")]);
    // A client with a certificate of another CA.
    let ca = strata_tls::generate_ca("other").expect("ca");
    let pair = strata_tls::issue_node_cert(&ca, "intruder").expect("cert");
    let identity = strata_tls::Identity::from_pem(&ca.cert_pem, &pair).expect("identity");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let addr: std::net::SocketAddr = node_a.addr.parse().expect("addr");
    let outcome = runtime.block_on(async {
        let endpoint = strata_net::client_endpoint(&identity)?;
        let connection = strata_net::connect(&endpoint, addr, None).await?;
        strata_net::request(
            &connection,
            &strata_wire::PeerRequest::ResolveImage {
                reference: "x".into(),
                with_layer_indexes: false,
                zstd_indexes: false,
            },
        )
        .await
    });
    assert!(outcome.is_err(), "served a peer of another CA: {outcome:?}");
    wait_for("the node to log the refusal", || node_a.log_text().contains("peer refused"));
    for line in node_a.log_text().lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(entry["level"].is_string() && entry["fields"].is_object(), "{line}");
    }
}

#[test]
fn a_node_restarts_under_live_mounts() {
    let Cluster { a: (a, _node_a), b: (b, mut node_b), c: _c, certs } = three_nodes();
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    let mnt = mount(&b, "sample:1", "mnt");
    assert_eq!(std::fs::read(mnt.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");

    // SIGTERM: the node leaves; the mount lives on and says why what it
    // lacks cannot be read.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node_b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = node_b.child.wait().expect("node exits");
    assert!(status.success(), "{status}");
    assert!(node_b.log_text().contains("mounts stay live"), "{}", node_b.log_text());
    wait_for("A to see B leave", || !alive_peers(&a).contains(&"node-b".to_owned()));
    let listing = std::fs::read_dir(mnt.join("etc")).expect("metadata needs no node").count();
    assert!(listing >= 2);
    let err = std::fs::read(mnt.join("etc/motd")).expect_err("no node to fetch through");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));

    // A new node on the same data dir: the same mount reads again.
    let _node_b = Node::start(&b, "node-b", &certs, &[&_node_a_addr(&a)], &[]);
    wait_for("B to rejoin", || alive_peers(&b).contains(&"node-a".to_owned()));
    let motd = std::fs::read(mnt.join("etc/motd")).expect("read after restart");
    assert!(motd.ends_with(b"one more line\n"));
    umount(&b, &mnt);
}

/// A's peer address, from its node's view of itself.
fn _node_a_addr(a: &Strata) -> String {
    a.json(&["peers"])["self"]["addr"].as_str().expect("addr").to_owned()
}

#[test]
fn an_image_pulled_lazily_exports_commits_and_inspects_like_a_local_one() {
    let (a, b) = (Strata::new(), Strata::new());
    let certs = certs(&a, &["node-a", "node-b"]);
    let node_a = Node::start(&a, "node-a", &certs, &[], &[]);
    // B fetches only what is read (no background fetch of the whole image).
    let mut node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &LAZY);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));

    // B reads one small file: the rest of the image stays on A.
    let upper = b.path("upper");
    let mnt = b.path("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let (mnt_arg, upper_arg) = (mnt.to_str().expect("utf-8"), upper.to_str().expect("utf-8"));
    b.ok(&["mount", "sample:1", mnt_arg, "--upper", upper_arg]);
    assert_eq!(std::fs::read(mnt.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    // A change to a lower file whose other chunks B never read.
    let mut motd = std::fs::OpenOptions::new().append(true).open(mnt.join("etc/motd")).expect("open");
    std::io::Write::write_all(&mut motd, b"appended on B\n").expect("append");
    drop(motd);
    umount(&b, &mnt);
    let missing = &b.json(&["inspect", "sample:1"])["missing"];
    assert!(missing["chunks"].as_u64().expect("chunks") > 0, "B lacks chunks: {missing}");
    assert!(missing["bytes"].as_u64().expect("bytes") > 300_000, "bin/app was never read: {missing}");

    // Without a node the export says what is missing and how to get it,
    // and writes nothing.
    node_b.kill();
    let out = b.path("without-node.tar");
    let err = b.fails(&["export", "sample:1", "-o", out.to_str().expect("utf-8")]);
    assert!(
        err.contains("sample:1") && err.contains("lacks") && err.contains("chunks") && err.contains("serve"),
        "{err}"
    );
    assert!(!out.exists(), "no partial archive");

    let node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &LAZY);
    wait_for("B to see A again", || alive_peers(&b).iter().any(|p| p == "node-a"));

    // With the node: commit of the writable layer (the copied-up file's
    // unread lower chunks come through it), then export of the committed
    // image, whose base chunks B never read.
    b.ok(&["commit", "--upper", upper_arg, "--name", "committed:1"]);
    // A push of the committed image: its base chunks B never read come
    // through the node too; what is pushed pulls back as the same image.
    let registry = strata_sample::registry::TestRegistry::start();
    trust_registry(&b, &registry);
    let reference = format!("{}/team/committed:1", registry.host);
    let missing = &b.json(&["inspect", "committed:1"])["missing"];
    assert!(missing["bytes"].as_u64().expect("bytes") > 300_000, "bin/app is still on A only: {missing}");
    let pushed = b.json(&["push", "committed:1", &reference]);
    assert!(
        pushed["layers"].as_array().expect("layers").iter().all(|l| l["outcome"] == "uploaded"),
        "{pushed}"
    );
    let back = Strata::new();
    trust_registry(&back, &registry);
    back.json(&["pull", &reference]);
    let layer_ids = |s: &Strata, name: &str| {
        let inspect = s.json(&["inspect", name]);
        (
            inspect["id"].clone(),
            inspect["layers"].as_array().expect("layers").iter().map(|l| l["id"].clone()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(layer_ids(&back, &reference), layer_ids(&b, "committed:1"), "pulled back: the same image");
    let committed = b.path("committed.tar");
    b.ok(&["export", "committed:1", "-o", committed.to_str().expect("utf-8")]);
    let check = Strata::new();
    check.json(&["import", committed.to_str().expect("utf-8")]);
    let check_mnt = check.path("check-mnt");
    std::fs::create_dir_all(&check_mnt).expect("mountpoint");
    check.ok(&["mount", "committed:1", check_mnt.to_str().expect("utf-8"), "--read-only"]);
    let motd = std::fs::read(check_mnt.join("etc/motd")).expect("read");
    let app = std::fs::read(check_mnt.join("bin/app")).expect("read");
    check.ok(&["umount", check_mnt.to_str().expect("utf-8")]);
    assert!(motd.ends_with(b"one more line\nappended on B\n"), "the committed motd has every byte");
    assert_eq!(motd.len(), 200_000 + "one more line\n".len() + "appended on B\n".len());
    assert_eq!(app, strata_sample::random_bytes(1, 300_000), "base chunks B never read were fetched");

    // And the original image exports from B as from A.
    let (from_a, from_b) = (a.path("a.tar"), b.path("b.tar"));
    a.ok(&["export", "sample:1", "-o", from_a.to_str().expect("utf-8")]);
    b.ok(&["export", "sample:1", "-o", from_b.to_str().expect("utf-8")]);
    let ids = |file: &std::path::Path, name: &str| {
        check.json(&["import", file.to_str().expect("utf-8"), "--name", name]);
        check.json(&["inspect", name])["layers"].clone()
    };
    assert_eq!(ids(&from_a, "from-a:1"), ids(&from_b, "from-b:1"), "B's export holds A's layers");
    // Listings answered through B's node are live: the chunks its export
    // fetched count at once, not when the store next flushes.
    let missing = &b.json(&["inspect", "sample:1"])["missing"];
    assert_eq!(missing["chunks"], 0, "B holds every chunk now: {missing}");
    let (stats_a, stats_b) = (a.json(&["store", "stats"]), b.json(&["store", "stats"]));
    assert!(stats_b["chunks"].as_u64() >= stats_a["chunks"].as_u64(), "{stats_b} vs {stats_a}");
    // What B fetched stays with B's node: with A gone, B exports again.
    let mut node_a = node_a;
    node_a.kill();
    let again = b.path("again.tar");
    b.ok(&["export", "sample:1", "-o", again.to_str().expect("utf-8")]);
    assert_eq!(ids(&again, "again:1"), ids(&from_a, "from-a:2"));
    drop(node_b);
}

/// `background_fetch = "all"` (the default): a container's first read of
/// an image with no startup profile starts the fetch of the whole image,
/// recorded in the store; a node killed before it asked anything resumes
/// it when it starts again, with no read; the image then reads with its
/// holder gone, and came in batches (far fewer requests than chunks).
#[test]
fn a_read_starts_the_whole_image_in_batches_and_a_restarted_node_resumes_it() {
    let (a, b) = (Strata::new(), Strata::new());
    let certs = certs(&a, &["node-a", "node-b"]);
    let mut node_a = Node::start(&a, "node-a", &certs, &[], &[]);
    let hold = [("STRATA_FAULT_HOLD_BACKGROUND", "1")];
    let mut node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &hold);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));

    let mnt = mount(&b, "sample:1", "mnt");
    assert_eq!(std::fs::read(mnt.join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    umount(&b, &mnt);
    wait_for("B's whole-image fetch to start (held)", || node_b.log_text().contains("background fetch held"));
    node_b.kill();
    let missing = b.json(&["inspect", "sample:1"])["missing"]["chunks"].as_u64().expect("missing chunks");
    assert!(missing > 0, "killed before it fetched the rest");

    // Started again, nothing read: the fetch goes on where it stopped.
    let node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr], &[]);
    wait_for("B to hold the whole image", || {
        b.json(&["inspect", "sample:1"])["missing"]["chunks"].as_u64() == Some(0)
    });
    wait_for("B's background fetch to end", || node_b.log_text().contains("background fetch done"));
    assert!(node_b.log_text().contains("why=Resumed"), "{}", node_b.log_text());
    let requests = node_b.metric("strata_background_fetch_requests_total");
    let chunks = node_b.metric("strata_background_chunks_fetched_total");
    assert!(requests >= 1.0 && requests * 4.0 <= chunks, "batched: {requests} requests for {chunks} chunks");

    // A gone, B alone serves every byte of the image.
    node_a.kill();
    let mnt = mount(&b, "sample:1", "mnt2");
    assert_eq!(std::fs::read(mnt.join("bin/app")).expect("read"), strata_sample::random_bytes(1, 300_000));
    umount(&b, &mnt);
}

#[test]
fn the_cluster_lists_its_images_and_members_their_role_and_holdings() {
    let (a, b) = (Strata::new(), Strata::new());
    let certs = certs(&a, &["node-a", "node-b"]);
    a.import(&sample_archive(a.dir.path(), "sample.tar", "sample:1"));
    let node_a = Node::start(&a, "node-a", &certs, &[], &LAZY);
    // B joins through A, a seed nobody answers at (UDP discard) and one
    // whose name does not resolve.
    let silent = "127.0.0.1:9";
    let nowhere = "no-such-host.invalid:7420";
    let node_b = Node::start(&b, "node-b", &certs, &[&node_a.addr, silent, nowhere], &LAZY);
    wait_for("B to see A", || alive_peers(&b).iter().any(|p| p == "node-a"));
    b.import(&sample_archive(b.dir.path(), "other.tar", "other:1"));

    let listing = b.json(&["images", "--cluster"]);
    let images: Vec<(String, Vec<String>)> = listing["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            let nodes =
                i["nodes"].as_array().expect("nodes").iter().map(|n| n.as_str().expect("name").to_owned());
            (i["name"].as_str().expect("name").to_owned(), nodes.collect())
        })
        .collect();
    assert_eq!(
        images,
        [
            ("other:1".to_owned(), vec!["node-b".to_owned()]),
            ("sample:1".to_owned(), vec!["node-a".to_owned()])
        ]
    );
    assert!(listing["unanswered"].as_array().expect("unanswered").is_empty(), "{listing}");
    let table = b.ok(&["images", "--cluster"]);
    assert!(table.starts_with("NAME") && table.contains("node-a"), "{table}");

    let peers = b.json(&["peers"]);
    let a_row = &peers["members"].as_array().expect("members")[0];
    assert_eq!(
        (a_row["name"].as_str(), a_row["role"].as_str(), a_row["images"].as_u64()),
        (Some("node-a"), Some("seed"), Some(1))
    );
    let seeds = peers["seeds"].as_array().expect("seeds");
    assert!(seeds.iter().any(|s| s["addr"] == silent && s["member"].is_null()), "{peers}");
    assert!(seeds.iter().any(|s| s["member"] == "node-a"), "{peers}");
    let table = b.ok(&["peers"]);
    assert!(table.lines().any(|l| l.contains(silent) && l.contains("no answer")), "{table}");
    assert!(table.lines().any(|l| l.contains(nowhere) && l.contains("does not resolve")), "{table}");
    wait_for("serve to warn of the silent seed", || {
        node_b.log_text().contains("no node answers at this seed")
    });
    drop(node_a);
}
