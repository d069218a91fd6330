//! An in-process cluster: N nodes in this test process, each with a real
//! store in a temporary directory, real QUIC with mutual TLS on loopback,
//! real gossip. Fetching, relays, membership changes and deadlines are
//! tested here without starting processes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_node::{
    name_key, BackgroundConfig, Caps, Claimed, FetchError, MemberState, Node, NodeConfig, NodeError,
};
use strata_oci::{ArchiveLayout, ImportOptions, LayerCompression, NoProgress};
use strata_store::{OpenMode, Store};
use strata_tls::{generate_ca, issue_node_cert, CertPair, Identity};
use strata_types::{BackgroundFetch, ChunkId, LayerId};

/// Nodes of one cluster (one CA), started on one runtime.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    ca: CertPair,
    dir: tempfile::TempDir,
    nodes: Vec<Arc<Node>>,
    fetch_deadline: Duration,
    /// What nodes started from now on fetch in the background (tests of
    /// the read path start with none: their counts are the reads').
    background: BackgroundConfig,
}

impl Cluster {
    /// A cluster whose fetches give up after `fetch_deadline`.
    fn new(fetch_deadline: Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            runtime,
            ca: generate_ca("test").expect("ca"),
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: vec![],
            fetch_deadline,
            background: BackgroundConfig { mode: BackgroundFetch::None, ..BackgroundConfig::default() },
        }
    }

    /// Starts a node named `name` with an empty store, joining through the
    /// first node (if any); returns its index.
    fn start(&mut self, name: &str) -> usize {
        let store_dir = self.dir.path().join(name);
        let store = Arc::new(Store::open(&store_dir, OpenMode::ReadWrite).expect("store"));
        let identity = Identity::from_pem(&self.ca.cert_pem, &issue_node_cert(&self.ca, name).expect("cert"))
            .expect("identity");
        let config = NodeConfig {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            seeds: self.nodes.first().map(|n| n.addr()).into_iter().collect(),
            fetch_deadline: self.fetch_deadline,
            announce_interval: Duration::from_secs(30),
            directory_replicas: 2,
            caps: Caps::default(),
            background: self.background,
            cache: Default::default(),
            transport: Default::default(),
        };
        let node = self.runtime.block_on(Node::start(config, &identity, store)).expect("node starts");
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&self, i: usize) -> &Arc<Node> {
        &self.nodes[i]
    }

    /// Waits until every node sees every other alive.
    fn settle(&self) {
        let names: BTreeSet<String> = self.nodes.iter().map(|n| n.name().to_owned()).collect();
        wait_until("the cluster to see itself whole", || {
            self.nodes.iter().all(|n| {
                let alive: BTreeSet<String> = n
                    .members()
                    .into_iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .map(|m| m.name)
                    .chain([n.name().to_owned()])
                    .collect();
                alive == names
            })
        });
    }
}

/// Polls `done` (every 20 ms, failing after a minute).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A counter of a node's metrics (summed over its labels).
fn metric(node: &Node, name: &str) -> f64 {
    metric_with(node, name, "")
}

