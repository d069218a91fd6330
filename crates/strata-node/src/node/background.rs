//! Background fetching: a node makes the images it runs whole, in batches
//! ([`Fetcher::fetch_batch`]), so they start fast, keep no read waiting on
//! the network once fetched, and can be served by this node alone.
//!
//! One job per image, in this order: the chunks of its startup profile
//! that are missing (as the profile lists them: the order a container
//! read them), then, once a container has read from the image (or it was
//! pulled with `--all`), every missing chunk of its layers, bottom layer
//! first, in index order. Modes ([`BackgroundFetch`]): `none` fetches
//! nothing ahead of reads, `profile` the profile only, `all` both (the
//! default). A pull may set the mode of its image; the node's setting
//! covers the rest.
//!
//! Two speeds. *Urgent* work — a startup profile, the first start of an
//! image that has no profile anywhere once its reads say the path is long
//! ([`long_path`]: there each miss pays a round trip, and the whole image
//! comes at once, reads first; on a short path misses are cheap and are
//! left the link), a pull with `--all` — goes at full link speed. The rest yields: it sends no
//! new batch while a read waits on peers, nor until reads have been quiet
//! for [`QUIET`], and keeps to the node's byte-rate cap. Either way reads
//! go first at the serving peer (demand priority, streams and caps) and a
//! read that wants a chunk a batch has asked for gets it alone at demand
//! priority ([`Fetcher::fetch_batch`]).
//!
//! How much is asked at once follows the link ([`Window`]): batches in
//! flight up to a window of bytes that grows while the connection's
//! round-trip time stays near its least, and shrinks when it rises (a
//! queue builds at the bottleneck, where a read's reply would wait
//! behind it): full rate with a short queue, as LEDBAT (RFC 6817) keeps
//! scavenger traffic out of the way of the rest; and it stays within
//! what the path delivers per round trip, so bytes do not pile up at the
//! holder either.
//!
//! A read that misses moves what follows its chunk (the rest of its file,
//! the next files in path order) to the front of its job's order
//! ([`read_ahead`]: 2 MiB per 50 ms of round trip, 2 to 16 MiB): without
//! a profile, the bulk follows the reads.
//!
//! The full fetch of an image is recorded as started in the store
//! ([`strata_store::FetchState`]): a restarted node resumes it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_store::{FetchState, Store, StoreError};
use strata_types::{BackgroundFetch, ChunkId, ImageId, LayerId};
use strata_wire::{Priority, MAX_KEYS};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Node;
use crate::fetcher::BatchOutcome;

/// How a node fetches in the background (`[node]` settings).
#[derive(Clone, Copy, Debug)]
pub struct BackgroundConfig {
    /// The mode for images whose pull set none.
    pub mode: BackgroundFetch,
    /// Bytes per second the yielding work may take, all images together;
    /// `None`: no cap. Urgent work is not capped.
    pub rate: Option<u64>,
    /// Batch requests in flight at most, per image.
    pub requests: usize,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self { mode: BackgroundFetch::All, rate: None, requests: 4 }
    }
}

/// How long reads must have been quiet before yielding work sends again.
pub const QUIET: Duration = Duration::from_millis(500);
/// On the first start of an image with no profile: the reads that must
/// have waited on peers before their mean wait says how long the path is.
pub const ESCALATE_READS: u64 = 8;
/// ... and the mean wait per read from which the whole image is fetched at
/// full speed. A read miss costs about a round trip; python's first start
/// makes ~760 of them, 0.8–3 s in all below this (then the bulk, which a
/// full-speed fetch queues ahead of every miss, loses), 11 s or more above
/// (then it wins: the image crosses a 100 Mbit/s link in ~13 s). A total
/// wait cannot tell the two apart early: 1.5 s in all was reached both on
/// a 50 ms path after ~20 misses and, some runs, on a loopback link.
pub const LONG_PATH_WAIT: Duration = Duration::from_millis(15);

/// Whether reads that waited `waited` in all, `reads` of them, were on a
/// long path (see [`LONG_PATH_WAIT`]).
pub fn long_path(waited: Duration, reads: u64) -> bool {
    reads >= ESCALATE_READS && waited.as_micros() / u128::from(reads) >= LONG_PATH_WAIT.as_micros()
}
/// How long a pass that fetched nothing waits before the next, at first
/// (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The window of bytes a job keeps asked for and not yet received.
///
/// Grows by half per batch answered while the connection's smoothed
/// round-trip time stays within a target of its least (a quarter of it,
/// at least [`MIN_QUEUE`]); shrinks by a quarter when it exceeds it. The
/// least RTT seen is the path's; above it, the bottleneck's queue. The
/// floor is small (a few chunks) so that on a short path the queue a read
/// waits behind stays a few milliseconds long.
///
/// The RTT sees only the network's queue, not the one at the serving
/// node (bytes asked for and waiting there for the connection to take
/// them), so the window is also kept to what the path delivers: at most
/// twice the delivery rate times the least RTT, BBR's bound on data in
/// flight (draft-cardwell-iccrg-bbr, "cwnd_gain" 2 on its estimate of the
/// bandwidth-delay product). The rate is the highest of the last few round
/// trips' samples, each the bytes the pass had answered while one batch
/// was out, over the time it was out. Asked for beyond that, bytes only
/// queue at the holder, where a read-ahead or a read's own chunk would
/// wait behind them.
#[derive(Clone, Debug)]
pub struct Window {
    bytes: u64,
    base_rtt: Option<Duration>,
    /// (when, bytes per second) of the last few round trips' rate samples.
    rates: std::collections::VecDeque<(Instant, f64)>,
}

