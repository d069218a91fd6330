//! Mount serving: `strata mount`, `umount` and the serving process.
//!
//! [`start_mount`] starts a background process (`strata mount-serve`, in
//! its own session) that mounts the image and serves it ([`serve`]), and
//! returns once that process reports the mount live. The serving process
//! holds the store read-only, so imports, `gc` and other mounts go on
//! beside it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_mount::{MountOptions, ReadTrace, StoreSource, UpperDir};

use crate::data_dir::DataDir;
use crate::error::{refuse, Context, Error, Result};
use crate::identity::IdentitySpec;
use crate::mounts::{self, MountRecord, MountState};
use crate::profile::{ProfileRecorder, StatsReporter};

/// How long `umount` waits for the serving process to finish.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A mount that `start_mount` brought up.
pub struct Started {
    pub mountpoint: PathBuf,
    pub upper: Option<PathBuf>,
    pub pid: u32,
}

/// Peers to mount from with no node of one's own (`--peer`).
#[derive(Clone, Debug, Default)]
pub struct PeerMount {
    pub peers: Vec<SocketAddr>,
    /// Seconds a chunk fetch may take, all peers together.
    pub fetch_deadline: f64,
    pub identity: IdentitySpec,
}

/// What to mount, and how.
#[derive(Clone, Debug, Default)]
pub struct MountSpec {
    /// A reference as `find_image` takes it.
    pub image: String,
    pub mountpoint: PathBuf,
    /// The writable layer; `None` with `read_only` false makes a new one
    /// under `DATA_DIR/uppers/`.
    pub upper: Option<PathBuf>,
    pub read_only: bool,
    /// Where to write the reads the mount served, as JSON, when it ends.
    pub trace_reads: Option<PathBuf>,
    /// Mount from these peers instead of this data dir's store and node.
    pub peer: Option<PeerMount>,
    /// Only the image's first N layers (a layer chain, as containerd's
    /// snapshots above a chain see it); `None`: all of them.
    pub layers: Option<u32>,
}

/// Starts the background process serving `image` at `mountpoint` and
/// returns once the mount is live.
///
/// Errors: a mountpoint that is missing, not a directory, a dead mount or
/// already served; the serving process's own error (image not found, a
/// writable layer in use, …) as it reported it.
pub fn start_mount(dir: &DataDir, spec: &MountSpec) -> Result<Started> {
    let ctx = dir;
    let (read_only, upper) = (spec.read_only, spec.upper.as_deref());
    if read_only && upper.is_some() {
        refuse!("--upper and --read-only exclude each other");
    }
    // A writable layer this call makes (a new one, or a given --upper that
    // did not exist) goes again if the mount fails.
    let (upper, made) = match (read_only, upper) {
        (true, _) => (None, false),
        (false, Some(dir)) => {
            let made = !dir.exists();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (Some(std::fs::canonicalize(dir)?), made)
        }
        (false, None) => (Some(new_upper_dir(&ctx.path)?), true),
    };
    let started = serve_in_background(ctx, spec, upper.clone());
    if let (Err(_), true, Some(dir)) = (&started, made, &upper) {
        let _ = std::fs::remove_dir_all(dir);
    }
    started
}

