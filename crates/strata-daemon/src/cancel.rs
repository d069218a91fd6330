//! Cancelling a command: a flag the work checks, and the control
//! connections to shut down so that the node learns of it too.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Cloned freely; every clone cancels the same work. A signal handler
/// calls [`Cancel::cancel`]; work in this process polls
/// [`Cancel::is_cancelled`]; a command forwarded to the node is cancelled
/// by shutting down the writing half of its control connection (the
/// protocol's cancel, `strata-control`).
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    connections: parking_lot::Mutex<Vec<UnixStream>>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: sets the flag and shuts down the writing half of every
    /// connection being watched. Safe to call from a signal thread.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        for stream in self.0.connections.lock().iter() {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Shuts down `stream`'s writing half on [`cancel`](Self::cancel)
    /// (at once if that has happened already).
    pub(crate) fn watch(&self, stream: &UnixStream) -> std::io::Result<()> {
        let clone = stream.try_clone()?;
        let mut connections = self.0.connections.lock();
        if self.is_cancelled() {
            clone.shutdown(std::net::Shutdown::Write)?;
        }
        connections.push(clone);
        Ok(())
    }
}
