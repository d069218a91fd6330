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
use prometheus_client::metrics::counter::Counter;
use strata_chunk::ChunkError;
use strata_wire::Priority;
use tokio::sync::{mpsc, oneshot, watch};

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

/// Reads waiting on peers now, and when the last one stopped waiting:
/// what background fetching yields to (it sends no new request while a
/// read waits, nor until the reads have been quiet for a moment).
#[derive(Default)]
pub struct DemandGauge {
    waiting: std::sync::atomic::AtomicUsize,
    last: Mutex<Option<tokio::time::Instant>>,
    /// Microseconds reads have waited on peers, all together.
    waited_us: std::sync::atomic::AtomicU64,
    /// Reads that have waited on peers (and are done waiting).
    reads: std::sync::atomic::AtomicU64,
    /// The same two, for `/metrics` (`strata_demand_waits_total`,
    /// `strata_demand_wait_seconds_total`).
    counted: Option<(Counter, Counter<f64, std::sync::atomic::AtomicU64>)>,
}

impl DemandGauge {
    /// A gauge whose reads also count in `waits` and `seconds`.
    pub fn counted(waits: Counter, seconds: Counter<f64, std::sync::atomic::AtomicU64>) -> Self {
        Self { counted: Some((waits, seconds)), ..Self::default() }
    }

    /// A read starts waiting on peers; it stops when the guard drops.
    pub fn enter(self: &Arc<Self>) -> DemandGuard {
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DemandGuard(self.clone(), tokio::time::Instant::now())
    }

    /// How long reads have waited on peers, all together, since the start.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How many reads have waited on peers (and are done), since the start.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long no read has waited: `None` while one waits, `Duration::MAX`
    /// when none ever did.
    pub fn quiet_for(&self, now: tokio::time::Instant) -> Option<Duration> {
        if self.waiting() > 0 {
            return None;
        }
        Some(self.last.lock().map_or(Duration::MAX, |last| now.saturating_duration_since(last)))
    }
}

/// A read waiting on peers (see [`DemandGauge::enter`]), since when.
pub struct DemandGuard(Arc<DemandGauge>, tokio::time::Instant);

impl Drop for DemandGuard {
    fn drop(&mut self) {
        let now = tokio::time::Instant::now();
        let waited = now.saturating_duration_since(self.1).as_micros() as u64;
        self.0.waited_us.fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
        self.0.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((waits, seconds)) = &self.0.counted {
            waits.inc();
            seconds.inc_by(waited as f64 / 1e6);
        }
        *self.0.last.lock() = Some(now);
        self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One fetch per key at a time; every caller gets its outcome.
pub struct Flights<K, T> {
    waiting: Mutex<HashMap<K, Flight<K, T>>>,
}

/// A flight's callers and the highest priority among them.
struct Flight<K, T> {
    callers: Vec<oneshot::Sender<Outcome<T>>>,
    priority: watch::Sender<Priority>,
    /// Told the flight's key when a demand caller raises it (a batch's
    /// flight: the batch leads many, and watches them all on one channel).
    on_raise: Option<mpsc::Sender<K>>,
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
                let raised = flight.priority.send_if_modified(|now| {
                    let raise = priority == Priority::Demand && *now == Priority::Prefetch;
                    if raise {
                        *now = Priority::Demand;
                    }
                    raise
                });
                if raised {
                    if let Some(on_raise) = &flight.on_raise {
                        // Room for every flight the batch leads: each is raised once.
                        let _ = on_raise.try_send(key);
                    }
                }
                Joined::Waiter(rx)
            }
            None => {
                let (priority, raised) = watch::channel(priority);
                waiting.insert(key.clone(), Flight { callers: vec![tx], priority, on_raise: None });
                Joined::Leader(Leader { flights: self.clone(), key: Some(key), priority: raised }, rx)
            }
        }
    }

    /// Leads the flight for `key` at `priority` for a batch, unless a
    /// flight for it is under way (then `None`: the batch leaves it to that
    /// flight and does not wait). When a demand caller raises the flight,
    /// its key goes to `on_raise`, which must have room for one key per
    /// flight the batch leads.
    pub fn lead(
        self: &Arc<Self>,
        key: K,
        priority: Priority,
        on_raise: &mpsc::Sender<K>,
    ) -> Option<Leader<K, T>> {
        let mut waiting = self.waiting.lock();
        if waiting.contains_key(&key) {
            return None;
        }
        let (priority, raised) = watch::channel(priority);
        waiting
            .insert(key.clone(), Flight { callers: Vec::new(), priority, on_raise: Some(on_raise.clone()) });
        Some(Leader { flights: self.clone(), key: Some(key), priority: raised })
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

    /// The flight's key.
    pub fn key(&self) -> Option<&K> {
        self.key.as_ref()
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