/// The queueing delay a window aims to stay under, at least.
pub const MIN_QUEUE: Duration = Duration::from_millis(4);
const MIN_WINDOW: u64 = 32 << 10;
const MAX_WINDOW: u64 = 256 << 20;
const FIRST_WINDOW: u64 = 2 << 20;
/// Requests a window is cut into, at least: one answered while the next
/// are on their way keeps the link busy, and a window is counted in
/// flight batch by batch (a batch's bytes until its last arrives).
const BATCHES_PER_WINDOW: u64 = 4;
/// Round trips over which the highest rate sample counts, and the
/// shortest such span.
const RATE_RTTS: u32 = 8;
const MIN_RATE_SPAN: Duration = Duration::from_millis(200);
/// The window's bound: this many times the rate times the least RTT.
const RATE_GAIN: f64 = 2.0;
/// ... but never below this: the least RTT is the network's, while a
/// batch also waits on the holder's store and the request's own overhead,
/// which on a short path (a LAN) outweigh it; there a window bound to
/// the network's product would shrink the rate it is measured by.
const RATE_FLOOR: u64 = 512 << 10;

impl Default for Window {
    fn default() -> Self {
        Self { bytes: FIRST_WINDOW, base_rtt: None, rates: Default::default() }
    }
}

impl Window {
    /// Bytes to keep in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The least round-trip time seen (the path's), if any yet.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.base_rtt
    }

    /// Bytes one batch asks for.
    pub fn batch_bytes(&self) -> u64 {
        (self.bytes / BATCHES_PER_WINDOW).max(MIN_WINDOW / BATCHES_PER_WINDOW)
    }

    /// A batch was answered at `now`; `rtt` is the connection's smoothed
    /// round-trip time then (`None`: unknown, nothing changes), `rate` the
    /// delivery rate sample it gives, in bytes per second (`None`: none).
    pub fn answered(&mut self, rtt: Option<Duration>, rate: Option<f64>, now: Instant) {
        let Some(rtt) = rtt else { return };
        let base = self.base_rtt.map_or(rtt, |b| b.min(rtt));
        self.base_rtt = Some(base);
        let target = (base / 4).max(MIN_QUEUE);
        if rtt.saturating_sub(base) > target {
            self.bytes = (self.bytes - self.bytes / 4).max(MIN_WINDOW);
        } else {
            self.bytes = (self.bytes + self.bytes / 2).min(MAX_WINDOW);
        }
        if let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) {
            self.rates.push_back((now, rate));
        }
        let span = (base * RATE_RTTS).max(MIN_RATE_SPAN);
        while self.rates.len() > 1
            && self.rates.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > span)
        {
            self.rates.pop_front();
        }
        let Some(rate) = self.rates.iter().map(|(_, r)| *r).reduce(f64::max) else { return };
        let bound = (RATE_GAIN * rate * base.as_secs_f64()) as u64;
        self.bytes = self.bytes.min(bound.max(RATE_FLOOR));
    }
}

/// A byte-rate cap: a token bucket of one second's bytes, never less than
/// the largest batch (as Nydus sizes its bucket), so a batch always fits.
struct RateCap {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateCap {
    fn new(rate: u64) -> Self {
        Self { rate: rate as f64, tokens: rate as f64, at: Instant::now() }
    }

