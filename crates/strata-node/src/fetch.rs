//! What a chunk fetch can end in, typed: a fetch's outcome decides metrics
//! and penalties by its kind, never by its message; and the single-flight
//! table, whose entries a leader that is cancelled or panics cannot strand,
//! and whose priority rises when a caller that waits on a read joins a
//! prefetch's flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_chunk::ChunkError;
use strata_wire::Priority;
use tokio::sync::{oneshot, watch};

/// Why one peer did not give a chunk it was asked for.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerFailure {
    /// The bytes it sent do not decode to the chunk asked for: it lies or
    /// its store is corrupt. Counted in `strata_bad_chunks_total`.
    #[error("sent bad bytes: {0}")]
    BadBytes(ChunkError),
    /// It answered with a protocol error.
    #[error("error {code}: {message}")]
    Refused { code: i32, message: String },
    /// It answered something other than the chunk asked for.
    #[error("unexpected reply {0}")]
    Unexpected(String),
    /// The connection or stream failed.
    #[error("{0}")]
    Network(String),
    /// No answer within its share of the deadline.
    #[error("no answer within {0:?}")]
    Silent(Duration),
}

impl PeerFailure {
    /// Whether the peer is asked last for a while ([`PeerFailure::Silent`]
    /// is decided by the caller: a busy partial holder is not penalised).
    pub fn penalises(&self) -> bool {
        !matches!(self, PeerFailure::Silent(_))
    }
}

/// Why a chunk could not be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// No layer this node knows lists the chunk.
    #[error("it is in no layer this node knows")]
    NotInAnyLayer,
    /// Nobody alive announced holding its layers.
    #[error("no live node announced its layers ({layers}) within {deadline:?}")]
    NoHolder { layers: String, deadline: Duration },
    /// Every holder was asked; none gave it.
    #[error("no peer gave it within {deadline:?}; tried {tried}")]
    Exhausted { deadline: Duration, tried: String },
    /// The caller's deadline passed; the fetch it joined goes on.
    #[error("not here within {0:?}; its fetch goes on")]
    Deadline(Duration),
    /// This node failed: its store, or the means to decode a chunk.
    #[error("on this node: {0}")]
    Local(String),
    /// The fetch ended without an outcome: its task was cancelled (the
    /// node is stopping) or panicked.
    #[error("the fetch ended without an outcome (cancelled or panicked)")]
    Abandoned,
}

type Outcome<T> = Result<T, FetchError>;

/// One fetch per key at a time; every caller gets its outcome.
pub struct Flights<K, T> {
    waiting: Mutex<HashMap<K, Flight<T>>>,
}

/// A flight's callers and the highest priority among them.
struct Flight<T> {
    callers: Vec<oneshot::Sender<Outcome<T>>>,
    priority: watch::Sender<Priority>,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Self { waiting: Mutex::default() }
    }
}

/// A caller's place in a flight.
pub enum Joined<K: Eq + Hash + Clone, T: Clone> {
    /// This caller leads: it must run the fetch and [`Leader::finish`] it;
    /// [`Leader::priority`] says when a caller of higher priority joined.
    Leader(Leader<K, T>, oneshot::Receiver<Outcome<T>>),
    /// Another caller leads; the outcome arrives here.
    Waiter(oneshot::Receiver<Outcome<T>>),
}

impl<K: Eq + Hash + Clone, T: Clone> Flights<K, T> {
    /// Joins the flight for `key` at `priority`, leading it if there is
    /// none. A [`Priority::Demand`] caller joining a prefetch flight raises
    /// the flight's priority (its leader sees it on [`Leader::priority`]).
    pub fn join(self: &Arc<Self>, key: K, priority: Priority) -> Joined<K, T> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock();
        match waiting.get_mut(&key) {
            Some(flight) => {
                flight.callers.push(tx);
                flight.priority.send_if_modified(|now| {
                    let raise = priority == Priority::Demand && *now == Priority::Prefetch;
                    if raise {
                        *now = Priority::Demand;
                    }
                    raise
                });
                Joined::Waiter(rx)
            }
            None => {
                let (priority, raised) = watch::channel(priority);
                waiting.insert(key.clone(), Flight { callers: vec![tx], priority });
                Joined::Leader(Leader { flights: self.clone(), key: Some(key), priority: raised }, rx)
            }
        }
    }

    /// Flights under way.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn settle(&self, key: &K, outcome: Outcome<T>) {
        let waiters = self.waiting.lock().remove(key).map(|f| f.callers).unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// The leader of a flight. Its outcome goes to every caller; dropped