/// [`start_mount`] once the writable layer is known: the serving process
/// started and its first line read.
fn serve_in_background(ctx: &DataDir, spec: &MountSpec, upper: Option<PathBuf>) -> Result<Started> {
    let MountSpec { image, mountpoint, trace_reads, peer, layers, .. } = spec;
    let trace_reads = trace_reads.as_deref();
    let mountpoint = checked_mountpoint(mountpoint)?;
    if let Some(record) = mounts::find(&ctx.path, &mountpoint) {
        if mounts::process_alive(record.pid) {
            refuse!("{} is already a mount of {} (pid {})", mountpoint.display(), record.image, record.pid);
        }
    }
    std::fs::create_dir_all(mounts::records_dir(&ctx.path))?;
    let log_path = mounts::log_path(&ctx.path, &mountpoint);
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut command = Command::new(std::env::current_exe().context("finding the strata binary")?);
    command.arg("--data-dir").arg(&ctx.path);
    if let Some(config) = &ctx.config_file {
        command.arg("--config").arg(config);
    }
    command.arg("mount-serve").arg(image).arg(&mountpoint);
    if let Some(upper) = &upper {
        command.arg("--upper").arg(upper);
    }
    if let Some(trace) = trace_reads {
        command.arg("--trace-reads").arg(std::path::absolute(trace)?);
    }
    if let Some(peer) = peer.as_ref().filter(|p| !p.peers.is_empty()) {
        command.args(peer_args(peer));
    }
    if let Some(layers) = layers {
        command.arg("--layers").arg(layers.to_string());
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the mount process")?;
    let stdout = child.stdout.take().context("mount process stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ready ").and_then(|pid| pid.parse().ok()) {
        return Ok(Started { mountpoint, upper, pid });
    }
    let status = child.wait()?;
    match line.strip_prefix("error: ") {
        Some(reason) => Err(Error::Remote(reason.to_owned())),
        None => refuse!("the mount process ended ({status}); its log is {}", log_path.display()),
    }
}

/// Runs in the background process (`strata mount-serve`): mount, report
/// on stdout ("ready PID" or "error: …", what [`start_mount`] reads),
/// serve until unmounted or signalled (SIGTERM, SIGINT, SIGHUP unmount).
pub fn serve(dir: &DataDir, spec: &MountSpec) -> Result<()> {
    let ctx = dir;
    let (image, mountpoint, upper, trace_reads) =
        (spec.image.as_str(), spec.mountpoint.as_path(), spec.upper.as_deref(), spec.trace_reads.as_deref());
    // Leave the caller's session: its end must not end the mount.
    let _ = nix::unistd::setsid();
    let mut report = std::io::stdout();
    let mut serving =
        match start(ctx, image, mountpoint, upper, trace_reads.is_some(), spec.peer.as_ref(), spec.layers) {
            Ok(serving) => serving,
            Err(e) => {
                let _ = writeln!(report, "error: {}", crate::error::chain(&e));
                return Err(e);
            }
        };
    let mut unmounter = serving.session.unmount_callable();
    let record = serving.record.clone();
    let held = mountpoint.to_owned();
    // SIGTERM, SIGINT or SIGHUP unmount; the session then ends by itself.
    // Handled from before the mount is reported live, so that a signal sent
    // as soon as `strata mount` returns cannot kill the process outright.
    crate::signals::on_termination(move |_| {
        tracing::info!("signal received: unmounting");
        if let Err(e) = unmounter.unmount() {
            // Why, and who keeps it: the mount serves on until they let go
            // (or `strata umount --lazy`).
            let holders = mounts::holders(&held, 10);
            let holders = match holders.is_empty() {
                true => "no process found holding it".to_owned(),
                false => holders.join(", "),
            };
            tracing::warn!(
                error = %e,
                %holders,
                "cannot unmount on signal: the mount stays served while these hold it (or unmount with --lazy)"
            );
        }
    })?;
    mounts::write(&ctx.path, &record)?;
    writeln!(report, "ready {}", std::process::id())?;
    report.flush()?;
    detach_stdout()?;
    tracing::info!(mountpoint = %mountpoint.display(), image, "mount live");
    if serving.through_node {
        // A container starts: the node fetches the rest of the image in
        // the background (its mode permitting).
        if let Some(mut stream) = strata_control::connect(&ctx.path) {
            let started = strata_control::Request::Started { image: serving.image_id };
            if let Err(e) = strata_control::call(&mut stream, &started, Some(Duration::from_secs(5))) {
                tracing::debug!(error = %e, "the node was not told of the mount");
            }
        }
    }
    let profile = match (&serving.trace, serving.through_node) {
        (Some(trace), true) => {
            let window = Duration::from_secs_f64(ctx.settings.mount.profile_window_secs.max(0.0));
            Some(ProfileRecorder::start(ctx.path.clone(), serving.image_id, trace.clone(), window))
        }
        _ => None,
    };
    // Read counters go to the node on the data dir whenever one runs there.
    let interval = match ctx.settings.mount.stats_interval_secs {
        secs if secs.is_finite() => Duration::from_secs_f64(secs.clamp(0.05, 3600.0)),
        _ => Duration::from_secs(10),
    };
    let reporter = StatsReporter::start(
        ctx.path.clone(),
        mountpoint.to_owned(),
        image.to_owned(),
        serving.stats.clone(),
        interval,
    );
    let result = serving.session.run();
    if let Some(profile) = profile {
        profile.finish();
    }
    reporter.finish();
    if let (Some(trace), Some(path)) = (&serving.trace, trace_reads) {
        write_trace(trace, path);
    }
    mounts::remove(&ctx.path, mountpoint);
    tracing::info!(mountpoint = %mountpoint.display(), "mount ended");
    result.context("serving the mount")
}

/// Writes the reads a mount served; a failure is logged (the mount's
/// work is done by now).
fn write_trace(trace: &ReadTrace, path: &Path) {
    let report = trace.report();
    let written = serde_json::to_vec_pretty(&report)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(path, json));
    match written {
        Ok(()) => tracing::info!(
            path = %path.display(),
            files = report.files_read,
            bytes = report.bytes_read,
            "read trace written"
        ),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "writing the read trace failed"),
    }
}

