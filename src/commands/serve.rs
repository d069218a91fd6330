//! A node's TLS identity, as `strata serve` and peer mounts load it.

use std::path::PathBuf;

use anyhow::Context;
use strata_tls::{CertPair, Identity};

use super::Ctx;
use crate::cli::IdentityArgs;

/// This node's TLS identity from CERT_DIR (ca.pem, NODE.pem, NODE-key.pem).
pub fn load_identity(ctx: &Ctx, args: &IdentityArgs) -> anyhow::Result<Identity> {
    let node = args.node.as_deref().context("--node NAME is needed: the name of this node's certificate")?;
    let dir: PathBuf = args.cert_dir.clone().unwrap_or_else(|| ctx.data_dir.join("certs"));
    let read = |name: String| {
        let path = dir.join(&name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make it with `strata cert init-ca` and `strata cert issue --node {node}`)",
                path.display()
            )
        })
    };
    let pair = CertPair { cert_pem: read(format!("{node}.pem"))?, key_pem: read(format!("{node}-key.pem"))? };
    Ok(Identity::from_pem(&read("ca.pem".into())?, &pair)?)
}