/// without one (cancelled, panicked), it ends the flight with
/// [`FetchError::Abandoned`], so no caller waits on a flight nobody runs
/// and the next caller starts a new one.
pub struct Leader<K: Eq + Hash + Clone, T: Clone> {
    flights: Arc<Flights<K, T>>,
    key: Option<K>,
    priority: watch::Receiver<Priority>,
}

impl<K: Eq + Hash + Clone, T: Clone> Leader<K, T> {
    /// The flight's priority: the highest of its callers'. It changes (at
    /// most once, prefetch to demand) when a demand caller joins.
    pub fn priority(&self) -> watch::Receiver<Priority> {
        self.priority.clone()
    }

    pub fn finish(mut self, outcome: Outcome<T>) {
        if let Some(key) = self.key.take() {
            self.flights.settle(&key, outcome);
        }
    }
}

impl<K: Eq + Hash + Clone, T: Clone> Drop for Leader<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.settle(&key, Err(FetchError::Abandoned));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_caller_gets_the_leaders_outcome_and_the_flight_ends() {
        let flights: Arc<Flights<u32, u32>> = Arc::default();
        let Joined::Leader(leader, first) = flights.join(1, Priority::Demand) else {
            panic!("the first caller leads")
        };
        let Joined::Waiter(second) = flights.join(1, Priority::Demand) else { panic!("the second waits") };
        assert!(
            matches!(flights.join(2, Priority::Demand), Joined::Leader(..)),
            "another key, another flight"
        );
        leader.finish(Ok(7));
        assert_eq!(first.await.unwrap().unwrap(), 7);
        assert_eq!(second.await.unwrap().unwrap(), 7);
        assert!(matches!(flights.join(1, Priority::Demand), Joined::Leader(..)), "a finished flight is gone");
    }

    #[tokio::test]
    async fn a_leader_that_panics_or_is_cancelled_strands_nobody() {
        let flights: Arc<Flights<u32, u32>> = Arc::default();
        let Joined::Leader(leader, _) = flights.join(1, Priority::Demand) else { panic!("leads") };
        let Joined::Waiter(waiter) = flights.join(1, Priority::Demand) else { panic!("waits") };
        let task = tokio::spawn(async move {
            let _leader = leader;
            panic!("the fetch panics");
        });
        assert!(task.await.is_err());
        assert!(matches!(waiter.await.unwrap(), Err(FetchError::Abandoned)));
        assert!(flights.is_empty());

        // Cancelled: the task holding the leader is aborted mid-fetch.
        let Joined::Leader(leader, _) = flights.join(2, Priority::Demand) else { panic!("leads") };
        let Joined::Waiter(waiter) = flights.join(2, Priority::Demand) else { panic!("waits") };
        let task = tokio::spawn(async move {
            let _leader = leader;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(matches!(waiter.await.unwrap(), Err(FetchError::Abandoned)));
        assert!(
            matches!(flights.join(2, Priority::Demand), Joined::Leader(..)),
            "the next caller starts anew"
        );
    }

    #[tokio::test]
    async fn a_demand_caller_raises_a_prefetch_flight_once() {
        let flights: Arc<Flights<u32, u32>> = Arc::default();
        let Joined::Leader(leader, _) = flights.join(1, Priority::Prefetch) else { panic!("leads") };
        let mut priority = leader.priority();
        assert_eq!(*priority.borrow_and_update(), Priority::Prefetch);
        let _ = flights.join(1, Priority::Prefetch);
        assert!(!priority.has_changed().unwrap(), "another prefetch caller changes nothing");
        let _ = flights.join(1, Priority::Demand);
        assert!(priority.has_changed().unwrap());
        assert_eq!(*priority.borrow_and_update(), Priority::Demand);
        let _ = flights.join(1, Priority::Demand);
        assert!(!priority.has_changed().unwrap(), "raised once");
        leader.finish(Ok(1));
    }
}
