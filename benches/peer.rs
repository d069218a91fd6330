//! P5: chunks between two nodes over QUIC with mutual TLS (strata-net) vs a
//! plain TCP copy of the same bytes, in the same run: on loopback, or with
//! `--link-mbit N` over a veth pair between two network namespaces the bench
//! makes, each end shaped by `tc tbf` to N Mbit/s. (Only the rate: this
//! machine's kernel has no netem, so no added delay.)
//!
//! cargo bench --profile release --bench peer -- [--size-mib 256] [--runs 3] [--streams 4]
//!     [--link-mbit 1000]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use common::{median, mib};
use strata_net::{Answering, Handler, Replies};
use strata_proto::v1::{ChunkReply, End};
use strata_tls::{generate_ca, issue_node_cert, Identity};
use strata_types::ChunkId;
use strata_wire::response::Kind;
use strata_wire::{PeerRequest, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 64 << 10;
const BATCH: usize = 64;

/// Serves chunks from memory, in their stored form.
struct Memory(HashMap<ChunkId, Vec<u8>>);

impl Handler for Memory {
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
                let stored = self.0.get(id).cloned();
                Response {
                    kind: Some(Kind::Chunk(ChunkReply {
                        id: id.as_bytes().to_vec(),
                        missing: stored.is_none(),
                        stored: stored.unwrap_or_default(),
                    })),
                }
            })
            .collect();
        out.push(Response { kind: Some(Kind::End(End {})) });
        replies.all(out)
    }
}

fn identity(ca: &strata_tls::CertPair, node: &str) -> Identity {
    Identity::from_pem(&ca.cert_pem, &issue_node_cert(ca, node).unwrap()).unwrap()
}

/// Two network namespaces joined by a veth pair, each end shaped by a token
/// bucket filter to `mbit` Mbit/s.
struct Link;

const NS: [&str; 2] = ["strata-p5-a", "strata-p5-b"];
const SERVER_IP: [u8; 4] = [10, 77, 0, 1];

fn sh(cmd: &str) {
    let status = std::process::Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "{cmd}");
}

impl Link {
    fn new(mbit: u64) -> Link {
        for ns in NS {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        sh(&format!("ip link add p5a netns {} type veth peer name p5b netns {}", NS[0], NS[1]));
        for (ns, dev, ip) in [(NS[0], "p5a", "10.77.0.1"), (NS[1], "p5b", "10.77.0.2")] {
            sh(&format!("ip -n {ns} addr add {ip}/24 dev {dev} && ip -n {ns} link set {dev} up"));
            // A burst of 1 ms at the rate (at least 1 MiB: GSO sends 64 KiB packets).
            let burst = (mbit * 1000 / 8).max(1 << 20);
            sh(&format!(
                "ip netns exec {ns} tc qdisc add dev {dev} root tbf rate {mbit}mbit burst {burst} latency 20ms"
            ));
        }
        Link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in NS {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it makes
/// stay there), or here without a link.
fn in_ns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// Where the server listens: loopback, or its end of the link.
fn server_ip(link: bool) -> [u8; 4] {
    if link {
        SERVER_IP
    } else {
        [127, 0, 0, 1]
    }
}

async fn quic(ids: &[ChunkId], chunks: Arc<Memory>, streams: usize, verify: bool, link: bool) -> f64 {
    let ca = generate_ca("bench").unwrap();
    let handle = tokio::runtime::Handle::current();
    let server = in_ns(link.then_some(NS[0]), || {
        let _runtime = handle.enter();
        strata_net::server_endpoint(SocketAddr::from((server_ip(link), 0)), &identity(&ca, "a")).unwrap()
    });
    let addr = server.local_addr().unwrap();
    tokio::spawn(strata_net::serve(server, chunks));
    let client = in_ns(link.then_some(NS[1]), || {
        let _runtime = handle.enter();
        strata_net::client_endpoint(&identity(&ca, "b")).unwrap()
    });
    let connection = strata_net::connect(&client, addr, None).await.unwrap();
    let started = Instant::now();
    let batches: Vec<Vec<ChunkId>> = ids.chunks(BATCH).map(<[ChunkId]>::to_vec).collect();
    let per_stream = batches.len().div_ceil(streams);
    let mut tasks = Vec::new();
    for share in batches.chunks(per_stream).map(<[Vec<ChunkId>]>::to_vec) {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut decoder = strata_chunk::ChunkDecoder::new().unwrap();
            for batch in share {
                for reply in strata_net::request(
                    &connection,
                    &PeerRequest::FetchChunks(batch, strata_wire::Priority::Demand),
                )
                .await
                .unwrap()
                {
                    if let Some(Kind::Chunk(c)) = reply.kind {
                        if verify {
                            let id = ChunkId::from_slice(&c.id).unwrap();
                            bytes += decoder.decode(&id, &c.stored).unwrap().len() as u64;
                        } else {
                            bytes += c.stored.len() as u64;
                        }
                    }
                }
            }
            bytes
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    connection.close(0u32.into(), b"done");
    client.wait_idle().await;
    mib(total) / secs
}

async fn tcp(total: usize, link: bool) -> f64 {
    let listener = in_ns(link.then_some(NS[0]), || {
        let l = std::net::TcpListener::bind(SocketAddr::from((server_ip(link), 0))).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let data = Arc::new(strata_sample::random_bytes(9, 1 << 20));
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut left = total;
        while left > 0 {
            let n = left.min(data.len());
            socket.write_all(&data[..n]).await.unwrap();
            left -= n;
        }
    });
    let started = Instant::now();
    let socket = in_ns(link.then_some(NS[1]), || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    });
    let mut socket = tokio::net::TcpStream::from_std(socket).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    mib(got) / started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let size = (common::arg("--size-mib", 256) as usize) << 20;
    let runs = common::arg("--runs", 3);
    let streams = common::arg("--streams", 4) as usize;
    let mbit = common::arg("--link-mbit", 0);
    let link = (mbit > 0).then(|| Link::new(mbit));
    let shaped = link.is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut encoder = strata_chunk::ChunkEncoder::new(0).unwrap();
    let mut chunks = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..size / CHUNK {
        let data = strata_sample::random_bytes(1000 + i as u64, CHUNK);
        let id = ChunkId::of(&data);
        chunks.insert(id, encoder.encode(&data));
        ids.push(id);
    }
    let chunks = Arc::new(Memory(chunks));
    let (mut t, mut q, mut qv) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        t.push(runtime.block_on(tcp(ids.len() * CHUNK, shaped)));
        q.push(runtime.block_on(quic(&ids, chunks.clone(), streams, false, shaped)));
        qv.push(runtime.block_on(quic(&ids, chunks.clone(), streams, true, shaped)));
    }
    let (t, q, qv) = (median(t), median(q), median(qv));
    let path = match mbit {
        0 => "loopback".to_owned(),
        m => format!("veth shaped to {m} Mbit/s"),
    };
    println!("| transfer, {} MiB of 64 KiB chunks, {path} | MiB/s | ÷ TCP |", size >> 20);
    println!("|---|---|---|");
    println!("| plain TCP copy (one connection) | {t:.0} | 1.00 |");
    println!("| QUIC + mTLS, FetchChunks batches of {BATCH}, {streams} streams | {q:.0} | {:.2} |", q / t);
    println!("| same, each chunk decoded and BLAKE3-verified | {qv:.0} | {:.2} |", qv / t);
}
