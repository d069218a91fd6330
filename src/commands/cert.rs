//! `strata cert`: the cluster CA and node certificates, as PEM files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use strata_tls::CertPair;

use super::Ctx;
use crate::output::outln;

fn cert_dir(ctx: &Ctx, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| ctx.dir.path.join("certs"))
}

pub fn init_ca(ctx: &Ctx, dir: Option<PathBuf>, cluster: &str) -> anyhow::Result<()> {
    let dir = cert_dir(ctx, dir);
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert.exists() || key.exists() {
        bail!("{} already holds a CA; remove it first to make a new one", dir.display());
    }
    let ca = strata_tls::generate_ca(cluster)?;
    write_pair(&dir, &ca, &cert, &key)?;
    report(ctx, "CA", &cert, &key)
}

pub fn issue(ctx: &Ctx, dir: Option<PathBuf>, node: &str) -> anyhow::Result<()> {
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        bail!("node name {node:?}: use letters, digits, '-' and '.' (it is a DNS name in the certificate)");
    }
    let dir = cert_dir(ctx, dir);
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run `strata cert init-ca` first)", path.display()))
    };
    let ca = CertPair { cert_pem: read("ca.pem")?, key_pem: read("ca-key.pem")? };
    let pair = strata_tls::issue_node_cert(&ca, node)?;
    let (cert, key) = (dir.join(format!("{node}.pem")), dir.join(format!("{node}-key.pem")));
    write_pair(&dir, &pair, &cert, &key)?;
    report(ctx, &format!("node {node}"), &cert, &key)
}

/// Writes the certificate (0644) and the key (0600, never world-readable,
/// not even for a moment).
fn write_pair(dir: &Path, pair: &CertPair, cert: &Path, key: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |path: &Path, data: &str, mode: u32| -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(data.as_bytes())?;
        file.sync_all()?;
        Ok(())
    };
    write(key, &pair.key_pem, 0o600)?;
    write(cert, &pair.cert_pem, 0o644)
}

fn report(ctx: &Ctx, what: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    if ctx.json {
        return ctx.print_json(&json!({ "certificate": cert, "key": key }));
    }
    outln!("{what} certificate: {}\n{what} key:         {}", cert.display(), key.display());
    Ok(())
}