/// A counter of a node's metrics, summed over the series whose labels
/// hold `label` (e.g. `from="relay"`).
fn metric_with(node: &Node, name: &str, label: &str) -> f64 {
    node.metrics_text()
        .lines()
        .filter(|l| l.contains(label))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Imports the sample image into `node`'s store and announces it.
fn import_sample(cluster: &Cluster, node: usize) -> (Vec<LayerId>, Vec<ChunkId>) {
    let archive = cluster.dir.path().join("sample.tar");
    strata_sample::write_sample_image(&archive, ArchiveLayout::Oci, LayerCompression::Gzip, "sample:1")
        .expect("image");
    let store = cluster.node(node).store().clone();
    let report =
        strata_oci::import_archive(&store, &archive, &ImportOptions::default(), &NoProgress).expect("import");
    cluster.runtime.block_on(cluster.node(node).announce_all()).expect("announce");
    let (_, record) = store.resolve("sample:1").expect("image");
    let tree = strata_mount::load_lower(&store, &record).expect("tree");
    let chunks: BTreeSet<ChunkId> = (1..=tree.len() as u64)
        .filter_map(|i| tree.get(strata_mount::Ino(i)))
        .flat_map(|inode| inode.chunks.iter().map(|c| c.id))
        .collect();
    (report.images[0].layers.clone(), chunks.into_iter().collect())
}

/// Two nodes that start one image together: every chunk reaches both,
/// verified, and leaves the origin once (each chunk's designated fetcher
/// goes to the origin; the other asks it to relay).
#[test]
fn two_nodes_starting_one_image_take_each_chunk_from_the_origin_once() {
    // A deadline no ask reaches on a loaded machine: a timed-out ask would
    // send its chunk to the origin a second time.
    let mut cluster = Cluster::new(Duration::from_secs(30));
    let origin = cluster.start("origin");
    let (b, c) = (cluster.start("node-b"), cluster.start("node-c"));
    cluster.settle();
    let (layers, chunks) = import_sample(&cluster, origin);
    for n in [b, c] {
        cluster.runtime.block_on(cluster.node(n).pull_image("sample:1")).expect("pull");
    }
    // Both see the group (origin complete, both partial) before fetching:
    // their plans agree on each chunk's designated fetcher.
    for n in [b, c] {
        wait_until("the group in the directory", || {
            layers.iter().all(|layer| {
                let holders = cluster.runtime.block_on(cluster.node(n).lookup(layer.as_bytes()));
                holders.len() == 3 && holders.iter().filter(|h| h.complete).count() == 1
            })
        });
    }
    let fetched = cluster.runtime.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for n in [b, c] {
            for id in chunks.clone() {
                let node = cluster.node(n).clone();
                all.spawn(async move { (n, id, node.fetch_chunk(id).await) });
            }
        }
        all.join_all().await
    });
    for (n, id, result) in fetched {
        let stored = result.unwrap_or_else(|e| panic!("node {n} chunk {id}: {e}"));
        let bytes =
            strata_chunk::ChunkDecoder::new().expect("decoder").decode(&id, &stored).expect("verified");
        assert!(!bytes.is_empty());
    }
    let served = metric(cluster.node(origin), "strata_chunks_served_total");
    assert_eq!(served, chunks.len() as f64, "each chunk left the origin once");
    // Each took from the origin the chunks it was designated for, and the
    // rest from the other (a relay): both copies of every chunk accounted.
    let from = |n: usize, source: &str| metric_with(cluster.node(n), "strata_chunks_fetched_total", source);
    let from_origin = from(b, "from=\"complete\"") + from(c, "from=\"complete\"");
    let from_group = from(b, "from=\"relay\"") + from(c, "from=\"relay\"");
    assert_eq!(from_origin, chunks.len() as f64);
    assert_eq!(from_group, chunks.len() as f64, "the group shared the work");
}

/// A node that stops leaves: the others see it down at once (no
/// suspicion timeout), and a chunk only it held fails, typed, within the
/// deadline.
#[test]
fn a_node_that_leaves_is_seen_down_and_what_only_it_held_fails_typed() {
    let mut cluster = Cluster::new(Duration::from_secs(2));
    let origin = cluster.start("origin");
    let b = cluster.start("node-b");
    cluster.settle();
    let (_, chunks) = import_sample(&cluster, origin);
    cluster.runtime.block_on(cluster.node(b).pull_image("sample:1")).expect("pull");
    cluster.runtime.block_on(cluster.node(origin).shutdown());
    wait_until("B to see the origin down", || {
        cluster.node(b).members().iter().any(|m| m.name == "origin" && m.state == MemberState::Down)
    });
    let result = cluster.runtime.block_on(cluster.node(b).fetch_chunk(chunks[0]));
    match result {
        Err(NodeError::Fetch {
            source: FetchError::NoHolder { .. } | FetchError::Exhausted { .. }, ..
        }) => {}
        other => panic!("expected no holder, got {:?}", other.map(|s| s.len())),
    }
    assert_eq!(metric(cluster.node(b), "strata_bad_chunks_total"), 0.0);
}