    /// Takes `bytes`; returns how long to wait before sending them.
    fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let burst = self.rate.max(bytes as f64);
        self.tokens =
            (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What a job is doing, for `strata status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Asking for batches.
    Fetching,
    /// Waiting for reads to be quiet.
    Paused,
    /// Keeping to the rate cap.
    Capped,
    /// Waiting before another pass (what was left failed).
    Retrying,
    /// Waiting for room under the cache's cap.
    Full,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Fetching => "fetching",
            JobState::Paused => "paused",
            JobState::Capped => "capped",
            JobState::Retrying => "retrying",
            JobState::Full => "full",
        }
    }
}

/// One image's background fetch, as `strata status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobStatus {
    pub image: ImageId,
    pub state: JobState,
    /// Full speed (a profile, a first start, `--all`), or yielding.
    pub urgent: bool,
    /// Beyond the profile: every chunk of the image.
    pub whole: bool,
    /// Chunks and stored bytes this job brought.
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks it has still to ask for in this pass, and their bytes
    /// uncompressed.
    pub chunks_left: u64,
    pub raw_bytes_left: u64,
    /// Stored bytes per second over the last few seconds.
    pub rate: f64,
    /// Seconds until the pass is through at that pace (`None` before the
    /// first batch is answered).
    pub eta_seconds: Option<f64>,
    /// Seconds since the job started.
    pub seconds: f64,
}

/// An image's job.
pub(crate) struct Job {
    image: ImageId,
    /// Full speed for the rest too (a first start with no profile, `--all`).
    urgent: AtomicBool,
    /// Beyond the profile.
    whole: AtomicBool,
    /// A first start: how long reads had waited, and how many, when it
    /// began; once the reads since say the path is long ([`long_path`]),
    /// the job turns urgent.
    escalate_from: Mutex<Option<(Duration, u64)>>,
    started: Instant,
    state: Mutex<JobState>,
    chunks: AtomicU64,
    bytes: AtomicU64,
    chunks_left: AtomicU64,
    raw_left: AtomicU64,
    /// (when, stored bytes, uncompressed bytes) of recent batches: the rate.
    recent: Mutex<std::collections::VecDeque<(Instant, u64, u64)>>,
    /// Callers of [`Node::fetch_whole`] waiting for the image to be whole.
    done: tokio::sync::watch::Sender<bool>,
    /// Chunks reads missed since the pass last looked, newest last (at
    /// most [`MAX_MISSES`]): the pass reads ahead of each ([`Order`]).
    misses: Mutex<Vec<ChunkId>>,
}

/// Misses a job keeps between two batches; older ones are dropped.
const MAX_MISSES: usize = 256;

/// How far back the rate looks.
const RATE_SPAN: Duration = Duration::from_secs(5);

impl Job {
    fn new(image: ImageId) -> Self {
        Self {
            image,
            urgent: AtomicBool::new(false),
            whole: AtomicBool::new(false),
            escalate_from: Mutex::new(None),
            started: Instant::now(),
            state: Mutex::new(JobState::Fetching),
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            chunks_left: AtomicU64::new(0),
            raw_left: AtomicU64::new(0),
            recent: Mutex::default(),
            done: tokio::sync::watch::channel(false).0,
            misses: Mutex::default(),
        }
    }

    fn set_state(&self, state: JobState) {
        *self.state.lock() = state;
    }

    fn answered(&self, outcome: &BatchOutcome, raw: u64) {
        self.chunks.fetch_add(outcome.fetched as u64, Ordering::Relaxed);
        self.bytes.fetch_add(outcome.bytes, Ordering::Relaxed);
        let now = Instant::now();
        let mut recent = self.recent.lock();
        recent.push_back((now, outcome.bytes, raw));
        while recent.front().is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_SPAN) {
            recent.pop_front();
        }
    }

    fn status(&self) -> JobStatus {
        let now = Instant::now();
        let recent = self.recent.lock();
        let span = recent
            .front()
            .map_or(Duration::ZERO, |(at, _, _)| now.duration_since(*at))
            .max(Duration::from_secs(1))
            .min(RATE_SPAN)
            .as_secs_f64();
        let rate = recent.iter().map(|(_, b, _)| *b).sum::<u64>() as f64 / span;
        let raw_rate = recent.iter().map(|(_, _, r)| *r).sum::<u64>() as f64 / span;
        let raw_left = self.raw_left.load(Ordering::Relaxed);
        JobStatus {
            image: self.image,
            state: *self.state.lock(),
            urgent: self.urgent.load(Ordering::Relaxed),
            whole: self.whole.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            chunks_left: self.chunks_left.load(Ordering::Relaxed),
            raw_bytes_left: raw_left,
            rate,
            eta_seconds: (raw_rate > 0.0).then(|| raw_left as f64 / raw_rate),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The node's jobs, and what the yielding ones share.
#[derive(Default)]
pub(crate) struct Jobs {
    running: Mutex<HashMap<ImageId, Arc<Job>>>,
    /// Layers whose images a read has started (so a miss looks them up once).
    started_layers: Mutex<HashSet<LayerId>>,
    cap: Mutex<Option<RateCap>>,
}

/// A chunk to fetch, its uncompressed length, and whether it is urgent
/// (a profile's).
#[derive(Clone, Copy, Debug)]
struct Item {
    id: ChunkId,
    raw: u64,
    profile: bool,
}

/// Why a job is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The image was pulled: its profile, if it has one.
    Pulled,
    /// `strata pull --all`: everything, now, at full speed.
    All,
    /// A container read from it: the rest, yielding (at full speed when
    /// the image has no profile: its first start).
    Read,
    /// The node started with the full fetch recorded as under way.
    Resumed,
}

impl Node {
    /// The background mode of `image`: its pull's, else the node's.
    fn background_mode(&self, state: &FetchState) -> BackgroundFetch {
        state.mode.unwrap_or(self.config.background.mode)
    }

    /// Starts (or widens) `image`'s background job for `why`.
    pub fn start_background(self: &Arc<Self>, image: ImageId, why: Start) {
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.start_background_now(image, why).await {
                tracing::warn!(%image, error = %e, "starting the background fetch failed");
            }
        });
    }

    async fn start_background_now(self: &Arc<Self>, image: ImageId, why: Start) -> Result<(), StoreError> {
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            Ok((store.fetch_state(&image)?, store.profile(&image)?.is_some()))
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("a store task failed: {e}")))?;
        let (state, has_profile) = read?;
        if why != Start::Resumed {
            self.touch(image);
        }
        let mode = self.background_mode(&state);
        let mut job_escalates = false;
        let (whole, urgent) = match (why, mode) {
            (Start::All, _) => (true, true),
            (_, BackgroundFetch::None) => return Ok(()),
            (Start::Pulled, _) => (false, false),
            (Start::Read | Start::Resumed, BackgroundFetch::Profile) => (false, false),
            // No profile anywhere: the first start of the image. Its reads
            // decide: cheap ones (a short path) are left the link; once
            // they say the path is long, the whole image comes at full
            // speed (see `escalate`).
            (Start::Read, BackgroundFetch::All) => {
                if !has_profile {
                    job_escalates = true;
                }
                (true, false)
            }
            (Start::Resumed, BackgroundFetch::All) => (true, false),
        };
        if whole && !state.started {
            let store = self.store.clone();
            let kept =
                tokio::task::spawn_blocking(move || store.update_fetch_state(&image, |s| s.started = true))
                    .await;
            if let Ok(Err(e)) = kept {
                tracing::warn!(%image, error = %e, "recording the background fetch failed");
            }
        }
        // Flags set under the jobs' lock: a job ending at this moment sees
        // them (it checks under the same lock) or is gone (a new one starts).
        let (job, new) = {
            let mut running = self.jobs.running.lock();
            let (job, new) = match running.get(&image) {
                Some(job) => (job.clone(), false),
                None => {
                    let job = Arc::new(Job::new(image));
                    running.insert(image, job.clone());
                    (job, true)
                }
            };
            if whole {
                job.whole.store(true, Ordering::Relaxed);
            }
            if urgent {
                job.urgent.store(true, Ordering::Relaxed);
            }
            if job_escalates {
                let demand = self.fetcher.demand();
                job.escalate_from.lock().get_or_insert((demand.waited(), demand.reads()));
            }
            if why == Start::All {
                // A new wait for the image whole (`fetch_whole`).
                job.done.send_replace(false);
            }
            (job, new)
        };
        if new {
            tracing::info!(%image, ?why, whole, urgent, "background fetch started");
            let node = self.clone();
            tokio::spawn(async move { node.run_job(job).await });
        }
        Ok(())
    }

