//! A node's TLS identity, as `strata serve` and peer mounts load it.

use std::path::{Path, PathBuf};

use strata_tls::{CertPair, Identity};

use crate::error::{Context, Result};

/// Which certificate to load, from where.
#[derive(Clone, Debug, Default)]
pub struct IdentitySpec {
    /// The certificate's name: CERT_DIR/NAME.pem and NAME-key.pem.
    pub node: Option<String>,
    /// Where ca.pem and the pair are [default: DATA_DIR/certs].
    pub cert_dir: Option<PathBuf>,
}

/// This node's TLS identity from CERT_DIR (ca.pem, NODE.pem, NODE-key.pem).
///
/// Errors: no name given; a file missing or unreadable (the message says
/// how to make it); PEM that does not parse or a key that does not match.
pub fn load_identity(data_dir: &Path, spec: &IdentitySpec) -> Result<Identity> {
    let node = spec.node.as_deref().context("--node NAME is needed: the name of this node's certificate")?;
    let dir: PathBuf = spec.cert_dir.clone().unwrap_or_else(|| data_dir.join("certs"));
    let read = |name: String| {
        let path = dir.join(&name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make it with `strata cert init-ca --dir {dir}` and `strata cert issue --node {node} --dir {dir}`)",
                path.display(),
                dir = dir.display()
            )
        })
    };
    let pair = CertPair { cert_pem: read(format!("{node}.pem"))?, key_pem: read(format!("{node}-key.pem"))? };
    Ok(Identity::from_pem(&read("ca.pem".into())?, &pair)?)
}
