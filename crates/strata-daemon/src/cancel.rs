//! Cancelling a command: a flag the work checks, and the control
//! connections to shut down so that the node learns of it too.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Cloned freely; every clone cancels the same work. A signal handler
/// calls [`Cancel::cancel`]; work in this process polls
/// [`Cancel::is_cancelled`]; a command forwarded to the node is cancelled
/// by shutting down the writing half of its control connection (the
/// protocol's cancel, `strata-control`). A [`child`](Cancel::child) is
/// cancelled with its parent (the node stopping cancels its commands).
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    parent: Option<Cancel>,
    next: AtomicU64,
    connections: parking_lot::Mutex<Vec<(u64, UnixStream)>>,
}

impl Cancel {
    /// A cancel nobody has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cancel of its own that is also cancelled when `self` is.
    pub fn child(&self) -> Self {
        Self(Arc::new(Inner { parent: Some(self.clone()), ..Inner::default() }))
    }

    /// Cancels: sets the flag and shuts down the writing half of every
    /// connection being watched. Safe to call from a signal thread.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        for (_, stream) in self.0.connections.lock().iter() {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Whether this or a parent was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst) || self.0.parent.as_ref().is_some_and(Cancel::is_cancelled)
    }

    /// Shuts down `stream`'s writing half on [`cancel`](Self::cancel)
    /// (at once if that has happened already) while the guard lives.
    ///
    /// Errors: the stream cannot be duplicated (out of descriptors).
    pub(crate) fn watch(&self, stream: &UnixStream) -> std::io::Result<Watch> {
        let clone = stream.try_clone()?;
        let key = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut connections = self.0.connections.lock();
        if self.is_cancelled() {
            // The node may have closed its end already: nothing to tell it.
            let _ = clone.shutdown(std::net::Shutdown::Write);
        }
        connections.push((key, clone));
        Ok(Watch { cancel: self.clone(), key })
    }
}

/// Stops watching a connection when dropped (its duplicate is closed).
pub(crate) struct Watch {
    cancel: Cancel,
    key: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.cancel.0.connections.lock().retain(|(k, _)| *k != self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_cancelled_with_its_parent_not_the_other_way() {
        let parent = Cancel::new();
        let (a, b) = (parent.child(), parent.child());
        a.cancel();
        assert!(a.is_cancelled() && !b.is_cancelled() && !parent.is_cancelled());
        parent.cancel();
        assert!(b.is_cancelled());
    }

    #[test]
    fn a_watched_connection_is_half_closed_on_cancel_and_released_after() {
        let cancel = Cancel::new();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let watch = cancel.watch(&ours).unwrap();
        cancel.cancel();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut theirs, &mut buf).unwrap(), 0, "end of stream");
        drop(watch);
        assert!(cancel.0.connections.lock().is_empty());
    }
}
