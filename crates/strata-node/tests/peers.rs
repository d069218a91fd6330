//! Chunks fetched from peers over real QUIC on loopback, every one verified:
//! a lying peer is caught and the next peer gives the right bytes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use strata_mount::{ChunkReader, ChunkSource, SourceError};
use strata_net::{client_endpoint, serve, server_endpoint, Answering, Handler, Replies};
use strata_node::{Peer, PeerSource, StoreHandler};
use strata_oci::{ArchiveLayout, ImportOptions, LayerCompression, NoProgress};
use strata_proto::v1::ChunkReply;
use strata_store::{OpenMode, Store};
use strata_tls::{generate_ca, issue_node_cert, CertPair, Identity};
use strata_types::ChunkId;
use strata_wire::response::Kind;
use strata_wire::{PeerRequest, Response};

fn identity(ca: &CertPair, node: &str) -> Identity {
    Identity::from_pem(&ca.cert_pem, &issue_node_cert(ca, node).expect("issue")).expect("identity")
}

/// Answers every chunk with bytes that are not that chunk (a raw payload of zeros).
struct Liar;

impl Handler for Liar {
    fn handle<'a>(
        &'a self,
        _from: std::net::SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        let PeerRequest::FetchChunks(ids, _) = request else { return replies.all(vec![]) };
        let mut out: Vec<Response> = ids
            .iter()
            .map(|id| {
                // A well-formed raw chunk of 16 zero bytes: not the chunk asked for.
                let stored = strata_chunk::ChunkEncoder::new(0).expect("encoder").encode(&[0u8; 16]);

                Response {
                    kind: Some(Kind::Chunk(ChunkReply {
                        id: id.as_bytes().to_vec(),
                        stored,
                        missing: false,
                    })),
                }
            })
            .collect();
        out.push(Response { kind: Some(Kind::End(strata_proto::v1::End {})) });
        replies.all(out)
    }
}

struct Cluster {
    runtime: tokio::runtime::Runtime,
    ca: CertPair,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("sample.tar");
        strata_sample::write_sample_image(&archive, ArchiveLayout::Oci, LayerCompression::Gzip, "sample:1")
            .expect("image");
        let store = Store::open(&dir.path().join("store"), OpenMode::ReadWrite).expect("store");
        strata_oci::import_archive(&store, &archive, &ImportOptions::default(), &NoProgress).expect("import");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        Self { runtime, ca: generate_ca("test").expect("ca"), _dir: dir, store: Arc::new(store) }
    }

    fn node(&self, name: &str, handler: Arc<dyn Handler>) -> Peer {
        let _guard = self.runtime.enter();
        let endpoint = server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity(&self.ca, name))
            .expect("endpoint");
        let addr = endpoint.local_addr().expect("addr");
        self.runtime.spawn(serve(endpoint, handler));
        Peer { addr, name: Some(name.to_owned()) }
    }

    fn source(&self, peers: Vec<Peer>) -> PeerSource {
        let _guard = self.runtime.enter();
        let endpoint = client_endpoint(&identity(&self.ca, "reader")).expect("client");
        PeerSource::new(self.runtime.handle().clone(), endpoint, peers)
    }

    /// The chunks of /bin/app in the sample image's base layer.
    fn app(&self) -> strata_mount::Inode {
        let (_, record) = self.store.resolve("sample:1").expect("image");
        let tree = strata_mount::load_lower(&self.store, &record).expect("tree");
        let ino = tree.lookup_path(b"bin/app").expect("bin/app");
        tree.get(ino).expect("inode").clone()
    }
}

#[test]
fn a_file_reads_back_from_a_peer_past_a_lying_one() {
    let cluster = Cluster::new();
    let liar = cluster.node("liar", Arc::new(Liar));
    let honest = cluster.node("node-a", Arc::new(StoreHandler::new(cluster.store.clone())));
    let reader = Arc::new(ChunkReader::new(Arc::new(cluster.source(vec![liar, honest])), 16 << 20));
    let app = cluster.app();
    let bytes = reader.read(&app.chunks, app.size, 0, app.size as u32).expect("read through peers");
    assert_eq!(bytes, strata_sample::random_bytes(1, 300_000));
}

#[test]
fn with_only_a_liar_or_nobody_holding_it_the_fetch_fails_and_says_why() {
    let cluster = Cluster::new();
    let liar = cluster.node("liar", Arc::new(Liar));
    let honest = cluster.node("node-a", Arc::new(StoreHandler::new(cluster.store.clone())));
    let app = cluster.app();
    let first = app.chunks[0].id;

    let err = cluster.source(vec![liar]).fetch(&first).expect_err("only a liar");
    assert!(matches!(&err, SourceError::Failed { reason, .. } if reason.contains("bad bytes")), "{err}");

    let unknown = ChunkId::of(b"no node holds this");
    let err = cluster.source(vec![honest]).fetch(&unknown).expect_err("nobody holds it");
    assert!(
        matches!(&err, SourceError::Failed { reason, .. } if reason.contains("does not hold it")),
        "{err}"
    );
}

