//! The node's control socket (DATA_DIR/node.sock): how the CLI and mount
//! processes talk to a node running on the same data dir.
//!
//! One connection carries requests one after another; each message is a
//! 4-byte big-endian length and that many bytes of postcard. Commands that
//! change the store (import, rm, gc, commit) run inside the node, which owns
//! the store while it runs; mounts ask it for images only peers hold and for
//! chunks they lack.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use strata_types::{ChunkId, ImageId};

/// Largest message: a chunk's stored form with room to spare.
const MAX_MESSAGE: usize = 64 << 20;

/// A CLI command the node runs for the caller, on its store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Import { file: PathBuf, names: Vec<String> },
    Rm { images: Vec<String> },
    Gc,
    Commit { mountpoint: Option<PathBuf>, upper: Option<PathBuf>, names: Vec<String> },
    Peers,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Run {
        command: Forwarded,
        json: bool,
    },
    /// Make an image that peers hold known here (metadata only).
    Pull {
        reference: String,
    },
    /// A chunk's stored form, fetched from peers if missing.
    Chunk {
        id: ChunkId,
    },
    /// The chunks a mount of `image` read first, in order: the image's
    /// startup profile if it has none yet.
    Profile {
        image: ImageId,
        chunks: Vec<ChunkId>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// What the command printed, and whether it failed (with the error).
    Done {
        output: Vec<u8>,
        error: Option<String>,
    },
    Pulled {
        image: String,
    },
    Chunk {
        stored: Vec<u8>,
    },
    Failed {
        error: String,
    },
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.sock")
}

/// A connection to the node on `data_dir`, or `None` when no node runs
/// there (no socket, or a stale one).
pub fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data_dir)).ok()
}

/// A message as it goes on the socket: its length, then its postcard bytes.
fn frame(message: &impl Serialize) -> anyhow::Result<Vec<u8>> {
    let body = postcard::to_stdvec(message).context("encoding a control message")?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The body length a frame header announces, within the limit.
fn body_len(header: [u8; 4]) -> anyhow::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_MESSAGE {
        bail!("control message of {len} bytes (limit {MAX_MESSAGE})");
    }
    Ok(len)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> anyhow::Result<T> {
    postcard::from_bytes(body).context("decoding a control message")
}

/// Whether a header read found the stream cleanly ended.
fn at_end(result: std::io::Result<()>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(e.into()),
    }
}

pub fn write_message(out: &mut impl Write, message: &impl Serialize) -> anyhow::Result<()> {
    out.write_all(&frame(message)?)?;
    out.flush()?;
    Ok(())
}

/// The next message, or `None` at a clean end of the stream.
pub fn read_message<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> anyhow::Result<Option<T>> {
    let mut header = [0u8; 4];
    if at_end(input.read_exact(&mut header))? {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len(header)?];
    input.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// [`write_message`] on an async stream (the node's side).
pub async fn write_message_async(
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &impl Serialize,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    out.write_all(&frame(message)?).await?;
    out.flush().await?;
    Ok(())
}

/// [`read_message`] on an async stream (the node's side).
pub async fn read_message_async<T: for<'de> Deserialize<'de>>(
    input: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<Option<T>> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    if at_end(input.read_exact(&mut header).await.map(drop))? {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len(header)?];
    input.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

/// Sends one request and reads its reply.
pub fn call(stream: &mut UnixStream, request: &Request, timeout: Option<Duration>) -> anyhow::Result<Reply> {
    stream.set_read_timeout(timeout)?;
    write_message(stream, request)?;
    read_message(stream)?.context("the node closed the control connection")
}

/// Runs `command` in the node on `data_dir` if one runs there: prints what
/// it printed and returns `Some(result)`; `None` when no node runs.
pub fn forward(data_dir: &Path, command: Forwarded, json: bool) -> Option<anyhow::Result<()>> {
    let mut stream = connect(data_dir)?;
    let result = call(&mut stream, &Request::Run { command, json }, None).and_then(|reply| match reply {
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
