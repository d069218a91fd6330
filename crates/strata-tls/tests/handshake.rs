//! Mutual TLS in memory: two rustls endpoints pumping bytes to each other,
//! no sockets. Only holders of a cluster certificate get through.

use std::sync::Arc;

use rustls::{ClientConnection, RootCertStore, ServerConnection};
use strata_tls::{generate_ca, issue_node_cert, peer_name, CertPair, Identity, ALPN};

fn identity(ca: &CertPair, node: &str) -> Identity {
    Identity::from_pem(&ca.cert_pem, &issue_node_cert(ca, node).expect("issue")).expect("identity")
}

/// Runs the handshake to its end; the error of whichever side failed.
fn handshake(
    mut client: ClientConnection,
    mut server: ServerConnection,
) -> Result<(ClientConnection, ServerConnection), String> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).map_err(|e| e.to_string())?;
        let mut slice = &buf[..];
        while !slice.is_empty() {
            server.read_tls(&mut slice).map_err(|e| e.to_string())?;
        }
        server.process_new_packets().map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).map_err(|e| e.to_string())?;
        let mut slice = &buf[..];
        while !slice.is_empty() {
            client.read_tls(&mut slice).map_err(|e| e.to_string())?;
        }
        client.process_new_packets().map_err(|e| format!("client: {e}"))?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok((client, server));
        }
    }
    Err("handshake did not finish".into())
}

fn connect(
    client: &Identity,
    server: &Identity,
    name: Option<&str>,
) -> Result<(ClientConnection, ServerConnection), String> {
    let client = ClientConnection::new(
        Arc::new(client.client_config().expect("client config")),
        peer_name(name).expect("name"),
    )
    .expect("client");
    let server =
        ServerConnection::new(Arc::new(server.server_config().expect("server config"))).expect("server");
    handshake(client, server)
}

#[test]
fn two_nodes_of_one_cluster_connect_by_name_or_by_cluster_name() {
    let ca = generate_ca("test").expect("ca");
    let (a, b) = (identity(&ca, "node-a"), identity(&ca, "node-b"));
    let (client, server) = connect(&a, &b, Some("node-b")).expect("handshake");
    assert_eq!(client.alpn_protocol(), Some(ALPN));
    assert!(
        server.peer_certificates().is_some_and(|c| !c.is_empty()),
        "the server saw the client's certificate"
    );
    connect(&a, &b, None).expect("by the cluster name");
    let err = connect(&a, &b, Some("node-c")).expect_err("b is not node-c");
    assert!(err.contains("client"), "{err}");
}

#[test]
fn a_client_of_another_cluster_is_refused_by_the_server() {
    let (ours, theirs) = (generate_ca("ours").expect("ca"), generate_ca("theirs").expect("ca"));
    let server = identity(&ours, "node-a");
    // The stranger trusts our CA (it wants in) but holds a certificate of its own CA.
    let stranger = Identity::from_pem(&ours.cert_pem, &issue_node_cert(&theirs, "intruder").expect("issue"))
        .expect("id");
    let err = connect(&stranger, &server, Some("node-a")).expect_err("refused");
    assert!(err.contains("server"), "the server refuses: {err}");
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let ca = generate_ca("ours").expect("ca");
    let server = identity(&ca, "node-a");
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let client =
        ClientConnection::new(Arc::new(config), peer_name(Some("node-a")).expect("name")).expect("client");
    let server = ServerConnection::new(Arc::new(server.server_config().expect("config"))).expect("server");
    let err = handshake(client, server).expect_err("refused");
    assert!(err.contains("server"), "{err}");
}

#[test]
fn a_server_of_another_cluster_is_refused_by_the_client() {
    let (ours, theirs) = (generate_ca("ours").expect("ca"), generate_ca("theirs").expect("ca"));
    let client = identity(&ours, "node-a");
    let impostor = Identity::from_pem(&theirs.cert_pem, &issue_node_cert(&theirs, "node-b").expect("issue"))
        .expect("id");
    let err = connect(&client, &impostor, Some("node-b")).expect_err("refused");
    assert!(err.contains("client"), "the client refuses: {err}");
}
