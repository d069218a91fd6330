//! The node process (`strata serve`): the node, its control socket and its
//! metrics endpoint.
//!
//! The node owns the store while it runs. Commands that change the store
//! reach it through the control socket (DATA_DIR/node.sock), and so do mount
//! processes for images and chunks only peers hold. On SIGTERM the node
//! leaves the cluster, closes its endpoint and control socket, and flushes
//! the store; mounts stay live in their own processes, reading what is
//! local, while reads of chunks not yet here fail after the fetch deadline
//! until a node runs on the data dir again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_control::{
    read_message_async, socket_path, write_message_async, Command, ControlError, Progress, Reply, Request,
};
use strata_node::{Caps, Node, NodeConfig};
use tokio::io::AsyncReadExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::cancel::Cancel;
use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Error, Result};
use crate::identity::IdentitySpec;
use crate::settings::{CongestionControl, NodeSettings, SnapshotterSettings};

/// Where a started node can be reached; what `strata serve` prints.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The QUIC address peers reach.
    pub addr: SocketAddr,
    /// The metrics endpoint, when one is configured.
    pub metrics: Option<SocketAddr>,
    pub control_socket: PathBuf,
    /// containerd's proxy snapshotter, when one is configured.
    pub snapshotter_socket: Option<PathBuf>,
}

/// Progress steps buffered for a caller that reads slowly; more are
/// coalesced (byte counts) or dropped (layer names) rather than waited for.
const PROGRESS_BUFFER: usize = 64;

/// Blob bytes per [`Progress::Advance`] sent to a caller, at least.
const ADVANCE_STEP: u64 = 1 << 20;

