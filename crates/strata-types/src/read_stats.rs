//! A mount's read counters as a mount process reports them to its node.

use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the buckets of a FUSE read's latency (from
/// the kernel's request to the reply), Prometheus `le` labels; a last
/// bucket (+Inf) follows. From 50 µs (a read from the decoded cache) to
/// 5 s (the default fetch deadline).
pub const READ_LATENCY_BOUNDS: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0];

/// Counters of one mount's reads of image data since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Reads answered on the FUSE thread (every chunk already decoded).
    pub reads_cached: u64,
    /// Reads handed to a worker (a chunk had to come from a source).
    pub reads_waited: u64,
    /// Reads that failed (EIO: a chunk unavailable or bad).
    pub read_errors: u64,
    /// Bytes returned.
    pub read_bytes: u64,
    /// Reads per latency bucket: `READ_LATENCY_BOUNDS.len() + 1` counts,
    /// not cumulative (the last is over the last bound).
    pub latency_buckets: Vec<u64>,
    /// Sum of the latencies, seconds.
    pub latency_sum_seconds: f64,
}