/// A mount being served.
struct Serving {
    session: fuser::Session<strata_mount::MountFs>,
    record: MountRecord,
    image_id: strata_types::ImageId,
    /// Chunks missing here come through this data dir's node.
    through_node: bool,
    /// The reads served, when asked for or when a node runs (which makes
    /// the image's startup profile of them).
    trace: Option<Arc<ReadTrace>>,
    /// The mount's read counters, reported to the node.
    stats: Arc<strata_mount::MountStats>,
    /// For a peer's image: the runtime its connection lives on, kept as
    /// long as the session.
    _runtime: Option<tokio::runtime::Runtime>,
}

fn start(
    ctx: &DataDir,
    image: &str,
    mountpoint: &Path,
    upper: Option<&Path>,
    trace_reads: bool,
    peer: Option<&PeerMount>,
    layers: Option<u32>,
) -> Result<Serving> {
    if layers.is_some() && peer.is_some_and(|p| !p.peers.is_empty()) {
        refuse!("a mount of the first layers only is not served from peers");
    }
    let mut through_node = false;
    let (id, name, tree, source, runtime): (_, _, _, Arc<dyn strata_mount::ChunkSource>, _) = match peer
        .filter(|p| !p.peers.is_empty())
    {
        None => {
            // An image only peers hold is pulled (metadata) first, and chunks
            // missing here come through the node; one only its registry
            // holds is pulled (through the node when one runs).
            let node = crate::pull::ensure_known(ctx, image)?;
            through_node = node;
            let local = Arc::new(StoreSource::open(&ctx.store_dir()).context("opening the store")?);
            let store = local.store();
            let mut found = strata_oci::find_image(&store, image)?;
            if let Some(n) = layers {
                let total = found.record.layers.len();
                if n == 0 || n as usize > total {
                    refuse!(
                        "image {image} has {}: cannot mount its first {n}",
                        crate::format::plural(total as u64, "layer")
                    );
                }
                found.record.layers.truncate(n as usize);
            }
            let tree = strata_mount::load_lower(&store, &found.record)?;
            let source: Arc<dyn strata_mount::ChunkSource> = if node {
                let timeout = std::time::Duration::from_secs_f64(ctx.settings.node.fetch_deadline_secs + 5.0);
                Arc::new(crate::chunks::NodeChunkSource::new(local, &ctx.path, timeout))
            } else {
                local
            };
            (found.id, found.display_name(), tree, source, None)
        }
        Some(peer) => {
            let (id, tree, source, runtime) = from_peers(ctx, image, peer)?;
            (id, image.to_owned(), tree, Arc::new(source), Some(runtime))
        }
    };
    let upper_dir = upper.map(|dir| UpperDir::open(dir, &id)).transpose()?;
    let trace = (trace_reads || through_node).then(|| Arc::new(ReadTrace::default()));
    let options = MountOptions {
        fs_name: format!("strata:{name}"),
        read_trace: trace.clone(),
        readahead_kb: ctx.settings.mount.readahead_kb,
        ..MountOptions::default()
    };
    let stats = options.stats.clone();
    let session = strata_mount::mount(tree, source, upper_dir, mountpoint, &options)?;
    let record = MountRecord {
        mountpoint: mountpoint.to_owned(),
        image: image.to_owned(),
        image_id: id.to_hex(),
        read_only: upper.is_none(),
        upper: upper.map(Path::to_owned),
        pid: std::process::id(),
        started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        log: mounts::log_path(&ctx.path, mountpoint),
    };
    Ok(Serving { session, record, image_id: id, through_node, trace, stats, _runtime: runtime })
}