/// Runs the node on `dir` with `settings` until `stop` receives (or its
/// senders are gone): the binary sends on SIGTERM, SIGINT or SIGHUP. Then
/// commands running for callers are cancelled, the node leaves the
/// cluster, and the store is flushed. `on_ready` is called once it serves.
///
/// Errors: no name; identity files missing or invalid; a node already runs
/// on the data dir; the store, the QUIC endpoint, the control socket or the
/// metrics address cannot be had.
pub fn serve_node(
    dir: &DataDir,
    settings: NodeSettings,
    snapshotter: SnapshotterSettings,
    stop: tokio::sync::mpsc::Receiver<()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<()> {
    let name = settings.name.clone().context(
        "the node needs a name: --node NAME or [node] name (its certificate is CERT_DIR/NAME.pem)",
    )?;
    let identity = crate::identity::load_identity(
        &dir.path,
        &IdentitySpec {
            node: Some(settings.cert_name.clone().unwrap_or_else(|| name.clone())),
            cert_dir: settings.cert_dir.clone(),
        },
    )?;
    if settings.fetch_deadline_secs.is_nan() || settings.fetch_deadline_secs <= 0.0 {
        refuse!("the fetch deadline must be positive");
    }
    std::fs::create_dir_all(&dir.path)?;
    if strata_control::connect(&dir.path).is_some() {
        refuse!("a node already runs on {}", dir.path.display());
    }
    let store = Arc::new(dir.open_write_store()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(dir, settings, snapshotter, name, identity, store, stop, on_ready));
    // Control connections of live mounts block in reads: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// How long a seed has to answer before `strata serve` warns of it.
const SEED_PATIENCE: Duration = Duration::from_secs(10);

/// Warns, once, of each seed no live member answers at after
/// [`SEED_PATIENCE`] (a wrong address, no node there, UDP blocked); gossip
/// keeps asking it meanwhile, and `strata peers` shows it.
async fn warn_of_silent_seeds(node: std::sync::Weak<Node>) {
    tokio::time::sleep(SEED_PATIENCE).await;
    let Some(node) = node.upgrade() else { return };
    let members = node.members();
    for seed in node.seeds() {
        let answered = members.iter().any(|m| m.addr == seed && m.state != strata_node::MemberState::Down);
        if !answered {
            tracing::warn!(
                %seed,
                "no node answers at this seed after {}s: check its address, that a node runs there, and that \
                 UDP reaches it (QUIC); gossip keeps asking",
                SEED_PATIENCE.as_secs()
            );
        }
    }
}

/// host:port to an address; a name that does not resolve yet (a peer
/// still starting) is asked again for up to `patience`.
async fn resolve(what: &str, addr: &str, patience: Duration) -> Result<SocketAddr> {
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
                    refuse!("{what} {addr:?} does not resolve: {why}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The node's cache settings, checked.
///
/// Errors: watermarks not within 0 < low < high <= 1; negative or
/// non-finite seconds.
fn cache_config(cache: &crate::settings::CacheSettings) -> Result<strata_node::CacheConfig> {
    let (low, high) = (cache.low_watermark, cache.high_watermark);
    if !(low > 0.0 && low < high && high <= 1.0) {
        refuse!("[cache] watermarks: low_watermark {low} and high_watermark {high} must satisfy 0 < low < high <= 1");
    }
    let seconds = |key: &str, v: f64| -> Result<Duration> {
        if !v.is_finite() || v < 0.0 {
            refuse!("[cache] {key} = {v}: a number of seconds, 0 or more");
        }
        Ok(Duration::from_secs_f64(v))
    };
    Ok(strata_node::CacheConfig {
        max_bytes: Some(cache.max_bytes).filter(|b| *b > 0),
        min_free_bytes: Some(cache.min_free_bytes).filter(|b| *b > 0),
        high,
        low,
        grace: seconds("grace_secs", cache.grace_secs)?,
        interval: seconds("interval_secs", cache.interval_secs)?.max(Duration::from_millis(100)),
    })
}

/// `[node] initial_window_bytes`: 0 for quinn's default, else between two
/// full-size datagrams (quinn sends nothing while a packet would not fit
/// the window) and the send window; `[node] congestion_control`: "cubic"
/// or "bbr".
fn transport_settings(settings: &NodeSettings) -> Result<strata_net::TransportSettings> {
    let window = settings.initial_window_bytes;
    const LEAST: u64 = 2 * 1500;
    const MOST: u64 = 32 << 20;
    if window != 0 && !(LEAST..=MOST).contains(&window) {
        refuse!("[node] initial_window_bytes = {window}: bytes (not packets), 0 for the default or {LEAST} to {MOST}");
    }
    let congestion = match settings.congestion_control {
        CongestionControl::Cubic => strata_net::Congestion::Cubic,
        CongestionControl::Bbr => strata_net::Congestion::Bbr,
    };
    Ok(strata_net::TransportSettings { initial_window: Some(window).filter(|w| *w > 0), congestion })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    dir: &DataDir,
    settings: NodeSettings,
    snapshotter: SnapshotterSettings,
    name: String,
    identity: strata_tls::Identity,
    store: Arc<strata_store::Store>,
    mut stop: tokio::sync::mpsc::Receiver<()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<()> {
    let listen = resolve("listen address", &settings.listen, Duration::ZERO).await?;
    let advertise = match &settings.advertise {
        Some(a) => Some(resolve("advertised address", a, Duration::from_secs(30)).await?),
        None => None,
    };
    let mut seeds = Vec::new();
    let mut unresolved = Vec::new();
    for seed in &settings.seeds {
        match resolve("seed", seed, Duration::from_secs(30)).await {
            Ok(addr) => seeds.push(addr),
            Err(e) => {
                tracing::warn!(error = %e, "seed skipped: gossip cannot ask it (`strata peers` shows it)");
                unresolved.push(seed.clone());
            }
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
        cache: cache_config(&dir.settings.cache)?,
        background: strata_node::BackgroundConfig {
            mode: settings.background_fetch,
            rate: Some(settings.background_rate_bytes_per_sec).filter(|r| *r > 0),
            requests: settings.background_requests.max(1),
        },
        transport: transport_settings(&settings)?,
    };
    let node = Node::start(config, &identity, store).await?;
    node.set_unresolved_seeds(unresolved);
    tokio::spawn(warn_of_silent_seeds(Arc::downgrade(&node)));
    // The cache never evicts what live mounts use: the data dir's mount
    // records say which (a mount's own process serves it, not the node).
    let mounts_dir = dir.path.clone();
    node.set_in_use(Box::new(move || match crate::mount::mounted_image_ids(&mounts_dir) {
        Ok(mounted) => Some(mounted.into_iter().filter_map(|(id, _)| id.parse().ok()).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "reading the mount records failed");
            None
        }
    }));

    let socket = socket_path(&dir.path);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let control = Arc::new(Control {
        dir: dir.in_node(node.clone()),
        node: node.clone(),
        stopping: Cancel::new(),
        mounts: Default::default(),
    });
    tokio::spawn(accept_control(listener, control.clone()));

    let metrics = match settings.metrics_listen.trim() {
        "" => None,
        addr => Some(
            serve_metrics(control.clone(), resolve("metrics address", addr, Duration::ZERO).await?).await?,
        ),
    };
    let snapshotter = match &snapshotter.socket {
        Some(path) => {
            let root = snapshotter.root.clone().unwrap_or_else(|| dir.path.join("snapshotter"));
            Some(start_snapshotter(control.dir.clone(), root, path.clone()).await?)
        }
        None => None,
    };
    on_ready(&Ready {
        addr: node.addr(),
        metrics,
        control_socket: socket.clone(),
        snapshotter_socket: snapshotter.as_ref().map(|s| s.socket.clone()),
    });
    tracing::info!(node = node.name(), addr = %node.addr(), "node ready");

    stop.recv().await;
    // An import running for a caller stops, adding nothing, before the
    // store closes under it.
    control.stopping.cancel();
    let live = crate::mounts::list(&dir.path)
        .map(|records| records.into_iter().filter(|(r, _)| crate::mounts::process_alive(r.pid)).count())
        .unwrap_or(0);
    tracing::info!(
        live_mounts = live,
        "stopping: leaving the cluster; mounts stay live in their own processes and read what is local, \
         reads of chunks not yet here fail after the fetch deadline until a node runs on this data dir again"
    );
    let _ = std::fs::remove_file(&socket);
    if let Some(snapshotter) = snapshotter {
        snapshotter.stop().await;
    }
    node.shutdown().await;
    tracing::info!("node stopped");
    Ok(())
}

/// The containerd snapshotter while it serves.
struct RunningSnapshotter {
    socket: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSnapshotter {
    /// Stops accepting calls, lets calls in flight finish (containerd
    /// retries a refused dial), and removes the socket. Snapshots, their
    /// directories and the mounts of running containers stay.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Opens the snapshots kept in the node's store with their directories
/// under `root`, remote snapshots from the node ([`NodeLayers`]), and
/// serves containerd's snapshots API on `socket`.
///
/// [`NodeLayers`]: crate::snapshotter::NodeLayers
async fn start_snapshotter(dir: DataDir, root: PathBuf, socket: PathBuf) -> Result<RunningSnapshotter> {
    let snapshots = tokio::task::spawn_blocking(move || -> Result<_> {
        let store = dir.read_store()?;
        let layers = Arc::new(crate::snapshotter::NodeLayers::new(dir));
        Ok(strata_snapshotter::Snapshots::open(store, &root)?.with_layers(layers))
    })
    .await
    .map_err(std::io::Error::other)??;
    let listener = strata_snapshotter::bind(&socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) = strata_snapshotter::serve(Arc::new(snapshots), listener, shutdown).await {
            tracing::error!(error = %e, "the containerd snapshotter stopped");
        }
    });
    Ok(RunningSnapshotter { socket, stop, task })
}

/// `/metrics` (Prometheus text) and `/healthz` on `addr`; returns the bound address.
async fn serve_metrics(control: Arc<Control>, addr: SocketAddr) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                let mut text = control.node.metrics_text();
                let body_end = text.trim_end_matches("# EOF\n").len();
                text.truncate(body_end);
                let mut mounts = control.mounts.lock();
                // A mount whose process died without its last report.
                mounts.retain(|(_, pid), _| crate::mounts::process_alive(*pid));
                crate::metrics::mounts_text(&mut text, &mounts);
                text.push_str("# EOF\n");
                text
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// What every control connection serves from.
struct Control {
    /// The data dir, with the node in it.
    dir: DataDir,
    node: Arc<Node>,
    /// Cancelled when the node stops: the parent of every command's cancel.
    stopping: Cancel,
    /// The latest read counters of each live mount on the data dir, by
    /// mountpoint and serving process.
    mounts: parking_lot::Mutex<crate::metrics::MountCounters>,
}

async fn accept_control(listener: tokio::net::UnixListener, control: Arc<Control>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (read, write) = stream.into_split();
                tokio::spawn(serve_control(control.clone(), read, write));
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
async fn serve_control(control: Arc<Control>, mut read: OwnedReadHalf, mut write: OwnedWriteHalf) {
    loop {
        let request: Request = match read_message_async(&mut read).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::info!(error = %e, "bad control request");
                return;
            }
        };
        let (reply, go_on) = match request {
            Request::Run { command } => run_command(&control, command, &mut read, &mut write).await,
            Request::MountStats { mountpoint, pid, image, stats, ended } => {
                let mut mounts = control.mounts.lock();
                if ended {
                    mounts.remove(&(mountpoint, pid));
                } else {
                    mounts.insert((mountpoint, pid), (image, stats));
                }
                (Reply::Recorded, true)
            }
            other => (answer(&control, other).await, true),
        };
        if let Err(e) = send(&mut write, &reply).await {
            tracing::debug!(error = %e, "control reply not delivered");
            return;
        }
        if !go_on {
            return;
        }
    }
}

/// The host paths a command names (the node resolves them itself).
fn command_paths(command: &Command) -> Vec<&std::path::Path> {
    match command {
        Command::Import { file, .. } => vec![file.as_path()],
        Command::Commit { mountpoint, upper, .. } => {
            mountpoint.iter().chain(upper).map(|p| p.as_path()).collect()
        }
        _ => Vec::new(),
    }
}

/// Writes `reply`; one too large to send is answered `Failed` instead, so
/// the client learns why rather than seeing a closed socket.
async fn send(write: &mut OwnedWriteHalf, reply: &Reply) -> Result<(), ControlError> {
    match write_message_async(write, reply).await {
        Err(e @ ControlError::TooLarge { .. }) => {
            let failed = Reply::Failed { error: format!("the reply was too large to send: {e}") };
            write_message_async(write, &failed).await
        }
        other => other,
    }
}

async fn answer(control: &Arc<Control>, request: Request) -> Reply {
    let node = &control.node;
    match request {
        Request::Run { .. } | Request::MountStats { .. } => {
            Reply::Failed { error: "answered by the connection's task".into() }
        }
        Request::Started { image } => {
            node.start_background(image, strata_node::Start::Read);
            Reply::Recorded
        }
        Request::Pull { reference } => match node.pull_image(&stored_name(node, &reference).await).await {
            Ok(id) => Reply::Pulled { image: id },
            // Neither here nor announced by name in the cluster: a registry
            // reference is pulled as `strata pull` does (through the
            // cluster, once for all the nodes asked at the same moment).
            Err(strata_node::NodeError::NotFound(why)) if !crate::pull::looks_like_id(&reference) => {
                let (control, cancel) = (control.clone(), control.stopping.child());
                let asked = reference.clone();
                let span = tracing::info_span!("pull", reference = %reference);
                let pulled = tokio::task::spawn_blocking(move || {
                    let _span = span.entered();
                    crate::pull::pull(&control.dir, &reference, Default::default(), &|_| {}, &cancel)
                })
                .await;
                match pulled {
                    Ok(Ok(pulled)) => match pulled.imported.images.first() {
                        Some(image) => Reply::Pulled { image: image.id },
                        None => Reply::Failed { error: format!("pulling {}: no image", pulled.name) },
                    },
                    Ok(Err(e)) => Reply::Failed {
                        error: format!(
                            "{why}{}; from its registry: {}",
                            closest_in_cluster(node, &asked).await,
                            crate::error::chain(&e)
                        ),
                    },
                    Err(e) => Reply::Failed { error: format!("the pull panicked: {e}") },
                }
            }
            Err(e) => Reply::Failed { error: crate::error::chain(&e) },
        },
        Request::Chunk { id } => match node.fetch_chunk(id).await {
            Ok(stored) => Reply::Chunk { stored: stored.as_ref().clone() },
            Err(e) => Reply::Failed { error: crate::error::chain(&e) },
        },
        Request::ChunkAhead { id } => match node.fetch_chunk_ahead(id).await {
            Ok(stored) => Reply::Chunk { stored: stored.as_ref().clone() },
            Err(e) => Reply::Failed { error: crate::error::chain(&e) },
        },
        Request::Profile { image, chunks } => match node.record_profile(image, chunks).await {
            Ok(()) => Reply::Recorded,
            Err(e) => Reply::Failed { error: crate::error::chain(&e) },
        },
    }
}

/// "; did you mean …?" with the names closest to `reference` that this
/// node or a live peer holds (asked with a short patience), or "".
async fn closest_in_cluster(node: &Arc<Node>, reference: &str) -> String {
    let listed = node.cluster_images(Duration::from_secs(1)).await;
    let names: Vec<String> = listed
        .into_iter()
        .filter_map(|n| n.images.ok())
        .flat_map(|list| list.images.into_iter().map(|i| i.name))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    match strata_oci::closest_names(reference, &names).as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [rest @ .., last] => format!("; did you mean {} or {last}?", rest.join(", ")),
    }
}

/// The name `reference` has in the node's store (`busybox` is stored as
/// `busybox:latest`), else its normalised form (as peers announce names),
/// else itself (an id or id prefix).
async fn stored_name(node: &Arc<Node>, reference: &str) -> String {
    let (store, asked) = (node.store().clone(), reference.to_owned());
    tokio::task::spawn_blocking(move || match strata_oci::find_image(&store, &asked) {
        Ok(found) => found.named.unwrap_or(asked),
        Err(_) => strata_oci::normalize_name(&asked).unwrap_or(asked),
    })
    .await
    .unwrap_or_else(|_| reference.to_owned())
}

/// Hands an import's progress to the connection's task: byte counts
/// gathered into steps of [`ADVANCE_STEP`], never waiting on the caller.
struct ProgressSender {
    tx: tokio::sync::mpsc::Sender<Progress>,
    /// Blob bytes read and not yet sent, per layer; what is left when the
    /// work ends goes in last steps.
    unsent: Arc<Unsent>,
}

/// Blob bytes read and not yet sent to a caller, per layer.
#[derive(Default)]
struct Unsent(parking_lot::Mutex<std::collections::BTreeMap<String, u64>>);

impl Unsent {
    fn add(&self, member: &str, bytes: u64) -> u64 {
        let mut unsent = self.0.lock();
        let count = unsent.entry(member.to_owned()).or_default();
        *count += bytes;
        *count
    }

    fn take(&self, member: &str) -> u64 {
        self.0.lock().remove(member).unwrap_or(0)
    }

    /// Every layer's unsent bytes, as the steps that send them.
    fn drain(&self) -> Vec<Progress> {
        std::mem::take(&mut *self.0.lock())
            .into_iter()
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(member, bytes)| Progress::Advance { member, bytes })
            .collect()
    }
}

impl ProgressSender {
    fn send(&self, step: Progress) {
        match step {
            Progress::Advance { member, bytes } => {
                if self.unsent.add(&member, bytes) >= ADVANCE_STEP {
                    self.flush(&member);
                }
            }
            other => {
                if let Progress::LayerDone { member } = &other {
                    self.flush(member);
                }
                // A layer name the caller has no room for is only cosmetic.
                let _ = self.tx.try_send(other);
            }
        }
    }

    fn flush(&self, member: &str) {
        let bytes = self.unsent.take(member);
        if bytes > 0 && self.tx.try_send(Progress::Advance { member: member.to_owned(), bytes }).is_err() {
            self.unsent.add(member, bytes);
        }
    }
}

/// Runs a command for a caller on the blocking pool, sending its progress
/// as it comes. The caller's end of the connection closing (its half-close
/// is the protocol's cancel; a client that dies does the same) cancels a
/// cancellable command. Returns the final reply and whether the connection
/// takes further requests (not once the caller left or cancelled).
async fn run_command(
    control: &Arc<Control>,
    command: Command,
    read: &mut OwnedReadHalf,
    write: &mut OwnedWriteHalf,
) -> (Reply, bool) {
    if let Some(path) = command_paths(&command).into_iter().find(|p| !p.is_absolute()) {
        let error = format!(
            "{} is not an absolute path: the node does not share the caller's directory",
            path.display()
        );
        return (Reply::Failed { error }, true);
    }
    let changes_holdings =
        matches!(command, Command::Import { .. } | Command::Commit { .. } | Command::Pull { .. });
    let cancellable = command.cancellable();
    let cancel = control.stopping.child();
    let (tx, mut rx) = tokio::sync::mpsc::channel(PROGRESS_BUFFER);
    let unsent = Arc::new(Unsent::default());
    let work = {
        let (control, cancel) = (control.clone(), cancel.clone());
        let sender = ProgressSender { tx, unsent: unsent.clone() };
        let span = tracing::info_span!("control", command = ?command);
        // Commands do blocking store work: on the blocking pool.
        tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            crate::ops::execute(&control.dir, command, &|step| sender.send(step), &cancel)
        })
    };
    tokio::pin!(work);
    let mut caller_left = false;
    let mut probe = [0u8; 1];
    let left = |why: &str, cancel: &Cancel| {
        tracing::info!(why, cancellable, "the caller left or cancelled");
        if cancellable {
            cancel.cancel();
        }
    };
    let result = loop {
        tokio::select! {
            // Progress first: the steps sent before the work ended all
            // reach the caller before its outcome.
            biased;
            Some(step) = rx.recv(), if !caller_left => {
                if let Err(e) = write_message_async(write, &Reply::Progress(step)).await {
                    caller_left = true;
                    left(&format!("progress not delivered: {e}"), &cancel);
                }
            }
            closed = read.read(&mut probe), if !caller_left => {
                // End of stream (the cancel), bytes out of turn, or an error:
                // the caller takes no further requests on this connection.
                caller_left = true;
                let why = match closed {
                    Ok(0) => "end of stream".to_owned(),
                    Ok(_) => "a request out of turn".to_owned(),
                    Err(e) => e.to_string(),
                };
                left(&why, &cancel);
            }
            result = &mut work => break result,
        }
    };
    // Steps still buffered, then the bytes not yet counted in one: the
    // caller's byte counts add up to what the work read.
    if !caller_left {
        let mut last = Vec::new();
        while let Ok(step) = rx.try_recv() {
            last.push(step);
        }
        last.extend(unsent.drain());
        for step in last {
            if write_message_async(write, &Reply::Progress(step)).await.is_err() {
                caller_left = true;
                break;
            }
        }
    }
    let reply = match result {
        Ok(Ok(outcome)) => {
            if changes_holdings {
                let node = control.node.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.announce_all().await {
                        tracing::warn!(error = %e, "announcing new holdings");
                    }
                });
            }
            Reply::Done(outcome)
        }
        Ok(Err(Error::Cancelled)) => {
            tracing::info!("command cancelled: nothing changed");
            Reply::Cancelled
        }
        Ok(Err(e)) => Reply::Failed { error: crate::error::chain(&e) },
        Err(e) => Reply::Failed { error: format!("the command panicked: {e}") },
    };
    (reply, !caller_left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initial_window_is_the_default_or_bytes_within_bounds() {
        let with =
            |w: u64| transport_settings(&NodeSettings { initial_window_bytes: w, ..Default::default() });
        assert_eq!(with(0).expect("default").initial_window, None);
        assert_eq!(with(2_000_000).expect("a BDP").initial_window, Some(2_000_000));
        for bad in [10, 2999, (32 << 20) + 1] {
            let err = with(bad).expect_err("out of bounds").to_string();
            assert!(err.contains("initial_window_bytes") && err.contains("not packets"), "{err}");
        }
    }

    #[test]
    fn a_congestion_controller_is_cubic_or_bbr() {
        let with = |c: CongestionControl| {
            transport_settings(&NodeSettings { congestion_control: c, ..Default::default() })
        };
        assert_eq!(with(CongestionControl::Cubic).expect("cubic").congestion, strata_net::Congestion::Cubic);
        assert_eq!(with(CongestionControl::Bbr).expect("bbr").congestion, strata_net::Congestion::Bbr);
        let default = transport_settings(&NodeSettings::default()).expect("default");
        assert_eq!(default.congestion, strata_net::Congestion::Cubic);
    }
}