/// Counts what a source hands out.
struct Counting<S> {
    inner: S,
    chunks: std::sync::atomic::AtomicUsize,
}

impl<S: ChunkSource> ChunkSource for Counting<S> {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, SourceError> {
        self.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.fetch(id)
    }
}

#[test]
fn an_image_only_a_peer_holds_mounts_from_its_indexes_and_reads_lazily() {
    let cluster = Cluster::new();
    let holder = cluster.node("node-a", Arc::new(StoreHandler::new(cluster.store.clone())));
    let source = cluster.source(vec![holder.clone()]);
    let connection = {
        let _guard = cluster.runtime.enter();
        let endpoint = client_endpoint(&identity(&cluster.ca, "node-b")).expect("client");
        cluster
            .runtime
            .block_on(strata_net::connect(&endpoint, holder.addr, holder.name.as_deref()))
            .expect("connect")
    };
    let strata_node::RemoteImage { id, layers, .. } = cluster
        .runtime
        .block_on(strata_node::fetch_image(&connection, "sample:1"))
        .expect("image from the peer");
    assert_eq!(Some(id), cluster.store.resolve("sample:1").ok().map(|(id, _)| id));
    let tree = strata_mount::LowerTree::build(&strata_node::indexes(&layers)).expect("tree");

    let counting = Arc::new(Counting { inner: source, chunks: Default::default() });
    let mountpoint = tempfile::tempdir().expect("mountpoint");
    let session = strata_mount::mount(tree, counting.clone(), None, mountpoint.path(), &Default::default())
        .expect("mount")
        .spawn()
        .expect("serve");
    let listing = std::fs::read_dir(mountpoint.path().join("etc")).expect("readdir").count();
    assert!(listing >= 2);
    assert_eq!(counting.chunks.load(std::sync::atomic::Ordering::Relaxed), 0, "metadata needs no chunks");
    assert_eq!(std::fs::read(mountpoint.path().join("etc/hostname")).expect("read"), b"strata-demo-v2\n");
    assert_eq!(counting.chunks.load(std::sync::atomic::Ordering::Relaxed), 1, "one small file, one chunk");
    assert_eq!(
        std::fs::read(mountpoint.path().join("bin/app")).expect("read"),
        strata_sample::random_bytes(1, 300_000)
    );
    session.umount_and_join().expect("unmount");
}

/// Never answers until the test lets it go.
struct Silent(tokio::sync::watch::Receiver<bool>);

impl Handler for Silent {
    fn handle<'a>(
        &'a self,
        _from: std::net::SocketAddr,
        _request: PeerRequest,
        _replies: &'a mut Replies,
    ) -> Answering<'a> {
        let mut released = self.0.clone();
        Box::pin(async move {
            let _ = released.wait_for(|go| *go).await;
            Ok(())
        })
    }
}

#[test]
fn a_silent_peer_costs_its_share_of_the_deadline_then_the_next_answers() {
    let cluster = Cluster::new();
    let (release, wait) = tokio::sync::watch::channel(false);
    let silent = cluster.node("silent", Arc::new(Silent(wait)));
    let honest = cluster.node("node-a", Arc::new(StoreHandler::new(cluster.store.clone())));
    let app = cluster.app();

    let source =
        cluster.source(vec![silent.clone(), honest]).with_deadline(std::time::Duration::from_secs(2));
    let bytes = source.fetch(&app.chunks[0].id).expect("the next peer answers");
    assert_eq!(bytes.len(), app.chunks[0].len as usize);

    // With nobody else to ask, the fetch fails, and says who was tried.
    let alone = cluster.source(vec![silent.clone()]).with_deadline(std::time::Duration::from_millis(300));
    let err = alone.fetch(&app.chunks[1].id).expect_err("no answer");
    let SourceError::Failed { reason, .. } = &err else { panic!("{err}") };
    assert!(reason.contains(&silent.addr.to_string()) && reason.contains("deadline"), "{reason}");
    let _ = release.send(true);
}

/// A holder that counts the requests it answers; as `old`, it answers as a
/// node from before indexes came with the record (it drops the ask).
struct Counted {
    inner: StoreHandler,
    requests: std::sync::atomic::AtomicUsize,
    old: bool,
}

impl Handler for Counted {
    fn handle<'a>(
        &'a self,
        from: std::net::SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = match request {
            PeerRequest::ResolveImage { reference, .. } if self.old => {
                PeerRequest::ResolveImage { reference, with_layer_indexes: false, zstd_indexes: false }
            }
            other => other,
        };
        self.inner.handle(from, request, replies)
    }
}

/// Answers ResolveImage with the true record followed by the index bytes
/// it is given, plain and compressed (each with the first layer's record).
struct Scripted(Arc<Store>, Vec<(Vec<u8>, Vec<u8>)>);

