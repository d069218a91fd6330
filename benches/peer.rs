//! P5: chunks between two nodes over QUIC with mutual TLS (strata-net) vs a
//! plain TCP copy of the same bytes, on loopback, in the same run.
//!
//! cargo bench --profile release --bench peer -- [--size-mib 256] [--runs 3] [--streams 4]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use common::{median, mib};
use strata_net::Handler;
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
    fn handle(&self, _from: std::net::SocketAddr, request: PeerRequest) -> Vec<Response> {
        let PeerRequest::FetchChunks(ids) = request else { return vec![] };
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
        out
    }
}

fn identity(ca: &strata_tls::CertPair, node: &str) -> Identity {
    Identity::from_pem(&ca.cert_pem, &issue_node_cert(ca, node).unwrap()).unwrap()
}

async fn quic(ids: &[ChunkId], chunks: Arc<Memory>, streams: usize, verify: bool) -> f64 {
    let ca = generate_ca("bench").unwrap();
    let server =
        strata_net::server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity(&ca, "a")).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(strata_net::serve(server, chunks));
    let client = strata_net::client_endpoint(&identity(&ca, "b")).unwrap();
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
                for reply in strata_net::request(&connection, &PeerRequest::FetchChunks(batch)).await.unwrap()
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

async fn tcp(total: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
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
        t.push(runtime.block_on(tcp(ids.len() * CHUNK)));
        q.push(runtime.block_on(quic(&ids, chunks.clone(), streams, false)));
        qv.push(runtime.block_on(quic(&ids, chunks.clone(), streams, true)));
    }
    let (t, q, qv) = (median(t), median(q), median(qv));
    println!("| transfer, {} MiB of 64 KiB chunks, loopback | MiB/s | ÷ TCP |", size >> 20);
    println!("|---|---|---|");
    println!("| plain TCP copy (one connection) | {t:.0} | 1.00 |");
    println!("| QUIC + mTLS, FetchChunks batches of {BATCH}, {streams} streams | {q:.0} | {:.2} |", q / t);
    println!("| same, each chunk decoded and BLAKE3-verified | {qv:.0} | {:.2} |", qv / t);
}