/// Makes `name`'s store (before its node starts) hold `image` of `origin`'s
/// store whole, but with every chunk's last byte flipped: a store gone bad,
/// or a node that lies. Returns the chunks.
fn corrupt_copy(cluster: &Cluster, origin: usize, name: &str, image: &str) -> Vec<ChunkId> {
    use prost::Message;
    let from = cluster.node(origin).store().clone();
    let liar = Store::open(&cluster.dir.path().join(name), OpenMode::ReadWrite).expect("store");
    let (_, record) = from.resolve(image).expect("image");
    let mut txn = liar.begin_import().expect("txn");
    let layers: Vec<LayerId> =
        record.layers.iter().map(|l| LayerId::from_slice(l).expect("layer id")).collect();
    for layer in &layers {
        let index = from.layer_index(layer).expect("index");
        let layer_record = from.layer(layer).expect("record").expect("layer");
        txn.stage_remote_layer(*layer, index.encode_to_vec(), layer_record).expect("stage");
    }
    txn.stage_image(record, vec![image.to_owned()]);
    txn.commit().expect("commit");
    // Staged without chunks: every chunk of the image is missing.
    let chunks: BTreeSet<ChunkId> =
        layers.iter().flat_map(|l| liar.missing_chunks(l).expect("missing")).collect();
    assert!(!chunks.is_empty());
    for id in &chunks {
        let mut stored = from.get_stored_chunk(id).expect("read").expect("held");
        *stored.last_mut().expect("bytes") ^= 0xff;
        assert!(liar.put_fetched_chunk(id, &stored).expect("put"));
    }
    chunks.into_iter().collect()
}

/// A holder whose store went bad serves bytes that do not match their ids:
/// the fetching node catches each one, counts it, asks the honest holder,
/// and stores only true bytes.
#[test]
fn a_holder_serving_bad_bytes_is_caught_and_only_true_bytes_are_kept() {
    let mut cluster = Cluster::new(Duration::from_secs(30));
    let origin = cluster.start("origin");
    import_sample(&cluster, origin);
    let chunks = corrupt_copy(&cluster, origin, "liar", "sample:1");
    let liar = cluster.start("liar");
    let reader = cluster.start("reader");
    cluster.settle();
    cluster.runtime.block_on(cluster.node(liar).announce_all()).expect("announce");
    cluster.runtime.block_on(cluster.node(reader).pull_image("sample:1")).expect("pull");
    // The reader sees both complete holders, so some chunks go to the liar first.
    wait_until("both holders in the directory", || {
        let layer = cluster.node(reader).store().layers().expect("layers")[0].id;
        let holders = cluster.runtime.block_on(cluster.node(reader).lookup(layer.as_bytes()));
        holders.iter().filter(|h| h.complete).count() == 2
    });
    let mut decoder = strata_chunk::ChunkDecoder::new().expect("decoder");
    for id in &chunks {
        let stored = cluster.runtime.block_on(cluster.node(reader).fetch_chunk(*id)).expect("fetched");
        decoder.decode(id, &stored).expect("true bytes");
        assert_eq!(cluster.node(reader).store().get_stored_chunk(id).expect("read").as_ref(), Some(&*stored));
    }
    let bad = metric(cluster.node(reader), "strata_bad_chunks_total");
    assert!(bad >= 1.0, "the liar was asked first for some chunk and caught");
    assert!(metric(cluster.node(liar), "strata_chunks_served_total") >= bad);
    assert_eq!(metric(cluster.node(reader), "strata_fetch_failures_total"), 0.0);
}

