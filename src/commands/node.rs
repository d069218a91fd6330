//! `strata serve` (the node) and `strata peers`.
//!
//! The node owns the store while it runs. Commands that change the store
//! reach it through the control socket (DATA_DIR/node.sock), and so do mount
//! processes for images and chunks only peers hold. On SIGTERM the node
//! leaves the cluster, closes its endpoint and control socket, and flushes
//! the store; mounts stay live in their own processes, reading what is
//! local, while reads of chunks not yet here fail after the fetch deadline
//! until a node runs on the data dir again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use strata_node::{Caps, MemberState, Node, NodeConfig};

use super::Ctx;
use crate::cli::ServeArgs;
use crate::control::{self, Forwarded, Reply, Request};

/// `[node]` settings with the flags laid over them.
fn effective(ctx: &Ctx, args: &ServeArgs) -> crate::config::NodeSettings {
    let mut s = ctx.settings.node.clone();
    if let Some(name) = &args.identity.node {
        s.name = Some(name.clone());
    }
    if let Some(dir) = &args.identity.cert_dir {
        s.cert_dir = Some(dir.clone());
    }
    if let Some(listen) = &args.listen {
        s.listen = listen.clone();
    }
    if args.advertise.is_some() {
        s.advertise = args.advertise.clone();
    }
    if !args.seeds.is_empty() {
        s.seeds = args.seeds.clone();
    }
    if let Some(metrics) = &args.metrics {
        s.metrics_listen = metrics.clone();
    }
    if let Some(deadline) = args.fetch_deadline {
        s.fetch_deadline_secs = deadline;
    }
    s
}