/// An image from peers: its record and indexes from the first that has
/// them, its chunks from any of them as they are read.
fn from_peers(
    ctx: &DataDir,
    image: &str,
    peer: &PeerMount,
) -> Result<(strata_store::ImageId, strata_mount::LowerTree, strata_node::PeerSource, tokio::runtime::Runtime)>
{
    let identity = crate::identity::load_identity(&ctx.path, &peer.identity)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let endpoint = {
        let _guard = runtime.enter();
        strata_net::client_endpoint(&identity)?
    };
    let mut tried = Vec::new();
    for addr in &peer.peers {
        let fetched = runtime.block_on(async {
            let connection = strata_net::connect(&endpoint, *addr, None).await.map_err(|e| e.to_string())?;
            strata_node::fetch_image(&connection, image).await
        });
        match fetched {
            Ok(strata_node::RemoteImage { id, layers, .. }) => {
                let tree = strata_mount::LowerTree::build(&strata_node::indexes(&layers))?;
                let deadline = std::time::Duration::from_secs_f64(peer.fetch_deadline.max(0.01));
                let peers =
                    peer.peers.iter().map(|addr| strata_node::Peer { addr: *addr, name: None }).collect();
                let source = strata_node::PeerSource::new(runtime.handle().clone(), endpoint, peers)
                    .with_deadline(deadline);
                return Ok((id, tree, source, runtime));
            }
            Err(e) => tried.push(format!("{addr}: {e}")),
        }
    }
    refuse!("no peer gave image {image}: {}", tried.join("; "))
}

/// The flags that hand a peer mount's settings to the serving process.
fn peer_args(peer: &PeerMount) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for addr in &peer.peers {
        args.extend(["--peer".into(), addr.to_string().into()]);
    }
    args.extend(["--fetch-deadline".into(), peer.fetch_deadline.to_string().into()]);
    if let Some(node) = &peer.identity.node {
        args.extend(["--node".into(), node.into()]);
    }
    if let Some(dir) = &peer.identity.cert_dir {
        args.extend(["--cert-dir".into(), dir.into()]);
    }
    args
}

/// Points stdout at /dev/null so that `strata mount`, which reads it, sees
/// its end and can return.
fn detach_stdout() -> Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(())
}