/// Two nodes hold an image; one leaves while a third reads it: the reader
/// sees it down and takes every chunk from the other, with no failure.
#[test]
fn with_two_holders_a_read_survives_one_leaving() {
    let mut cluster = Cluster::new(Duration::from_secs(30));
    let (first, second) = (cluster.start("holder-1"), cluster.start("holder-2"));
    let reader = cluster.start("reader");
    cluster.settle();
    let (_, chunks) = import_sample(&cluster, first);
    import_sample(&cluster, second);
    cluster.runtime.block_on(cluster.node(reader).pull_image("sample:1")).expect("pull");
    let (half, rest) = chunks.split_at(chunks.len() / 2);
    for id in half {
        cluster.runtime.block_on(cluster.node(reader).fetch_chunk(*id)).expect("fetched");
    }
    cluster.runtime.block_on(cluster.node(first).shutdown());
    wait_until("the reader to see holder-1 down", || {
        cluster.node(reader).members().iter().any(|m| m.name == "holder-1" && m.state == MemberState::Down)
    });
    for id in rest {
        cluster.runtime.block_on(cluster.node(reader).fetch_chunk(*id)).expect("from holder-2");
    }
    assert_eq!(metric(cluster.node(reader), "strata_fetch_failures_total"), 0.0);
    assert!(metric(cluster.node(second), "strata_chunks_served_total") >= rest.len() as f64);
}

/// Nodes asked for one image from outside the cluster at once: the first
/// to claim it pulls, the others wait; once the claimer has announced the
/// image and let its claim go, they are sent to it. A claimer that lets
/// its claim go without the image (its pull failed), or that leaves the
/// cluster, passes the claim to a waiter.
#[test]
fn one_node_claims_an_image_the_others_wait_and_take_it_from_that_node() {
    let mut cluster = Cluster::new(Duration::from_secs(2));
    for name in ["node-a", "node-b", "node-c"] {
        cluster.start(name);
    }
    cluster.settle();
    let rt = &cluster.runtime;
    let claim = |i: usize, key| {
        let node = cluster.node(i).clone();
        rt.spawn(async move { node.claim(key).await })
    };
    let wait = |task: tokio::task::JoinHandle<Claimed>| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await })
            .expect("decided")
            .expect("task")
    };

    let key = name_key("registry.example/app@sha256:0123");
    let Claimed::Pull(pulling) = wait(claim(0, key)) else { panic!("the first asker pulls") };
    let (b, c) = (claim(1, key), claim(2, key));
    // Held by A: B and C wait (and, below, take the image from A).
    wait_until("B and C to wait on A's claim", || {
        metric(cluster.node(1), "strata_claims_waiting") == 1.0
            && metric(cluster.node(2), "strata_claims_waiting") == 1.0
    });
    assert!(!b.is_finished() && !c.is_finished(), "a claim held by A keeps the others waiting");
    // A pulled it: announced, then the claim goes.
    rt.block_on(cluster.node(0).announce(&[key], &[]));
    drop(pulling);
    for waiter in [b, c] {
        match wait(waiter) {
            Claimed::Holders(holders) => assert_eq!(holders[0].node, "node-a"),
            Claimed::Pull(_) => panic!("a waiter pulled an image A holds"),
        }
    }

    // A's pull fails: its claim passes to the waiter.
    let key = name_key("registry.example/app@sha256:4567");
    let Claimed::Pull(failing) = wait(claim(0, key)) else { panic!("the first asker pulls") };
    let b = claim(1, key);
    drop(failing);
    assert!(matches!(wait(b), Claimed::Pull(_)), "B pulls once A gave up");

    // Two pulls of one image on one node: the second waits on the first.
    let key = name_key("registry.example/app@sha256:cdef");
    let Claimed::Pull(first) = wait(claim(1, key)) else { panic!("the first asker pulls") };
    let second = claim(1, key);
    wait_until("the second pull to wait", || metric(cluster.node(1), "strata_claims_waiting") == 1.0);
    assert!(!second.is_finished(), "a second pull on the same node waits for the first");
    drop(first);
    assert!(matches!(wait(second), Claimed::Pull(_)), "then it goes on");

    // A leaves while it holds a claim: the waiter gets it once A is down.
    let key = name_key("registry.example/app@sha256:89ab");
    let Claimed::Pull(held) = wait(claim(0, key)) else { panic!("the first asker pulls") };
    let c = claim(2, key);
    std::mem::forget(held);
    rt.block_on(cluster.node(0).shutdown());
    assert!(matches!(wait(c), Claimed::Pull(_)), "C pulls once A left");
}

