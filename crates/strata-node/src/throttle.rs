//! Bandwidth caps on what a node serves: a token bucket for the node as a
//! whole and one per peer, shared by two priorities. Clock-driven and pure;
//! the caller waits the delay it returns (on a tokio timer), so the caps
//! and the priorities are tested without sockets.
//!
//! Demand replies (a read waits for them) always take their bytes and wait
//! out any deficit. Prefetch replies take bytes only when both buckets hold
//! them, and otherwise wait without taking any: so however many prefetch
//! replies queue, they never put the buckets in debt, and a demand reply
//! waits at most for its own bytes and other demand replies' (its bound:
//! demand bytes ÷ rate), never behind a prefetch flood.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_wire::Priority;

/// A token bucket of bytes: `rate` per second, bursts of up to one second's
/// worth (at least `min_burst`, so one large chunk always fits).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens may go negative: a reply larger than what is left is sent
    /// and paid for by waiting.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, min_burst: u64, now: Instant) -> Self {
        let burst = (rate.max(min_burst)) as f64;
        Self { rate: rate as f64, burst, tokens: burst, at: now }
    }

    /// Adds the tokens earned since the last call.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `bytes` (after [`refill`](Self::refill)); returns how long to
    /// wait before sending them.
    fn take(&mut self, bytes: u64) -> Duration {
        self.tokens -= bytes as f64;
        self.shortfall(0.0)
    }

    /// How long until the bucket holds `want` tokens (zero if it does).
    fn shortfall(&self, want: f64) -> Duration {
        if self.tokens >= want {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((want - self.tokens) / self.rate)
        }
    }
}

/// The answer of [`Throttle::pace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// The bytes are taken: send them after this wait (zero: now).
    SendAfter(Duration),
    /// Nothing taken (prefetch, buckets short): ask again after this wait.
    RetryAfter(Duration),
}

/// Caps in bytes per second; `None` is uncapped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub node: Option<u64>,
    pub per_peer: Option<u64>,
}

/// Most peers tracked at once; the least recently seen goes first.
const MAX_PEERS: usize = 4096;
const MIN_BURST: u64 = 4 << 20;

pub struct Throttle {
    caps: Caps,
    node: Mutex<Option<Bucket>>,
    peers: Mutex<HashMap<SocketAddr, Bucket>>,
}

impl Throttle {
    pub fn new(caps: Caps) -> Self {
        let now = Instant::now();
        Self {
            caps,
            node: Mutex::new(caps.node.filter(|r| *r > 0).map(|r| Bucket::new(r, MIN_BURST, now))),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Paces a reply of `bytes` to `peer` at `now` (see the module docs):
    /// demand replies take their bytes and wait out the deficit of either
    /// bucket; prefetch replies take them only when both buckets hold them.
    pub fn pace(&self, peer: SocketAddr, bytes: u64, priority: Priority, now: Instant) -> Pace {
        // Locks in one order: the node's, then the peers'.
        let mut node = self.node.lock();
        let per_peer = self.caps.per_peer.filter(|r| *r > 0);
        let mut peers = self.peers.lock();
        let peer_bucket = per_peer.map(|rate| {
            if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
                if let Some(stalest) = peers.iter().min_by_key(|(_, b)| b.at).map(|(a, _)| *a) {
                    peers.remove(&stalest);
                }
            }
            peers.entry(peer).or_insert_with(|| Bucket::new(rate, MIN_BURST, now))
        });
        let mut buckets: Vec<&mut Bucket> = node.iter_mut().chain(peer_bucket).collect();
        for bucket in buckets.iter_mut() {
            bucket.refill(now);
        }
        if priority == Priority::Prefetch {
            // A reply larger than a bucket's burst waits for a full bucket.
            let wait = buckets
                .iter()
                .map(|b| b.shortfall((bytes as f64).min(b.burst)))
                .max()
                .unwrap_or(Duration::ZERO);
            if !wait.is_zero() {
                return Pace::RetryAfter(wait);
            }
        }
        Pace::SendAfter(buckets.iter_mut().map(|b| b.take(bytes)).max().unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7420))
    }

    impl Throttle {
        /// A demand reply's wait.
        fn delay(&self, peer: SocketAddr, bytes: u64, now: Instant) -> Duration {
            match self.pace(peer, bytes, Priority::Demand, now) {
                Pace::SendAfter(wait) => wait,
                Pace::RetryAfter(_) => unreachable!("demand always takes"),
            }
        }
    }

    /// A prefetch reply sent as soon as the throttle lets it, on a
    /// simulated clock: returns when it is sent.
    fn send_prefetch(t: &Throttle, peer: SocketAddr, bytes: u64, mut now: Instant) -> Instant {
        for _ in 0..1000 {
            match t.pace(peer, bytes, Priority::Prefetch, now) {
                Pace::SendAfter(wait) => return now + wait,
                Pace::RetryAfter(wait) => now += wait,
            }
        }
        panic!("a prefetch reply of {bytes} bytes is never sent");
    }

