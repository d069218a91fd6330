//! The CLI's and mounts' side of the node's control socket (the protocol
//! itself is `strata-control`). Commands that change the store (import,
//! rm, gc, commit) run inside the node, which owns the store while it runs;
//! mounts ask it for images only peers hold and for chunks they lack.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
pub use strata_control::{
    call, connect, read_message_async, socket_path, write_message_async, Forwarded, Reply, Request,
};
use strata_types::{ChunkId, ImageId};

/// Runs `command` in the node on `data_dir` if one runs there: prints what
/// it printed and returns `Some(result)`; `None` when no node runs.
pub fn forward(data_dir: &Path, command: Forwarded, json: bool) -> Option<anyhow::Result<()>> {
    let mut stream = connect(data_dir)?;
    let result = call(&mut stream, &Request::Run { command, json }, None)
        .map_err(anyhow::Error::from)
        .and_then(|reply| match reply {
            Reply::Done { output, error } => {
                std::io::stdout().write_all(&output)?;
                match error {
                    None => Ok(()),
                    Some(e) => Err(anyhow::anyhow!(e)),
                }
            }
            other => bail!("unexpected reply from the node: {other:?}"),
        });
    Some(result)
}

/// A mount's chunks when a node runs on the data dir: the local store
/// first; chunks missing here are asked of the node, which fetches them
/// from peers (once, however many mounts wait), stores them, and sends
/// them on. Each is decoded and checked against its id here too.
pub struct NodeChunkSource {
    local: std::sync::Arc<strata_mount::StoreSource>,
    data_dir: PathBuf,
    /// The node answers within its fetch deadline; this is a backstop.
    timeout: Duration,
    idle: parking_lot::Mutex<Vec<UnixStream>>,
}

/// Idle control connections a mount keeps.
const IDLE_CONNECTIONS: usize = 16;

impl NodeChunkSource {
    pub fn new(local: std::sync::Arc<strata_mount::StoreSource>, data_dir: &Path, timeout: Duration) -> Self {
        Self { local, data_dir: data_dir.to_owned(), timeout, idle: Default::default() }
    }

    fn ask_node(&self, id: &ChunkId) -> Result<Vec<u8>, String> {
        let request = Request::Chunk { id: *id };
        let idle = self.idle.lock().pop();
        // An idle connection may be to a node that has since restarted:
        // on failure, once more on a fresh one.
        let pooled = idle.and_then(|mut s| call(&mut s, &request, Some(self.timeout)).ok().map(|r| (s, r)));
        let (stream, reply) = match pooled {
            Some(done) => done,
            None => {
                let Some(mut stream) = connect(&self.data_dir) else {
                    return Err(format!(
                        "not in the local store, and no node runs on {} to fetch it from peers",
                        self.data_dir.display()
                    ));
                };
                let reply = call(&mut stream, &request, Some(self.timeout)).map_err(|e| e.to_string())?;
                (stream, reply)
            }
        };
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(stream);
        }
        drop(idle);
        match reply {
            Reply::Chunk { stored } => {
                let mut decoder = strata_chunk::ChunkDecoder::new().map_err(|e| e.to_string())?;
                decoder.decode(id, &stored).map_err(|e| format!("the node sent bad bytes: {e}"))
            }
            Reply::Failed { error } => Err(error),
            other => Err(format!("unexpected reply from the node: {other:?}")),
        }
    }
}

impl strata_mount::ChunkSource for NodeChunkSource {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, strata_mount::SourceError> {
        match self.local.fetch(id) {
            Err(strata_mount::SourceError::Missing(_)) => {}
            other => return other,
        }
        self.ask_node(id).map_err(|reason| strata_mount::SourceError::Failed { id: *id, reason })
    }
}

/// Hands the node on `data_dir` a startup profile a mount recorded.
pub fn record_profile(data_dir: &Path, image: ImageId, chunks: Vec<ChunkId>) -> anyhow::Result<()> {
    let mut stream = connect(data_dir).context("no node runs here any more")?;
    match call(&mut stream, &Request::Profile { image, chunks }, None)? {
        Reply::Done { error: None, .. } => Ok(()),
        Reply::Failed { error } | Reply::Done { error: Some(error), .. } => bail!("{error}"),
        other => bail!("unexpected reply from the node: {other:?}"),
    }
}

/// Asks the node on `data_dir`, if one runs, to make `reference` known
/// here (its metadata pulled from a peer when only peers hold it). Returns
/// whether a node runs.
pub fn pull(data_dir: &Path, reference: &str) -> anyhow::Result<bool> {
    let Some(mut stream) = connect(data_dir) else { return Ok(false) };
    match call(&mut stream, &Request::Pull { reference: reference.to_owned() }, None)? {
        Reply::Pulled { .. } => Ok(true),
        Reply::Failed { error } => bail!("{error}"),
        other => bail!("unexpected reply from the node: {other:?}"),
    }
}