    /// A read missed `chunk`, of `layers`: the running jobs read ahead of
    /// it ([`Order::missed`]), and its images' full fetch starts (once per
    /// layer; the lookup runs on its own task).
    pub(crate) fn read_missed(self: &Arc<Self>, chunk: ChunkId, layers: &[LayerId]) {
        for job in self.jobs.running.lock().values() {
            let mut misses = job.misses.lock();
            if misses.len() == MAX_MISSES {
                misses.remove(0);
            }
            misses.push(chunk);
        }
        {
            let mut started = self.jobs.started_layers.lock();
            let before = started.len();
            started.extend(layers.iter().copied());
            if started.len() == before {
                return;
            }
        }
        let node = self.clone();
        let layers = layers.to_vec();
        tokio::spawn(async move {
            let store = node.store.clone();
            let images = tokio::task::spawn_blocking(move || -> Result<HashSet<ImageId>, StoreError> {
                let mut images = HashSet::new();
                for layer in &layers {
                    images.extend(store.layer_images(layer)?);
                }
                Ok(images)
            })
            .await;
            match images {
                Ok(Ok(images)) => {
                    for image in images {
                        node.start_background(image, Start::Read);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "finding a read's images failed"),
                Err(e) => tracing::warn!(error = %e, "finding a read's images failed"),
            }
        });
    }

    /// Resumes the full fetches a previous run left under way.
    pub(crate) async fn resume_background(self: &Arc<Self>) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.fetch_states()).await {
            Ok(Ok(states)) => {
                for (image, _) in states.into_iter().filter(|(_, s)| s.started) {
                    self.start_background(image, Start::Resumed);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the background fetches failed"),
            Err(e) => tracing::warn!(error = %e, "reading the background fetches failed"),
        }
    }

    /// The background-fetch mode of images whose pull set none.
    pub fn background_default(&self) -> BackgroundFetch {
        self.config.background.mode
    }

    /// What the background jobs are doing.
    pub fn background_status(&self) -> Vec<JobStatus> {
        let mut jobs: Vec<JobStatus> = self.jobs.running.lock().values().map(|j| j.status()).collect();
        jobs.sort_by_key(|j| j.image);
        jobs
    }

    /// Fetches every chunk of `image` now at full speed (`strata pull
    /// --all`) and returns once the job ends (the image whole, or what
    /// is left failed a pass; the job goes on retrying).
    pub async fn fetch_whole(self: &Arc<Self>, image: ImageId) -> Result<(), StoreError> {
        self.start_background_now(image, Start::All).await?;
        let job = self.jobs.running.lock().get(&image).cloned();
        if let Some(job) = job {
            let mut done = job.done.subscribe();
            let _ = done.wait_for(|d| *d).await;
        }
        Ok(())
    }

    async fn run_job(self: Arc<Self>, job: Arc<Job>) {
        let image = job.image;
        // Test builds: a whole-image fetch that holds still once recorded
        // as started, so a test can kill the node before it asks anything.
        #[cfg(feature = "fault-injection")]
        if job.whole.load(Ordering::Relaxed) && std::env::var_os("STRATA_FAULT_HOLD_BACKGROUND").is_some() {
            tracing::info!(%image, "background fetch held (fault injection)");
            std::future::pending::<()>().await;
        }
        let mut backoff = FIRST_BACKOFF;
        let mut last_total: Option<(bool, usize)> = None;
        loop {
            let whole = job.whole.load(Ordering::Relaxed);
            let store = self.store.clone();
            let queue = tokio::task::spawn_blocking(move || queue(&store, &image, whole)).await;
            let queue = match queue {
                Ok(Ok(queue)) => queue,
                Ok(Err(e)) => {
                    tracing::warn!(%image, error = %e, "background fetch stopped");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%image, error = %e, "background fetch stopped");
                    break;
                }
            };
            if queue.is_empty() {
                // Widened meanwhile: another pass; else the job ends.
                let ended = {
                    let mut running = self.jobs.running.lock();
                    let widened = job.whole.load(Ordering::Relaxed) != whole;
                    if !widened {
                        running.remove(&image);
                        self.jobs.started_layers.lock().clear();
                    }
                    !widened
                };
                if !ended {
                    continue;
                }
                let status = job.status();
                tracing::info!(%image, whole, chunks = status.chunks, bytes = status.bytes, seconds = status.seconds, "background fetch done");
                if whole {
                    // Whole: nothing to resume after a restart.
                    let store = self.store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        store.update_fetch_state(&image, |s| s.started = false)
                    })
                    .await;
                    let _ = job.done.send(true);
                }
                return;
            }
            let total = queue.len();
            // A job's image counts as used at each pass: within the grace
            // period the cache leaves it alone.
            self.touch(image);
            let fetched = self.run_pass(&job, queue).await;
            if self.is_stopping() {
                self.jobs.running.lock().remove(&image);
                let _ = job.done.send(true);
                return;
            }
            // A pass that left as much missing as the last one did (chunks
            // under way elsewhere, or not stored) waits too, not spins.
            let stalled =
                last_total.is_some_and(|last| last == (whole, total) || (last.0 == whole && total > last.1));
            last_total = Some((whole, total));
            if fetched < total || stalled {
                // Some chunks no holder gave: the waiters (`pull --all`)
                // hear of it; the job tries again later.
                if whole {
                    let _ = job.done.send(true);
                }
                job.set_state(JobState::Retrying);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                job.set_state(JobState::Fetching);
            } else {
                backoff = FIRST_BACKOFF;
            }
        }
        self.jobs.running.lock().remove(&image);
        let _ = job.done.send(true);
    }

    /// Asks for `queue` in windowed batches; returns how many of its chunks
    /// are held once it is through (fetched or already here).
    async fn run_pass(self: &Arc<Self>, job: &Arc<Job>, queue: Vec<Item>) -> usize {
        let started = Instant::now();
        let mut pass = Pass {
            window: Window::default(),
            stored: 1,
            raw_seen: 2,
            flying: 0,
            held: 0,
            profile_done: None,
            delivered: 0,
        };
        let mut left_raw: u64 = queue.iter().map(|i| i.raw).sum();
        job.chunks_left.store(queue.len() as u64, Ordering::Relaxed);
        job.raw_left.store(left_raw, Ordering::Relaxed);
        let mut order = Order::new(queue);
        let mut in_flight: JoinSet<Asked> = JoinSet::new();
        let requests = self.config.background.requests.max(1);
        let settle = |pass: &mut Pass, done: Option<Result<Asked, tokio::task::JoinError>>| {
            if let Some(Ok(asked)) = done {
                pass.answered(&asked);
                job.answered(&asked.outcome, asked.raw);
                self.metrics.background_chunks.inc_by(asked.outcome.fetched as u64);
                self.metrics.background_bytes.inc_by(asked.outcome.bytes);
                self.metrics.background_requests.inc_by(asked.outcome.requests as u64);
            }
        };
        let follow_reads = |order: &mut Order, base_rtt: Option<Duration>| {
            let misses = std::mem::take(&mut *job.misses.lock());
            for chunk in misses {
                order.missed(&chunk, read_ahead(base_rtt));
            }
        };
        while order.peek().is_some() {
            if self.is_stopping() || !self.jobs.running.lock().contains_key(&job.image) {
                break;
            }
            while !in_flight.is_empty() && (pass.flying >= pass.window.bytes() || in_flight.len() >= requests)
            {
                let done = in_flight.join_next().await;
                settle(&mut pass, done);
            }
            follow_reads(&mut order, pass.window.base_rtt());
            let Some(first) = order.peek() else { break };
            // After the wait for room in the window: no batch goes out
            // while a read waits.
            if !(order.queue[first].profile || job.urgent.load(Ordering::Relaxed)) {
                self.yield_to_reads(job).await;
                follow_reads(&mut order, pass.window.base_rtt());
            }
            let Some(first) = order.peek() else { break };
            let profile = order.queue[first].profile;
            let urgent = profile || job.urgent.load(Ordering::Relaxed);
            let ratio = pass.stored as f64 / pass.raw_seen as f64;
            let mut batch = Vec::new();
            let (mut batch_raw, mut batch_estimate) = (0u64, 0u64);
            while let Some(i) = order.peek() {
                if batch.len() == MAX_KEYS || batch_estimate >= pass.window.batch_bytes() {
                    break;
                }
                // One kind per batch: the profile's (counted as prefetched)
                // or the rest, at one speed.
                let item = order.queue[i];
                if !batch.is_empty()
                    && (item.profile != profile
                        || (item.profile || job.urgent.load(Ordering::Relaxed)) != urgent)
                {
                    break;
                }
                order.take(i);
                batch.push(item.id);
                batch_raw += item.raw;
                batch_estimate += ((item.raw as f64 * ratio) as u64).max(1);
            }
            left_raw = left_raw.saturating_sub(batch_raw);
            job.chunks_left.store(order.left as u64, Ordering::Relaxed);
            job.raw_left.store(left_raw, Ordering::Relaxed);
            if !urgent {
                self.keep_to_cap(job, batch_estimate).await;
            }
            // Never past the cache's cap for work nobody waits on.
            while !self.make_room(batch_estimate).await {
                job.set_state(JobState::Full);
                if self.is_stopping() {
                    break;
                }
                tokio::time::sleep(self.config.cache.interval.min(Duration::from_secs(5))).await;
            }
            job.set_state(JobState::Fetching);
            pass.flying += batch_estimate;
            let node = self.clone();
            let (sent, delivered_before) = (Instant::now(), pass.delivered);
            in_flight.spawn(async move {
                let outcome = node.fetcher.fetch_batch(batch, Priority::Prefetch, true).await;
                if profile {
                    node.metrics.prefetched_chunks.inc_by(outcome.fetched as u64);
                }
                Asked { outcome, raw: batch_raw, estimate: batch_estimate, profile, sent, delivered_before }
            });
        }
        while let Some(done) = in_flight.join_next().await {
            settle(&mut pass, Some(done));
        }
        if let Some(done) = pass.profile_done {
            self.metrics.prefetch_seconds.inc_by(done.duration_since(started).as_secs_f64());
        }
        pass.held
    }

    /// Waits until no read has waited on peers for [`QUIET`].
    async fn yield_to_reads(&self, job: &Job) {
        loop {
            if self.escalate(job) {
                break;
            }
            let wait = match self.fetcher.demand().quiet_for(Instant::now()) {
                Some(quiet) if quiet >= QUIET => break,
                Some(quiet) => QUIET - quiet,
                None => QUIET,
            };
            job.set_state(JobState::Paused);
            // Short naps: a first start that turns urgent goes on at once.
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
        job.set_state(JobState::Fetching);
    }

    /// Whether `job` (a first start) turns urgent now: the reads since it
    /// began say the path is long ([`long_path`]).
    fn escalate(&self, job: &Job) -> bool {
        if job.urgent.load(Ordering::Relaxed) {
            return true;
        }
        let Some((waited, reads)) = *job.escalate_from.lock() else { return false };
        let demand = self.fetcher.demand();
        if !long_path(demand.waited().saturating_sub(waited), demand.reads().saturating_sub(reads)) {
            return false;
        }
        job.urgent.store(true, Ordering::Relaxed);
        tracing::info!(image = %job.image, "reads keep waiting on peers: the whole image comes at full speed");
        true
    }

    /// Waits out the node's byte-rate cap for `bytes`.
    async fn keep_to_cap(&self, job: &Job, bytes: u64) {
        let Some(rate) = self.config.background.rate else { return };
        let wait = self.jobs.cap.lock().get_or_insert_with(|| RateCap::new(rate)).take(bytes, Instant::now());
        if !wait.is_zero() {
            job.set_state(JobState::Capped);
            tokio::time::sleep(wait).await;
            job.set_state(JobState::Fetching);
        }
    }
}