impl Handler for Scripted {
    fn handle<'a>(
        &'a self,
        _from: std::net::SocketAddr,
        _request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        let (id, record) = self.0.resolve("sample:1").expect("image");
        let layer = strata_types::LayerId::from_slice(&record.layers[0]).expect("layer");
        let layer_record = self.0.layer(&layer).expect("layer record");
        let image = strata_proto::v1::ImageReply {
            image_id: id.as_bytes().to_vec(),
            record: Some(record),
            startup_profile: Vec::new(),
        };
        let mut out = vec![Response { kind: Some(Kind::Image(image)) }];
        for (index, index_zstd) in &self.1 {
            let reply = strata_proto::v1::LayerIndexReply {
                index: index.clone(),
                record: layer_record.clone(),
                index_zstd: index_zstd.clone(),
            };
            out.push(Response { kind: Some(Kind::LayerIndex(reply)) });
        }
        out.push(Response { kind: Some(Kind::End(strata_proto::v1::End {})) });
        replies.all(out)
    }
}

fn connect(cluster: &Cluster, peer: &Peer) -> strata_net::quinn::Connection {
    let _guard = cluster.runtime.enter();
    let endpoint = client_endpoint(&identity(&cluster.ca, "node-b")).expect("client");
    cluster
        .runtime
        .block_on(strata_net::connect(&endpoint, peer.addr, peer.name.as_deref()))
        .expect("connect")
}

/// An image's record and its layers' indexes cross in one request (one
/// round trip before a mount); from a holder that predates that, the
/// indexes are asked for after the record, and the image is the same.
#[test]
fn an_image_and_its_indexes_come_in_one_request_and_an_older_holder_still_serves_them() {
    use std::sync::atomic::Ordering::Relaxed;
    let cluster = Cluster::new();
    let (_, record) = cluster.store.resolve("sample:1").expect("image");
    let distinct: BTreeSet<&Vec<u8>> = record.layers.iter().collect();
    assert!(distinct.len() >= 2, "the sample has layers to ask for");

    let mut images = Vec::new();
    for old in [false, true] {
        let handler = Arc::new(Counted {
            inner: StoreHandler::new(cluster.store.clone()),
            requests: Default::default(),
            old,
        });
        let peer = cluster.node(if old { "old" } else { "new" }, handler.clone());
        let connection = connect(&cluster, &peer);
        let image = cluster
            .runtime
            .block_on(strata_node::fetch_image(&connection, "sample:1"))
            .expect("image from the peer");
        let expected = if old { 1 + distinct.len() } else { 1 };
        assert_eq!(
            handler.requests.load(Relaxed),
            expected,
            "requests to the {} holder",
            if old { "old" } else { "new" }
        );
        assert_eq!(image.layers.len(), record.layers.len());
        for (layer, raw) in image.layers.iter().zip(&record.layers) {
            assert_eq!(layer.id.as_bytes().as_slice(), raw.as_slice());
        }
        // Indexes cross compressed, except from a holder that predates it.
        let raw: u64 = image.layers.iter().map(|l| l.bytes.len() as u64).sum();
        let wire: u64 = image.layers.iter().map(|l| l.wire_bytes).sum();
        if old {
            assert_eq!(wire, raw, "an old holder's indexes cross as they are");
        } else {
            assert!(wire < raw, "indexes cross compressed: {wire} bytes for {raw}");
        }
        images.push(image.layers.iter().map(|l| l.bytes.clone()).collect::<Vec<_>>());
    }
    assert_eq!(images[0], images[1]);
}

#[test]
fn an_index_of_another_layer_or_one_sent_twice_alongside_the_record_is_refused() {
    let cluster = Cluster::new();
    let (_, record) = cluster.store.resolve("sample:1").expect("image");
    let first = strata_types::LayerId::from_slice(&record.layers[0]).expect("layer");
    let true_index = cluster.store.layer_index_bytes(&first).expect("index");
    let plain = |index: &[u8]| (index.to_vec(), Vec::new());
    let zstd = |index: &[u8]| (Vec::new(), zstd::bulk::compress(index, 3).expect("compressed"));
    let true_zstd = zstd(&true_index).1;
    for (name, indexes, says) in [
        ("foreign", vec![plain(b"not this image's")], "not a layer of"),
        ("twice", vec![plain(&true_index), plain(&true_index)], "twice"),
        ("foreign-zstd", vec![zstd(b"not this image's")], "not a layer of"),
        ("twice-zstd", vec![plain(&true_index), zstd(&true_index)], "twice"),
        ("not-zstd", vec![(Vec::new(), b"plain text, not zstd".to_vec())], "compressed layer index"),
        ("cut-zstd", vec![(Vec::new(), true_zstd[..true_zstd.len() - 4].to_vec())], "compressed layer index"),
        ("both", vec![(true_index.clone(), true_zstd.clone())], "both plain and compressed"),
    ] {
        let liar = cluster.node(name, Arc::new(Scripted(cluster.store.clone(), indexes)));
        let connection = connect(&cluster, &liar);
        let err =
            cluster.runtime.block_on(strata_node::fetch_image(&connection, "sample:1")).expect_err(name);
        assert!(err.contains(says), "{name}: {err}");
        assert!(err.len() < 200, "an error names what was wrong, not the bytes: {err}");
    }
}
