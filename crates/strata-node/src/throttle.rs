//! Bandwidth caps on what a node serves: a token bucket for the node as a
//! whole and one per peer. Clock-driven and pure; the caller waits the
//! delay it returns, so the caps are tested without sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

    /// Takes `bytes`; returns how long to wait before sending them.
    fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
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

    /// How long to hold a reply of `bytes` to `peer` sent at `now`: the
    /// longer of the node's and the peer's waits.
    pub fn delay(&self, peer: SocketAddr, bytes: u64, now: Instant) -> Duration {
        let node = self.node.lock().as_mut().map_or(Duration::ZERO, |b| b.take(bytes, now));
        let peer_wait = match self.caps.per_peer.filter(|r| *r > 0) {
            None => Duration::ZERO,
            Some(rate) => {
                let mut peers = self.peers.lock();
                if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
                    if let Some(stalest) = peers.iter().min_by_key(|(_, b)| b.at).map(|(a, _)| *a) {
                        peers.remove(&stalest);
                    }
                }
                peers.entry(peer).or_insert_with(|| Bucket::new(rate, MIN_BURST, now)).take(bytes, now)
            }
        };
        node.max(peer_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7420))
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