/// Uncompressed bytes a pass reads ahead of each chunk a read missed, at
/// least ([`read_ahead`]).
pub const READ_AHEAD: u64 = 2 << 20;
/// ... per this much of the path's least round-trip time: a read that
/// misses costs a round trip, so the longer the path, the further ahead a
/// miss is worth reading (python's first start, one run each: at 50 ms
/// 2 MiB waited on 137–156 reads and 8 MiB on 197; at 150 ms 8 MiB was
/// ready 4 s sooner than 2 MiB).
pub const READ_AHEAD_RTT: Duration = Duration::from_millis(50);
/// ... and at most this much.
pub const MAX_READ_AHEAD: u64 = 16 << 20;

/// Uncompressed bytes to read ahead of a miss on a path whose least
/// round-trip time is `base_rtt` (unknown: [`READ_AHEAD`]).
pub fn read_ahead(base_rtt: Option<Duration>) -> u64 {
    let Some(rtt) = base_rtt else { return READ_AHEAD };
    let bytes = u128::from(READ_AHEAD) * rtt.as_nanos() / READ_AHEAD_RTT.as_nanos();
    u64::try_from(bytes).unwrap_or(u64::MAX).clamp(READ_AHEAD, MAX_READ_AHEAD)
}
/// Queue items a read-ahead looks through at most (taken ones included).
const READ_AHEAD_SCAN: usize = 4096;