/// host:port to an address; a name that does not resolve yet (a peer
/// still starting) is asked again for a while.
async fn resolve(what: &str, addr: &str, patience: Duration) -> anyhow::Result<SocketAddr> {
    let until = tokio::time::Instant::now() + patience;
    loop {
        match tokio::net::lookup_host(addr).await.map(|mut a| a.next()) {
            Ok(Some(a)) => return Ok(a),
            result => {
                if tokio::time::Instant::now() >= until {
                    let why = match result {
                        Err(e) => e.to_string(),
                        _ => "no address".into(),
                    };
                    bail!("{what} {addr:?} does not resolve: {why}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub fn serve_node(ctx: &Ctx, args: &ServeArgs) -> anyhow::Result<()> {
    let settings = effective(ctx, args);
    let name = settings.name.clone().context(
        "the node needs a name: --node NAME or [node] name (its certificate is CERT_DIR/NAME.pem)",
    )?;
    let identity = super::serve::load_identity(
        ctx,
        &crate::cli::IdentityArgs {
            node: Some(settings.cert_name.clone().unwrap_or_else(|| name.clone())),
            cert_dir: settings.cert_dir.clone(),
        },
    )?;
    anyhow::ensure!(settings.fetch_deadline_secs > 0.0, "the fetch deadline must be positive");
    std::fs::create_dir_all(&ctx.data_dir)?;
    if control::connect(&ctx.data_dir).is_some() {
        bail!("a node already runs on {}", ctx.data_dir.display());
    }
    let store = Arc::new(ctx.open_write_store()?);
    // Signals are taken from here on: the first stops the node cleanly.
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel::<u32>(4);
    crate::signals::on_termination(move |n| {
        if n > 1 {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        let _ = stop_tx.try_send(n);
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(ctx, settings, name, identity, store, stop_rx));
    // Control connections of live mounts block in reads: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(
    ctx: &Ctx,
    settings: crate::config::NodeSettings,
    name: String,
    identity: strata_tls::Identity,
    store: Arc<strata_store::Store>,
    mut stop_rx: tokio::sync::mpsc::Receiver<u32>,
) -> anyhow::Result<()> {
    let listen = resolve("listen address", &settings.listen, Duration::ZERO).await?;
    let advertise = match &settings.advertise {
        Some(a) => Some(resolve("advertised address", a, Duration::from_secs(30)).await?),
        None => None,
    };
    let mut seeds = Vec::new();
    for seed in &settings.seeds {
        match resolve("seed", seed, Duration::from_secs(30)).await {
            Ok(addr) => seeds.push(addr),
            Err(e) => tracing::warn!(error = %e, "seed skipped"),
        }
    }
    let config = NodeConfig {
        name,
        listen,
        advertise,
        seeds,
        fetch_deadline: Duration::from_secs_f64(settings.fetch_deadline_secs),
        announce_interval: Duration::from_secs_f64(settings.announce_interval_secs.max(0.5)),
        directory_replicas: settings.directory_replicas.max(1),
        caps: Caps {
            node: Some(settings.max_upload_bytes_per_sec).filter(|c| *c > 0),
            per_peer: Some(settings.max_upload_per_peer_bytes_per_sec).filter(|c| *c > 0),
        },
    };
    let node = Node::start(config, &identity, store).await?;

    let socket = control::socket_path(&ctx.data_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let template = Arc::new(ctx.for_caller(node.clone(), false));
    tokio::spawn(accept_control(listener, template, node.clone()));

    let metrics_addr = match settings.metrics_listen.trim() {
        "" => None,
        addr => {
            let addr = resolve("metrics address", addr, Duration::ZERO).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            let bound = listener.local_addr()?;
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get({
                        let node = node.clone();
                        move || async move { node.metrics_text() }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "metrics server stopped");
                }
            });
            Some(bound)
        }
    };

    // What scripts wait for; nobody may be reading any more by the time the
    // node stops, so write errors are not fatal.
    let mut ready = format!("listening on {}\n", node.addr());
    if let Some(addr) = metrics_addr {
        ready.push_str(&format!("metrics on http://{addr}/metrics\n"));
    }
    ready.push_str(&format!("control socket {}\n", socket.display()));
    let mut stdout = std::io::stdout();
    let _ = std::io::Write::write_all(&mut stdout, ready.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut stdout));
    tracing::info!(node = node.name(), addr = %node.addr(), "node ready");

    stop_rx.recv().await;
    let live = crate::mounts::list(&ctx.data_dir)
        .map(|records| records.into_iter().filter(|(r, _)| crate::mounts::process_alive(r.pid)).count())
        .unwrap_or(0);
    tracing::info!(
        live_mounts = live,
        "stopping: leaving the cluster; mounts stay live in their own processes and read what is local, \
         reads of chunks not yet here fail after the fetch deadline until a node runs on this data dir again"
    );
    let _ = std::fs::remove_file(&socket);
    node.shutdown().await;
    tracing::info!("node stopped");
    Ok(())
}

async fn accept_control(listener: tokio::net::UnixListener, template: Arc<Ctx>, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_control(template.clone(), node.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One control connection, on a task of its own: requests answered in
/// turn until it closes. Idle connections (mounts keep a few) hold no thread.
async fn serve_control(template: Arc<Ctx>, node: Arc<Node>, mut stream: tokio::net::UnixStream) {
    loop {
        let request: Request = match control::read_message_async(&mut stream).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::info!(error = %e, "bad control request");
                return;
            }
        };
        let reply = answer(&template, &node, request).await;
        let written = match control::write_message_async(&mut stream, &reply).await {
            // A reply the client could not take (a command's output over
            // the message limit): it learns why instead of a closed socket.
            Err(e @ strata_control::ControlError::TooLarge { .. }) => {
                let failed = Reply::Failed { error: format!("the reply was too large to send: {e}") };
                control::write_message_async(&mut stream, &failed).await
            }
            other => other,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "control reply not delivered");
            return;
        }
    }
}

async fn answer(template: &Arc<Ctx>, node: &Arc<Node>, request: Request) -> Reply {
    match request {
        Request::Run { command, json } => {
            let (template, node) = (template.clone(), node.clone());
            // Commands do blocking store work: on the blocking pool.
            tokio::task::spawn_blocking(move || run_command(&template, &node, command, json))
                .await
                .unwrap_or_else(|e| Reply::Failed { error: format!("the command panicked: {e}") })
        }
        Request::Pull { reference } => match node.pull_image(&reference).await {
            Ok(id) => Reply::Pulled { image: id.to_hex() },
            Err(e) => Reply::Failed { error: e.to_string() },
        },
        Request::Chunk { id } => match node.fetch_chunk(id).await {
            Ok(stored) => Reply::Chunk { stored: stored.as_ref().clone() },
            Err(e) => Reply::Failed { error: e.to_string() },
        },
        Request::Profile { image, chunks } => match node.record_profile(image, chunks).await {
            Ok(()) => Reply::Done { output: Vec::new(), error: None },
            Err(e) => Reply::Failed { error: e.to_string() },
        },
    }
}

/// A routed command, run on the node's store for a caller.
fn run_command(template: &Ctx, node: &Arc<Node>, command: Forwarded, json: bool) -> Reply {
    let _span = tracing::info_span!("control", command = ?command).entered();
    let changes_holdings = matches!(command, Forwarded::Import { .. } | Forwarded::Commit { .. });
    let ctx = template.for_caller(node.clone(), json);
    let result = super::run_forwarded(&ctx, command);
    if changes_holdings && result.is_ok() {
        let node = node.clone();
        node.runtime().clone().spawn(async move {
            if let Err(e) = node.announce_all().await {
                tracing::warn!(error = %e, "announcing new holdings");
            }
        });
    }
    Reply::Done { output: ctx.take_output(), error: result.err().map(|e| crate::error_chain(&e)) }
}

/// `strata peers`: the members this node's gossip knows.
pub fn peers(ctx: &Ctx) -> anyhow::Result<()> {
    let node = ctx.node.as_ref().with_context(|| {
        format!("no node runs on {}: start one with `strata serve`", ctx.data_dir.display())
    })?;
    let mut members = node.members();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.json {
        return ctx.print_json(&json!({
            "self": { "name": node.name(), "addr": node.addr() },
            "members": members,
        }));
    }
    let mut rows = vec![vec![node.name().to_owned(), node.addr().to_string(), "self".into()]];
    rows.extend(members.iter().map(|m| {
        let state = match m.state {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        };
        vec![m.name.clone(), m.addr.to_string(), state.into()]
    }));
    for line in crate::output::table_lines(&["NODE", "ADDRESS", "STATE"], &rows) {
        ctx.println(line);
    }
    Ok(())
}
