//! `strata serve`: this node's store served to peers over QUIC with mutual
//! TLS. (The node daemon grows from here: membership, control socket,
//! metrics.)

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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

pub fn serve(ctx: &Ctx, listen: SocketAddr, identity: &IdentityArgs) -> anyhow::Result<()> {
    let identity = load_identity(ctx, identity)?;
    std::fs::create_dir_all(&ctx.data_dir)?;
    // A read-only view, as mounts use: imports and gc go on beside it.
    let store = Arc::new(strata_mount::StoreSource::open(&ctx.store_dir()).context("opening the store")?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let endpoint = {
        let _guard = runtime.enter();
        strata_net::server_endpoint(listen, &identity)?
    };
    let addr = endpoint.local_addr()?;
    let stopping = endpoint.clone();
    crate::signals::on_termination(move |_| {
        tracing::info!("signal received: closing the endpoint");
        stopping.close(0u32.into(), b"node stopping");
    })?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "serving the store to peers");
    runtime.block_on(strata_net::serve(endpoint, Arc::new(strata_node::StoreHandler::from_view(store))));
    Ok(())
}
