//! Peers that failed, lied or went silent, asked after the others for a
//! while. Time is passed in, so the rule is tested without waiting.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a peer that failed is asked after the others.
pub const PENALTY: Duration = Duration::from_secs(30);

/// Penalised peer addresses and since when.
pub struct Penalties {
    since: Mutex<HashMap<SocketAddr, Instant>>,
    period: Duration,
}

impl Default for Penalties {
    fn default() -> Self {
        Self::new(PENALTY)
    }
}

impl Penalties {
    /// Penalties that last `period` from the latest failure.
    pub fn new(period: Duration) -> Self {
        Self { since: Mutex::default(), period }
    }

    /// `addr` failed at `now`: asked last until `now + period` (a later
    /// failure starts the period again).
    pub fn penalise(&self, addr: SocketAddr, now: Instant) {
        self.since.lock().insert(addr, now);
    }

    /// The peers penalised at `now`; expired penalties are forgotten.
    pub fn penalised(&self, now: Instant) -> BTreeSet<SocketAddr> {
        let mut since = self.since.lock();
        since.retain(|_, at| now.saturating_duration_since(*at) < self.period);
        since.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_penalty_lasts_its_period_from_the_latest_failure() {
        let penalties = Penalties::new(Duration::from_secs(30));
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:7420".parse().unwrap(), "10.0.0.2:7420".parse().unwrap());
        let t0 = Instant::now();
        penalties.penalise(a, t0);
        penalties.penalise(b, t0 + Duration::from_secs(10));
        assert_eq!(penalties.penalised(t0 + Duration::from_secs(29)), BTreeSet::from([a, b]));
        assert_eq!(penalties.penalised(t0 + Duration::from_secs(30)), BTreeSet::from([b]), "a expired");
        // b fails again before its penalty ends: it starts over.
        penalties.penalise(b, t0 + Duration::from_secs(35));
        assert_eq!(penalties.penalised(t0 + Duration::from_secs(60)), BTreeSet::from([b]));
        assert!(penalties.penalised(t0 + Duration::from_secs(65)).is_empty());
    }
}