    #[test]
    fn a_prefetch_reply_larger_than_the_burst_goes_once_the_bucket_is_full() {
        let t0 = Instant::now();
        let t = Throttle::new(Caps { node: Some(1 << 20), per_peer: None });
        // Burst 4 MiB at 1 MiB/s: a 6 MiB reply takes the full bucket and
        // pays its last 2 MiB by waiting (2 s).
        let first = send_prefetch(&t, addr(1), 6 << 20, t0).duration_since(t0);
        assert!(first.abs_diff(Duration::from_secs(2)) < Duration::from_millis(1), "{first:?}");
        // The next waits for a full bucket again (2 MiB of debt + 4 MiB: 6 s),
        // then pays its own last 2 MiB.
        let second = send_prefetch(&t, addr(1), 6 << 20, t0).duration_since(t0);
        assert!(second.abs_diff(Duration::from_secs(8)) < Duration::from_millis(1), "{second:?}");
    }

    #[test]
    fn a_prefetch_flood_never_delays_a_demand_read_beyond_its_own_bytes() {
        let t0 = Instant::now();
        let rate = 8u64 << 20;
        for caps in [Caps { node: Some(rate), per_peer: None }, Caps { node: None, per_peer: Some(rate) }] {
            let t = Throttle::new(caps);
            // 1,000 prefetch replies of 1 MiB ask at once: the burst goes,
            // the rest wait without taking anything.
            let sent: Vec<bool> = (0..1000)
                .map(|_| matches!(t.pace(addr(1), 1 << 20, Priority::Prefetch, t0), Pace::SendAfter(_)))
                .collect();
            assert_eq!(sent.iter().filter(|s| **s).count(), 8, "one second's burst");
            // A demand read of 1 MiB now waits for its own bytes only
            // (1/8 s at 8 MiB/s), not for the 992 MiB queued before it.
            let wait = t.delay(addr(1), 1 << 20, t0);
            assert!(wait <= Duration::from_millis(125), "{caps:?}: {wait:?}");
            // A second demand read waits for both (each demand byte counts).
            let wait = t.delay(addr(1), 1 << 20, t0);
            assert!(wait <= Duration::from_millis(250), "{caps:?}: {wait:?}");
            // And the prefetch goes on at the cap once demand has had its share.
            let at = send_prefetch(&t, addr(1), 1 << 20, t0).duration_since(t0);
            assert!(at.abs_diff(Duration::from_millis(375)) < Duration::from_millis(1), "{at:?}");
        }
    }

    #[test]
    fn prefetch_alone_is_paced_at_the_cap() {
        let t0 = Instant::now();
        let t = Throttle::new(Caps { node: Some(10 << 20), per_peer: Some(20 << 20) });
        let mut now = t0;
        for _ in 0..100 {
            now = send_prefetch(&t, addr(2), 1 << 20, now);
        }
        // 100 MiB at 10 MiB/s after a 10 MiB burst: 9 s.
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((8.9..9.1).contains(&secs), "{secs}");
    }

    #[test]
    fn uncapped_never_waits() {
        let t = Throttle::new(Caps::default());
        assert_eq!(t.delay(addr(1), 1 << 30, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_node_cap_paces_all_peers_together() {
        let t0 = Instant::now();
        let t = Throttle::new(Caps { node: Some(8 << 20), per_peer: None });
        // The first second's burst goes at once...
        assert_eq!(t.delay(addr(1), 4 << 20, t0), Duration::ZERO);
        assert_eq!(t.delay(addr(2), 4 << 20, t0), Duration::ZERO);
        // ...then 8 MiB more, from either peer, costs a second.
        assert_eq!(t.delay(addr(1), 4 << 20, t0), Duration::from_millis(500));
        assert_eq!(t.delay(addr(2), 4 << 20, t0), Duration::from_secs(1));
        // Time refills the bucket.
        assert_eq!(t.delay(addr(3), 1, t0 + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn a_peer_cap_paces_each_peer_alone() {
        let t0 = Instant::now();
        let t = Throttle::new(Caps { node: None, per_peer: Some(4 << 20) });
        assert_eq!(t.delay(addr(1), 4 << 20, t0), Duration::ZERO);
        assert_eq!(t.delay(addr(1), 4 << 20, t0), Duration::from_secs(1));
        assert_eq!(t.delay(addr(2), 4 << 20, t0), Duration::ZERO, "another peer has its own bucket");
    }

    #[test]
    fn sustained_rate_matches_the_cap() {
        let t0 = Instant::now();
        let rate = 10u64 << 20;
        let t = Throttle::new(Caps { node: Some(rate), per_peer: None });
        // A sender that waits as told sends 100 MiB in about 10 s minus the burst.
        let mut now = t0;
        for _ in 0..100 {
            now += t.delay(addr(1), 1 << 20, now);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((8.9..9.1).contains(&secs), "{secs}");
    }
}