/// The order a pass asks for its queue in: the queue's own (the profile,
/// then the layers in index order, which is path order), except that a
/// chunk a read missed moves what follows it in the queue (the rest of its
/// file, then the files after it in its directory, in path order) up to
/// [`read_ahead`] bytes to the front, the newest miss first: as the
/// kernel's readahead follows a file's reads, the bulk of a first start
/// follows the container's, so its next reads find their chunks here or
/// on the way instead of each paying a round trip.
struct Order {
    queue: Vec<Item>,
    /// Per queue item: taken into a batch.
    asked: Vec<bool>,
    /// The first item of `queue` not known to be taken.
    next: usize,
    /// Items a miss moved ahead, to take first (some may be taken already).
    front: std::collections::VecDeque<usize>,
    /// Per queue item: in `front` now.
    in_front: Vec<bool>,
    /// Each chunk's place in `queue`.
    position: HashMap<ChunkId, usize>,
    /// Items not taken, and profile items not taken.
    left: usize,
    profile_left: usize,
}

impl Order {
    fn new(queue: Vec<Item>) -> Self {
        let position = queue.iter().enumerate().map(|(i, item)| (item.id, i)).collect();
        Self {
            asked: vec![false; queue.len()],
            in_front: vec![false; queue.len()],
            left: queue.len(),
            profile_left: queue.iter().filter(|i| i.profile).count(),
            next: 0,
            front: Default::default(),
            position,
            queue,
        }
    }

    /// The next item to take, without taking it.
    fn peek(&mut self) -> Option<usize> {
        while let Some(&i) = self.front.front() {
            if !self.asked[i] {
                return Some(i);
            }
            self.front.pop_front();
            self.in_front[i] = false;
        }
        while self.next < self.queue.len() && self.asked[self.next] {
            self.next += 1;
        }
        (self.next < self.queue.len()).then_some(self.next)
    }

    fn take(&mut self, i: usize) {
        if !std::mem::replace(&mut self.asked[i], true) {
            self.left -= 1;
            if self.queue[i].profile {
                self.profile_left -= 1;
            }
        }
    }

    /// A read missed `chunk` (it is fetched on its own): the items after
    /// it go first, until `ahead` uncompressed bytes of them not yet
    /// taken are reached (the last may pass it). Items already moved by an
    /// earlier miss keep their place. Nothing moves while profile items
    /// are left (the profile is the better guess of what reads come next),
    /// nor for a chunk not in the queue (another image's, or here already).
    fn missed(&mut self, chunk: &ChunkId, ahead_bytes: u64) {
        if self.profile_left > 0 {
            return;
        }
        let Some(&at) = self.position.get(chunk) else { return };
        let mut ahead = Vec::new();
        let mut bytes = 0;
        // Past items taken already, a few thousand at most: the scan runs
        // on the pass's task between batches, once per miss.
        let end = self.queue.len().min(at + 1 + READ_AHEAD_SCAN);
        for i in at + 1..end {
            if bytes >= ahead_bytes {
                break;
            }
            if !self.asked[i] {
                bytes += self.queue[i].raw;
                if !self.in_front[i] {
                    ahead.push(i);
                }
            }
        }
        for i in ahead.into_iter().rev() {
            self.in_front[i] = true;
            self.front.push_front(i);
        }
    }
}

/// A batch asked for: what it did, its chunks' uncompressed bytes, and the
/// stored bytes it was reckoned at.
struct Asked {
    outcome: BatchOutcome,
    raw: u64,
    estimate: u64,
    /// When it was sent, and the pass's bytes answered by then.
    sent: Instant,
    delivered_before: u64,
    /// Chunks of the profile.
    profile: bool,
}

