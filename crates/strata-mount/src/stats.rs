//! Counters of a mount's reads: how many, how many bytes, how many failed,
//! how long each took (a latency histogram). Updated with relaxed atomics
//! on the FUSE threads and workers; read as a [`ReadStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_types::{ReadStats, READ_LATENCY_BOUNDS};

/// Live read counters of one mount.
#[derive(Debug)]
pub struct MountStats {
    reads_cached: AtomicU64,
    reads_waited: AtomicU64,
    read_errors: AtomicU64,
    read_bytes: AtomicU64,
    buckets: [AtomicU64; READ_LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
}

impl Default for MountStats {
    fn default() -> Self {
        Self {
            reads_cached: AtomicU64::new(0),
            reads_waited: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

impl MountStats {
    /// One read answered: `bytes` returned (`None`: it failed) after
    /// `took`, on the FUSE thread (`cached`) or a worker.
    pub fn record(&self, cached: bool, bytes: Option<usize>, took: Duration) {
        let counter = if cached { &self.reads_cached } else { &self.reads_waited };
        counter.fetch_add(1, Ordering::Relaxed);
        match bytes {
            Some(n) => self.read_bytes.fetch_add(n as u64, Ordering::Relaxed),
            None => self.read_errors.fetch_add(1, Ordering::Relaxed),
        };
        let secs = took.as_secs_f64();
        let bucket =
            READ_LATENCY_BOUNDS.iter().position(|le| secs <= *le).unwrap_or(READ_LATENCY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ReadStats {
        ReadStats {
            reads_cached: self.reads_cached.load(Ordering::Relaxed),
            reads_waited: self.reads_waited.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            latency_buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            latency_sum_seconds: self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_land_in_their_latency_bucket() {
        let stats = MountStats::default();
        stats.record(true, Some(4096), Duration::from_micros(20));
        stats.record(false, Some(100), Duration::from_millis(3));
        stats.record(false, None, Duration::from_secs(9));
        let s = stats.snapshot();
        assert_eq!((s.reads_cached, s.reads_waited, s.read_errors, s.read_bytes), (1, 2, 1, 4196));
        assert_eq!(s.latency_buckets[0], 1, "20 µs ≤ 50 µs");
        assert_eq!(s.latency_buckets[6], 1, "3 ms ≤ 5 ms");
        assert_eq!(s.latency_buckets[READ_LATENCY_BOUNDS.len()], 1, "9 s over the last bound");
        assert_eq!(s.latency_buckets.iter().sum::<u64>(), 3);
        assert!((s.latency_sum_seconds - 9.00302).abs() < 1e-9);
    }
}
