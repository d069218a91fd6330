//! Chunks fetched from peers over real QUIC on loopback, every one verified:
//! a lying peer is caught and the next peer gives the right bytes.

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