/// Unmounts and waits for the serving process to end; returns the mountpoint.
///
/// Errors: not a strata mount; busy (files open there: end the process
/// or unmount lazily); a serving process that does not exit in 30 s.
pub fn unmount(ctx: &DataDir, mountpoint: &Path, lazy: bool) -> Result<PathBuf> {
    // A dead FUSE mount cannot be resolved (ENOTCONN): fall back to the path as given.
    let mountpoint = std::fs::canonicalize(mountpoint)
        .or_else(|_| std::path::absolute(mountpoint))
        .with_context(|| format!("resolving {}", mountpoint.display()))?;
    let record = mounts::find(&ctx.path, &mountpoint);
    let mounted = mounts::mounted_strata_paths().contains(&mountpoint);
    if record.is_none() && !mounted {
        refuse!("{} is not a strata mount", mountpoint.display());
    }
    // No record here, or one whose process is gone (the path may be
    // another data dir's mount now): the serving process says whose it is.
    let stale = record.as_ref().is_some_and(|r| !mounts::process_alive(r.pid));
    if record.is_none() || (stale && mounted && mounts::serving_process(&mountpoint).is_some()) {
        // Mounted, but not from this data dir: its own `strata umount` clears it.
        let same_dir = |owner: &Path| {
            let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            real(owner) == real(&ctx.path)
        };
        match mounts::serving_process(&mountpoint) {
            Some((pid, owner)) if !same_dir(&owner) => refuse!(
                "{} is a mount of the store in {} (served by pid {pid}), not of {}: \
                 unmount it with `strata --data-dir {} umount {}`",
                mountpoint.display(),
                owner.display(),
                ctx.path.display(),
                owner.display(),
                mountpoint.display()
            ),
            Some(_) => {}
            None => refuse!(
                "{} is a strata mount with no record in {}: it belongs to another data dir, and no \
                 serving process says which; `strata --data-dir DIR umount` with that data dir clears \
                 it (or the system's `umount -l`)",
                mountpoint.display(),
                ctx.path.display()
            ),
        }
    }
    if mounted {
        let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
        match nix::mount::umount2(&mountpoint, flags) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => refuse!(
                "{} is busy: {}; end them, or unmount with --lazy (the mount goes when they let go)",
                mountpoint.display(),
                match mounts::holders(&mountpoint, 5).as_slice() {
                    [] => "a process has a file open or its working directory there".to_owned(),
                    [one] => format!("{one} uses it"),
                    held => format!("{} use it", held.join(", ")),
                }
            ),
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
        }
    }
    if let Some(record) = &record {
        // The serving process sees the end of its session and exits.
        let started = Instant::now();
        while mounts::process_alive(record.pid) && started.elapsed() < EXIT_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        if mounts::process_alive(record.pid) {
            refuse!("unmounted {}, but its process {} has not exited", mountpoint.display(), record.pid);
        }
        mounts::remove(&ctx.path, &mountpoint);
    }
    Ok(mountpoint)
}

/// Image ids that live or dead mounts use: `rm` keeps them.
pub fn mounted_image_ids(data_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(mounts::list(data_dir)?
        .into_iter()
        .filter(|(_, state)| *state != MountState::Gone)
        .map(|(r, _)| (r.image_id, r.mountpoint))
        .collect())
}

/// A fresh writable layer directory under the data dir.
pub fn new_upper_dir(data_dir: &Path) -> Result<PathBuf> {
    let parent = data_dir.join("uppers");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{nanos}-{}", std::process::id());
    let name = blake3::hash(seed.as_bytes()).to_hex()[..16].to_owned();
    let dir = parent.join(name);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn checked_mountpoint(path: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(path)
        .with_context(|| format!("mountpoint {} does not exist", path.display()))?;
    match std::fs::metadata(&resolved) {
        Ok(meta) if meta.is_dir() => Ok(resolved),
        Ok(_) => refuse!("mountpoint {} is not a directory", resolved.display()),
        // What a FUSE mount answers once its process is gone: ENOTCONN, or
        // ECONNABORTED when the connection was aborted with requests under way.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => refuse!(
            "mountpoint {} is a mount whose process died (`strata mounts` shows it dead): \
             `strata umount {}` first",
            resolved.display(),
            resolved.display()
        ),
        Err(e) => Err(e).with_context(|| format!("mountpoint {}", resolved.display())),
    }
}
