//! The node's Prometheus metrics (prometheus-client): what it fetched and
//! from where, what it served, and the cluster as it sees it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A background fetch's state (`fetching`, `paused`, `capped`, `retrying`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromLabel {
    /// `complete` (a node holding the whole layer: the origin role),
    /// `relay` (a peer fetching the same layer), `partial`.
    pub from: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub chunks_fetched: Family<FromLabel, Counter>,
    pub chunk_bytes_fetched: Family<FromLabel, Counter>,
    /// Seconds from asking a peer for a chunk to holding it verified, by
    /// the kind of peer that gave it.
    pub fetch_seconds: Family<FromLabel, Histogram, fn() -> Histogram>,
    pub fetch_failures: Counter,
    /// Reads (FUSE, a snapshot's) that found their chunk missing here and
    /// waited on peers, and the seconds they waited, all together.
    pub demand_waits: Counter,
    pub demand_wait_seconds: Counter<f64, AtomicU64>,
    pub bad_chunks: Counter,
    pub chunks_served: Counter,
    pub chunk_bytes_served: Counter,
    pub relays_served: Counter,
    pub throttle_waits: Counter,
    pub images_pulled: Counter,
    pub image_metadata_bytes_fetched: Counter,
    pub prefetched_chunks: Counter,
    pub prefetch_seconds: Counter<f64, AtomicU64>,
    pub background_chunks: Counter,
    pub background_bytes: Counter,
    pub background_requests: Counter,
    pub evicted_chunks: Counter,
    pub evicted_bytes: Counter,
    /// Set at each scrape from the jobs under way.
    pub background_jobs: Family<StateLabel, Gauge>,
    pub background_raw_bytes_left: Gauge,
    pub background_rate: Gauge<f64, AtomicU64>,
    pub profiles_kept: Counter,
    pub members_live: Gauge,
    /// Image pulls on this node waiting on another pull of the same image
    /// (on this node or another): see `Node::claim`.
    pub claims_waiting: Gauge,
    pub announcements: Counter,
    /// Lookups sent to directory nodes (answers reused, or learned from an
    /// announcement's reply, are not counted).
    pub directory_lookups: Counter,
    /// Times the lookups kept were dropped: the membership moved, or an
    /// announce interval passed.
    pub lookup_cache_clears: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let m = Self {
            registry: Registry::default(),
            chunks_fetched: Family::default(),
            chunk_bytes_fetched: Family::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram),
            fetch_failures: Counter::default(),
            bad_chunks: Counter::default(),
            chunks_served: Counter::default(),
            chunk_bytes_served: Counter::default(),
            relays_served: Counter::default(),
            throttle_waits: Counter::default(),
            images_pulled: Counter::default(),
            image_metadata_bytes_fetched: Counter::default(),
            prefetched_chunks: Counter::default(),
            prefetch_seconds: Counter::default(),
            background_chunks: Counter::default(),
            background_bytes: Counter::default(),
            background_requests: Counter::default(),
            evicted_chunks: Counter::default(),
            evicted_bytes: Counter::default(),
            background_jobs: Family::default(),
            background_raw_bytes_left: Gauge::default(),
            background_rate: Gauge::default(),
            profiles_kept: Counter::default(),
            members_live: Gauge::default(),
            claims_waiting: Gauge::default(),
            announcements: Counter::default(),
            directory_lookups: Counter::default(),
            lookup_cache_clears: Counter::default(),
            demand_waits: Counter::default(),
            demand_wait_seconds: Counter::default(),
        };
        registry.register(
            "demand_waits",
            "Reads that found their chunk missing here and waited on peers",
            m.demand_waits.clone(),
        );
        registry.register(
            "demand_wait_seconds",
            "Seconds reads waited on peers for missing chunks, all together",
            m.demand_wait_seconds.clone(),
        );
        registry.register(
            "chunks_fetched",
            "Chunks fetched from peers, verified and stored",
            m.chunks_fetched.clone(),
        );
        registry.register(
            "chunk_bytes_fetched",
            "Stored bytes of chunks fetched from peers",
            m.chunk_bytes_fetched.clone(),
        );
        registry.register(
            "fetch_failures",
            "Chunk fetches that no reachable peer could serve in time",
            m.fetch_failures.clone(),
        );
        registry.register(
            "bad_chunks",
            "Chunks a peer sent that did not match their id",
            m.bad_chunks.clone(),
        );
        registry.register("chunks_served", "Chunks sent to peers", m.chunks_served.clone());
        registry.register(
            "chunk_bytes_served",
            "Stored bytes of chunks sent to peers",
            m.chunk_bytes_served.clone(),
        );
        registry.register("relays_served", "Chunks fetched on a peer's behalf", m.relays_served.clone());
        registry.register("throttle_waits", "Replies held back by a bandwidth cap", m.throttle_waits.clone());
        registry.register("images_pulled", "Images whose metadata came from a peer", m.images_pulled.clone());
        registry.register(
            "image_metadata_bytes_fetched",
            "Bytes of image records and layer indexes fetched from peers, as they crossed (indexes compressed where sent so)",
            m.image_metadata_bytes_fetched.clone(),
        );
        registry.register(
            "prefetched_chunks",
            "Chunks fetched ahead of reads from images' startup profiles",
            m.prefetched_chunks.clone(),
        );
        registry.register(
            "chunk_fetch_seconds",
            "Seconds from asking a peer for a chunk to holding it verified, by the kind of peer that gave it",
            m.fetch_seconds.clone(),
        );
        registry.register(
            "prefetch_seconds",
            "Time spent prefetching startup profiles, first fetch to last",
            m.prefetch_seconds.clone(),
        );
        registry.register(
            "background_chunks_fetched",
            "Chunks background fetching brought (startup profiles, whole images), in batches",
            m.background_chunks.clone(),
        );
        registry.register(
            "background_chunk_bytes_fetched",
            "Stored bytes of the chunks background fetching brought",
            m.background_bytes.clone(),
        );
        registry.register(
            "background_fetch_requests",
            "Batch requests background fetching made (each asks one peer for many chunks)",
            m.background_requests.clone(),
        );
        registry.register(
            "evicted_chunks",
            "Chunks the cache evicted to keep under its cap (fetched again when read)",
            m.evicted_chunks.clone(),
        );
        registry.register("evicted_bytes", "Stored bytes the cache evicted", m.evicted_bytes.clone());
        registry.register(
            "background_fetches",
            "Images being fetched in the background, by state",
            m.background_jobs.clone(),
        );
        registry.register(
            "background_raw_bytes_left",
            "Uncompressed bytes background fetches have still to ask for",
            m.background_raw_bytes_left.clone(),
        );
        registry.register(
            "background_bytes_per_second",
            "Stored bytes per second background fetches brought lately, all images together",
            m.background_rate.clone(),
        );
        registry.register(
            "profiles_kept",
            "Startup profiles stored here (recorded by a mount here or received from a peer)",
            m.profiles_kept.clone(),
        );
        registry.register(
            "claims_waiting",
            "Image pulls waiting on another pull of the same image, here or on another node",
            m.claims_waiting.clone(),
        );
        registry.register(
            "members_live",
            "Cluster members alive or suspect, this node included",
            m.members_live.clone(),
        );
        registry.register("announcements", "Announcements sent to directory nodes", m.announcements.clone());
        registry.register(
            "directory_lookups",
            "Lookup requests sent to directory nodes, one per node asked (not those answered from recent answers)",
            m.directory_lookups.clone(),
        );
        registry.register(
            "lookup_cache_clears",
            "Times the recent directory answers were dropped (membership moved, or an announce interval passed)",
            m.lookup_cache_clears.clone(),
        );
        Self { registry, ..m }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Buckets from 0.5 ms to about 16 s, doubling: a loopback fetch to a
/// deadline-long one.
fn fetch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}