/// One pass's reckoning.
struct Pass {
    window: Window,
    /// Stored bytes per uncompressed byte, learnt as batches arrive.
    stored: u64,
    raw_seen: u64,
    /// Reckoned stored bytes asked for and not yet answered.
    flying: u64,
    /// Chunks of the pass held now (fetched, or found here).
    held: usize,
    /// When the last batch of profile chunks was answered.
    profile_done: Option<Instant>,
    /// Stored bytes answered so far.
    delivered: u64,
}

impl Pass {
    fn answered(&mut self, asked: &Asked) {
        self.flying = self.flying.saturating_sub(asked.estimate);
        self.held += asked.outcome.fetched + asked.outcome.skipped;
        if asked.outcome.fetched > 0 {
            self.stored += asked.outcome.bytes;
            self.raw_seen += asked.raw;
        }
        self.delivered += asked.outcome.bytes;
        // Bytes answered while this batch was out, over that time.
        let now = Instant::now();
        let out = now.saturating_duration_since(asked.sent).as_secs_f64();
        let rate = (out > 0.0).then(|| (self.delivered - asked.delivered_before) as f64 / out);
        self.window.answered(asked.outcome.rtt, rate, now);
        tracing::trace!(
            window = self.window.bytes(),
            rtt_ms = asked.outcome.rtt.map(|r| r.as_secs_f64() * 1e3),
            rate_mib_s = rate.map(|r| r / f64::from(1 << 20)),
            flying = self.flying,
            bytes = asked.outcome.bytes,
            out_ms = out * 1e3,
            "batch answered"
        );
        if asked.profile {
            self.profile_done = Some(Instant::now());
        }
    }
}

