//! The CLI's and mounts' side of the node's control socket (the protocol
//! itself is `strata-control`): commands forwarded to the node with their
//! progress and cancellation, pulls, startup profiles, chunks.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use strata_control::{
    call, connect, read_message, write_message, Command, Outcome, Progress, Reply, Request,
};
use strata_types::{ChunkId, ImageId};

use crate::cancel::Cancel;
use crate::error::{refuse, Context, Error, Result};

/// Runs `command` in the node on `data_dir` if one runs there, handing
/// each progress step to `progress`; `None` when no node runs. `cancel`
/// stops it (the node answers [`Error::Cancelled`] if it stopped in time).
///
/// Errors: the node's failure ([`Error::Remote`]), [`Error::Cancelled`],
/// or the socket's ([`Error::Control`]).
pub fn forward(
    data_dir: &Path,
    command: Command,
    progress: &mut dyn FnMut(Progress),
    cancel: &Cancel,
) -> Option<Result<Outcome>> {
    let mut stream = connect(data_dir)?;
    Some(run_on(&mut stream, command, progress, cancel))
}

fn run_on(
    stream: &mut UnixStream,
    command: Command,
    progress: &mut dyn FnMut(Progress),
    cancel: &Cancel,
) -> Result<Outcome> {
    write_message(stream, &Request::Run { command })?;
    let _watch = cancel.watch(stream)?;
    loop {
        match read_message::<Reply>(stream)? {
            Some(Reply::Progress(step)) => progress(step),
            Some(Reply::Done(outcome)) => return Ok(outcome),
            Some(Reply::Cancelled) => return Err(Error::Cancelled),
            Some(Reply::Failed { error }) => return Err(Error::Remote(error)),
            Some(other) => refuse!("unexpected reply from the node: {other:?}"),
            None => return Err(strata_control::ControlError::Closed.into()),
        }
    }
}

/// Hands the node on `data_dir` a startup profile a mount recorded.
pub fn record_profile(data_dir: &Path, image: ImageId, chunks: Vec<ChunkId>) -> Result<()> {
    let mut stream = connect(data_dir).context("no node runs here any more")?;
    match call(&mut stream, &Request::Profile { image, chunks }, None)? {
        Reply::Recorded => Ok(()),
        Reply::Failed { error } => Err(Error::Remote(error)),
        other => refuse!("unexpected reply from the node: {other:?}"),
    }
}

/// Asks the node on `data_dir`, if one runs, to make `reference` known
/// here (its metadata pulled from a peer when only peers hold it). Returns
/// whether a node runs.
pub fn pull(data_dir: &Path, reference: &str) -> Result<bool> {
    let Some(mut stream) = connect(data_dir) else { return Ok(false) };
    match call(&mut stream, &Request::Pull { reference: reference.to_owned() }, None)? {
        Reply::Pulled { .. } => Ok(true),
        Reply::Failed { error } => Err(Error::Remote(error)),
        other => refuse!("unexpected reply from the node: {other:?}"),
    }
}

/// A chunk's stored form from the node on `stream` (not yet verified),
/// waiting at most `timeout`: the outer error is the connection's, the
/// inner the node's answer (why it has no such chunk).
pub(crate) fn ask_chunk(
    stream: &mut UnixStream,
    id: &ChunkId,
    ahead: bool,
    timeout: Duration,
) -> Result<Result<Vec<u8>, String>, strata_control::ControlError> {
    let request = if ahead { Request::ChunkAhead { id: *id } } else { Request::Chunk { id: *id } };
    Ok(match call(stream, &request, Some(timeout))? {
        Reply::Chunk { stored } => Ok(stored),
        Reply::Failed { error } => Err(error),
        other => Err(format!("unexpected reply from the node: {other:?}")),
    })
}
