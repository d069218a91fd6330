//! The cluster's certificates and its mutual-TLS configurations: a cluster CA
//! (made once, kept by the operator), node certificates it signs, and rustls
//! configurations under which a node admits only peers holding such a
//! certificate — checked in the handshake, before any request is read.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol of the peer protocol.
pub const ALPN: &[u8] = b"strata/1";
/// Every node certificate also names this, so a client that knows only a
/// peer's address can still check that it is a node of the cluster.
pub const CLUSTER_NAME: &str = "strata-node";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a cluster CA.
pub fn generate_ca(cluster: &str) -> Result<CertPair, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("{cluster} cluster CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues the certificate of node `node` (its name, and [`CLUSTER_NAME`]),
/// good for both ends of a connection.
pub fn issue_node_cert(ca: &CertPair, node: &str) -> Result<CertPair, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node.to_owned(), CLUSTER_NAME.to_owned()])?;
    params.distinguished_name = name(node);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// What a node presents and trusts.
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The cluster CA's certificate, and this node's certificate and key.
    pub fn from_pem(ca_cert_pem: &str, node: &CertPair) -> Result<Self, TlsError> {
        let ca = certs(ca_cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Pem { what: "CA certificate", reason: "no certificate".into() })?;
        let chain = certs(&node.cert_pem, "node certificate")?;
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(node.key_pem.as_bytes())
            .map_err(|e| TlsError::Pem { what: "node key", reason: e.to_string() })?;
        Ok(Self { ca, chain, key })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// Accepts only clients with a certificate of the cluster CA.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Presents this node's certificate and accepts only servers with one of
    /// the cluster CA.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The name a client checks a peer's certificate against.
pub fn peer_name(node: Option<&str>) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(node.unwrap_or(CLUSTER_NAME).to_owned())
        .map_err(|e| TlsError::Pem { what: "peer name", reason: e.to_string() })
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, reason: e.to_string() })
}