/// The chunks of `image` to fetch, in order: its profile's missing ones,
/// then (when `whole`) every other missing chunk of its layers, bottom
/// layer first, in index order, then their tar-splits' (export and push
/// rebuild the layer tars from them); each once.
fn queue(store: &Store, image: &ImageId, whole: bool) -> Result<Vec<Item>, StoreError> {
    let Some(record) = store.image(image)? else { return Ok(Vec::new()) };
    let mut lengths: HashMap<ChunkId, u64> = HashMap::new();
    let mut in_order = Vec::new();
    let mut add = |id: &[u8], length: u32| {
        if let Ok(id) = ChunkId::from_slice(id) {
            if lengths.insert(id, u64::from(length)).is_none() {
                in_order.push(id);
            }
        }
    };
    let layers: Vec<LayerId> = record.layers.iter().filter_map(|l| LayerId::from_slice(l).ok()).collect();
    for layer in &layers {
        for entry in &store.layer_index(layer)?.entries {
            for chunk in &entry.chunks {
                add(&chunk.id, chunk.length);
            }
        }
    }
    // Last, what only export and push read: the layers' tar-splits.
    for layer in &layers {
        for split in store.layer(layer)?.map(|r| r.tar_splits).unwrap_or_default() {
            for chunk in split.blob.iter().chain(&split.extra_chunks) {
                add(&chunk.id, chunk.length);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in store.profile(image)?.unwrap_or_default() {
        if let Some(raw) = lengths.get(&id) {
            if seen.insert(id) && !store.has_chunk(&id)? {
                out.push(Item { id, raw: *raw, profile: true });
            }
        }
    }
    if whole {
        for id in in_order {
            if seen.insert(id) && !store.has_chunk(&id)? {
                out.push(Item { id, raw: lengths[&id], profile: false });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_long_path_is_told_by_the_mean_wait_of_enough_reads() {
        // A loopback link: many reads, each a millisecond or two.
        assert!(!long_path(1500 * MS, 760));
        // A 50 ms path: a few reads say so; fewer say nothing yet.
        assert!(long_path(8 * 55 * MS, 8));
        assert!(!long_path(7 * 55 * MS, 7));
        assert!(!long_path(Duration::ZERO, 0));
        // A 5 ms path: misses cheaper than the bulk.
        assert!(!long_path(100 * 6 * MS, 100));
    }

    #[test]
    fn a_window_grows_while_the_rtt_stays_near_its_least_and_shrinks_when_a_queue_builds() {
        // All at one moment: no delivery rate measured, the delay alone.
        let now = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.bytes(), FIRST_WINDOW);
        w.answered(None, None, now);
        assert_eq!(w.bytes(), FIRST_WINDOW, "no RTT known: unchanged");
        // 150 ms path: a queue under a quarter of it is fine.
        for _ in 0..4 {
            w.answered(Some(150 * MS), None, now);
        }
        w.answered(Some(180 * MS), None, now);
        let grown = w.bytes();
        assert!(grown > FIRST_WINDOW * 2, "{grown}");
        // 60 ms of queue on a 150 ms path: it shrinks, by a quarter.
        w.answered(Some(210 * MS), None, now);
        assert_eq!(w.bytes(), grown - grown / 4);
        // A 1 ms path aims at MIN_QUEUE.
        let mut w = Window::default();
        w.answered(Some(MS), None, now);
        w.answered(Some(4 * MS), None, now);
        let before = w.bytes();
        assert!(before > FIRST_WINDOW, "3 ms of queue on a 1 ms path: within MIN_QUEUE");
        w.answered(Some(6 * MS), None, now);
        assert_eq!(w.bytes(), before - before / 4, "5 ms of queue on a 1 ms path: shrunk");
        for _ in 0..100 {
            w.answered(Some(50 * MS), None, now);
        }
        assert_eq!(w.bytes(), MIN_WINDOW, "never below the floor");
        assert_eq!(w.batch_bytes(), MIN_WINDOW / BATCHES_PER_WINDOW);
    }

    fn items(n: u8, raw: u64) -> Vec<Item> {
        (0..n).map(|i| Item { id: ChunkId::of(&[i]), raw, profile: false }).collect()
    }

    fn drain(order: &mut Order) -> Vec<usize> {
        let mut taken = Vec::new();
        while let Some(i) = order.peek() {
            order.take(i);
            taken.push(i);
        }
        taken
    }

    #[test]
    fn a_window_keeps_to_twice_what_the_path_delivers_in_its_least_round_trip() {
        // A 50 ms path carrying 12.5 MB/s (bandwidth-delay product 625 kB),
        // its RTT never rising (the queue is at the holder, not in the
        // network): the delay alone would grow the window without end;
        // the rate bounds it at twice the product.
        let start = Instant::now();
        let mut w = Window::default();
        for i in 0..40u32 {
            w.answered(Some(50 * MS), Some(12.5e6), start + 25 * MS * i);
        }
        assert!((1_249_000..=1_250_000).contains(&w.bytes()), "{}", w.bytes());
        // The path shared later: once the faster samples are older than
        // eight round trips, the bound follows the slower rate.
        for i in 40..80u32 {
            w.answered(Some(50 * MS), Some(6e6), start + 25 * MS * i);
        }
        assert!((599_000..=600_000).contains(&w.bytes()), "{}", w.bytes());
        // A window too small to fill the path delivers a window per round
        // trip; the bound is twice that: it doubles per round trip.
        let mut w = Window { bytes: RATE_FLOOR, ..Window::default() };
        for i in 0..6u32 {
            let rate = w.bytes() as f64 / 0.05;
            w.answered(Some(50 * MS), Some(rate), start + 50 * MS * i);
        }
        assert!(w.bytes() >= 8 * RATE_FLOOR, "a window-bound pass grows: {}", w.bytes());
        // A short path whose batches take longer than its RTT (the holder's
        // store, per-request costs): the bound stays at the floor, not
        // below it, so the rate it is measured by does not shrink with it.
        let mut w = Window::default();
        for i in 0..40u32 {
            let rate = w.bytes() as f64 / 0.005;
            w.answered(Some(MS / 2), Some(rate), start + 5 * MS * i);
        }
        assert_eq!(w.bytes(), RATE_FLOOR);
    }

    #[test]
    fn a_longer_path_reads_further_ahead_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(read_ahead(None), READ_AHEAD);
        assert_eq!(read_ahead(Some(ms(1))), READ_AHEAD);
        assert_eq!(read_ahead(Some(ms(50))), READ_AHEAD);
        assert_eq!(read_ahead(Some(ms(150))), 3 * READ_AHEAD);
        assert_eq!(read_ahead(Some(ms(2000))), MAX_READ_AHEAD);
    }

    #[test]
    fn misses_move_nothing_while_profile_chunks_are_left() {
        let mut queue = items(6, READ_AHEAD / 4);
        queue[0].profile = true;
        let mut order = Order::new(queue.clone());
        order.missed(&queue[3].id, READ_AHEAD);
        assert_eq!(order.peek(), Some(0), "the profile goes first");
        order.take(0);
        order.missed(&queue[3].id, READ_AHEAD);
        assert_eq!(drain(&mut order), vec![4, 5, 1, 2, 3]);
    }

    #[test]
    fn a_miss_moves_what_follows_it_to_the_front_up_to_the_read_ahead() {
        // Ten chunks of a quarter of the read-ahead each: a miss brings the
        // four after it (the fourth reaches the limit) before the rest.
        let queue = items(10, READ_AHEAD / 4);
        let mut order = Order::new(queue.clone());
        assert_eq!(order.peek(), Some(0));
        order.take(0);
        order.missed(&queue[3].id, READ_AHEAD);
        assert_eq!(drain(&mut order), vec![4, 5, 6, 7, 1, 2, 3, 8, 9]);
        assert_eq!(order.left, 0);
    }

    #[test]
    fn a_newer_miss_goes_first_and_nothing_is_taken_twice() {
        let queue = items(12, READ_AHEAD / 2);
        let mut order = Order::new(queue.clone());
        order.missed(&queue[1].id, READ_AHEAD);
        let first = order.peek().expect("an item");
        order.take(first);
        // 2 taken; a newer miss at 6 goes ahead of 3.
        order.missed(&queue[6].id, READ_AHEAD);
        let mut taken = vec![2];
        taken.extend(drain(&mut order));
        assert_eq!(taken, vec![2, 7, 8, 3, 0, 1, 4, 5, 6, 9, 10, 11]);
        // A miss of a chunk not queued, or once all is taken, moves nothing.
        // A read-ahead looks through READ_AHEAD_SCAN items at most: the
        // last one within reach is moved, none beyond.
        let queue: Vec<Item> = (0..READ_AHEAD_SCAN as u32 + 10)
            .map(|i| Item { id: ChunkId::of(&i.to_be_bytes()), raw: 1, profile: false })
            .collect();
        let mut far = Order::new(queue.clone());
        for i in (1..queue.len()).filter(|i| *i != READ_AHEAD_SCAN && *i < queue.len() - 5) {
            far.take(i);
        }
        far.missed(&queue[0].id, READ_AHEAD);
        assert_eq!(far.front, [READ_AHEAD_SCAN]);
        order.missed(&ChunkId::of(b"elsewhere"), READ_AHEAD);
        order.missed(&queue[0].id, READ_AHEAD);
        assert_eq!(order.peek(), None);
    }

    #[test]
    fn a_rate_cap_lets_a_second_of_bytes_through_then_paces() {
        let start = Instant::now();
        let mut cap = RateCap { rate: 1000.0, tokens: 1000.0, at: start };
        assert_eq!(cap.take(1000, start), Duration::ZERO);
        assert_eq!(cap.take(500, start), Duration::from_millis(500));
        // A batch larger than a second's bytes is let through after its wait.
        let later = start + Duration::from_secs(10);
        assert_eq!(cap.take(3000, later), Duration::ZERO, "a full bucket holds the largest batch");
    }
}
