//! Real QUIC on loopback: mutual TLS, one request per stream, bad frames
//! answered with an error while the connection lives on.

use std::net::SocketAddr;
use std::sync::Arc;

use strata_net::{
    client_endpoint, connect, read_responses, request, serve, server_endpoint, Answering, Handler, Replies,
};
use strata_tls::{generate_ca, issue_node_cert, CertPair, Identity};
use strata_types::ChunkId;
use strata_wire::response::Kind;
use strata_wire::{ErrorCode, PeerRequest, Priority, Response};

/// Says every chunk is missing: enough to see requests arrive and replies return.
struct Nothing;

impl Handler for Nothing {
    fn handle<'a>(
        &'a self,
        _from: std::net::SocketAddr,
        request: PeerRequest,
        replies: &'a mut Replies,
    ) -> Answering<'a> {
        let mut out = Vec::new();
        if let PeerRequest::FetchChunks(ids, _) = request {
            for id in ids {
                out.push(Response {
                    kind: Some(Kind::Chunk(strata_proto::v1::ChunkReply {
                        id: id.as_bytes().to_vec(),
                        stored: Vec::new(),
                        missing: true,
                    })),
                });
            }
        }
        out.push(Response { kind: Some(Kind::End(strata_proto::v1::End {})) });
        replies.all(out)
    }
}

fn identity(ca: &CertPair, node: &str) -> Identity {
    Identity::from_pem(&ca.cert_pem, &issue_node_cert(ca, node).expect("issue")).expect("identity")
}

async fn node(ca: &CertPair) -> SocketAddr {
    let endpoint =
        server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity(ca, "server")).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(serve(endpoint, Arc::new(Nothing)));
    addr
}

fn error_code(responses: &[Response]) -> Option<i32> {
    match responses.last().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Error(e)) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_peer_fetches_over_mutual_tls() {
    let ca = generate_ca("test").expect("ca");
    let addr = node(&ca).await;
    let client = client_endpoint(&identity(&ca, "client")).expect("client");
    let connection = connect(&client, addr, Some("server")).await.expect("connect");
    let ids: Vec<ChunkId> = (0..5u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
    let replies = request(&connection, &PeerRequest::FetchChunks(ids.clone(), Priority::Demand))
        .await
        .expect("request");
    assert_eq!(replies.len(), 6);
    for (reply, id) in replies.iter().zip(&ids) {
        match &reply.kind {
            Some(Kind::Chunk(c)) => assert_eq!((&c.id[..], c.missing), (&id.as_bytes()[..], true)),
            other => panic!("not a chunk reply: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_end_their_stream_not_the_connection() {
    let ca = generate_ca("test").expect("ca");
    let addr = node(&ca).await;
    let client = client_endpoint(&identity(&ca, "client")).expect("client");
    let connection = connect(&client, addr, None).await.expect("connect");

    // A frame whose body is not a request.
    let (mut send, recv) = connection.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await.expect("write");
    send.finish().expect("finish");
    assert_eq!(error_code(&read_responses(recv).await.expect("reply")), Some(ErrorCode::BadFrame as i32));

    // A length over the limit, refused before its body.
    let (mut send, recv) = connection.open_bi().await.expect("stream");
    send.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    assert_eq!(error_code(&read_responses(recv).await.expect("reply")), Some(ErrorCode::TooLarge as i32));
    drop(send);

    // A stream that ends mid-frame.
    let (mut send, recv) = connection.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 9, 1, 2]).await.expect("write");
    send.finish().expect("finish");
    assert_eq!(error_code(&read_responses(recv).await.expect("reply")), Some(ErrorCode::BadFrame as i32));

    // The same connection still serves.
    let replies =
        request(&connection, &PeerRequest::FetchChunks(vec![], Priority::Demand)).await.expect("request");
    assert!(matches!(replies.last().and_then(|r| r.kind.as_ref()), Some(Kind::End(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_cluster_certificate_gets_no_answer() {
    let ca = generate_ca("test").expect("ca");
    let addr = node(&ca).await;
    let other = generate_ca("other").expect("other ca");
    // It trusts our CA but holds a certificate of another.
    let stranger =
        Identity::from_pem(&ca.cert_pem, &issue_node_cert(&other, "stranger").expect("issue")).expect("id");
    let client = client_endpoint(&stranger).expect("client");
    let result = async {
        let connection = connect(&client, addr, None).await?;
        request(&connection, &PeerRequest::FetchChunks(vec![], Priority::Demand)).await
    }
    .await;
    assert!(result.is_err(), "a stranger was served: {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_dials_a_peer_once_however_many_callers_ask_at_once() {
    let ca = generate_ca("test").expect("ca");
    let server =
        server_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &identity(&ca, "server")).expect("endpoint");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(serve(server.clone(), Arc::new(Nothing)));
    let client = client_endpoint(&identity(&ca, "client")).expect("client");
    let pool = Arc::new(strata_net::Pool::new(client, Arc::new(Nothing)));

    let callers: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get(addr).await.expect("connection").stable_id() })
        })
        .collect();
    let mut ids = Vec::new();
    for caller in callers {
        ids.push(caller.await.expect("caller"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one connection for every caller");
    assert_eq!(server.open_connections(), 1, "the server saw one connection");

    // Forgotten, it is dialled again, once.
    pool.forget(addr);
    let again = pool.get(addr).await.expect("redial").stable_id();
    assert_ne!(again, ids[0]);
    assert_eq!(pool.get(addr).await.expect("reuse").stable_id(), again);
}