/// A node that joins a layer's group (announces it partial) learns the
/// group from its directory nodes' answers to the announcement: the
/// lookup the fetch makes next sends nothing. Three nodes, two directory
/// nodes per key: some keys' directory nodes are both remote. Answers
/// learnt so are fresh for a tenth of a second at least, and dropped when
/// the membership moves: an attempt that a loaded machine stalls longer,
/// or that the node's own announce loop interrupts, proves nothing and is
/// made again.
#[test]
fn joining_a_group_learns_it_in_the_announcement_round_trip() {
    let mut cluster = Cluster::new(Duration::from_secs(30));
    let origin = cluster.start("origin");
    let (b, c) = (cluster.start("node-b"), cluster.start("node-c"));
    cluster.settle();
    let (layers, _) = import_sample(&cluster, origin);
    let keys: Vec<[u8; 32]> = layers.iter().map(|l| *l.as_bytes()).collect();
    let node = cluster.node(b).clone();
    // Node-c fetches too: the group b learns holds three nodes.
    cluster.runtime.block_on(cluster.node(c).join(&[], &keys));
    for attempt in 0.. {
        assert!(attempt < 20, "every attempt stalled or was interrupted");
        let lookups = metric(&node, "strata_directory_lookups_total");
        let clears = metric(&node, "strata_lookup_cache_clears_total");
        let (groups, quick) = cluster.runtime.block_on(async {
            let started = std::time::Instant::now();
            node.join(&[], &keys).await;
            let mut groups = Vec::new();
            for key in &keys {
                groups.push(node.lookup(key).await);
            }
            (groups, started.elapsed() < Duration::from_millis(80))
        });
        let expected: Vec<(String, bool)> =
            vec![("node-b".into(), false), ("node-c".into(), false), ("origin".into(), true)];
        for holders in &groups {
            let mut named: Vec<(String, bool)> =
                holders.iter().map(|h| (h.node.clone(), h.complete)).collect();
            named.sort();
            assert_eq!(named, expected);
        }
        if quick && metric(&node, "strata_lookup_cache_clears_total") == clears {
            assert_eq!(metric(&node, "strata_directory_lookups_total"), lookups, "a lookup was sent");
            return;
        }
    }
}

/// A pull joins the image's layer groups (partial) while its indexes
/// cross, and announces the image's name once it is stored: a node
/// starting the image next finds the puller in every layer's group and
/// as a holder of the name.
#[test]
fn a_pull_joins_the_layer_groups_and_announces_the_name() {
    let mut cluster = Cluster::new(Duration::from_secs(30));
    let origin = cluster.start("origin");
    let (b, c) = (cluster.start("node-b"), cluster.start("node-c"));
    cluster.settle();
    let (layers, _) = import_sample(&cluster, origin);
    cluster.runtime.block_on(cluster.node(b).pull_image("sample:1")).expect("pull");
    let holders = |key: &[u8; 32]| -> Vec<(String, bool)> {
        let mut found: Vec<(String, bool)> = cluster
            .runtime
            .block_on(cluster.node(c).lookup(key))
            .into_iter()
            .map(|h| (h.node, h.complete))
            .collect();
        found.sort();
        found
    };
    wait_until("node-b in every layer's group and holding the name", || {
        layers.iter().all(|l| holders(l.as_bytes()) == [("node-b".into(), false), ("origin".into(), true)])
            && holders(&name_key("sample:1")) == [("node-b".into(), true), ("origin".into(), true)]
    });
}
