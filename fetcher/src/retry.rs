//! [`Retry`]: how often and how patiently a failed request is tried again.

use std::hash::BuildHasher;
use std::time::Duration;

/// Retries of requests that failed in a way that may pass: a connection refused or
/// reset, a timeout, a body cut short, a `5xx` answer. A `4xx` answer is final at
/// once, as are too many redirects and URLs the client refuses. Retries never take
/// the answer from the cache, which may hold the failure.
///
/// The delay before retry `n` (from 1) is drawn at random between half and all of
/// `base * 2^(n-1)`, capped at `max`: exponential backoff with jitter, so that many
/// nodes failing together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How many requests in all, the first included (at least 1).
    pub attempts: u32,
    /// The delay before the first retry, before jitter.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Retry {
    /// 4 attempts, waiting about 0.25 s, 0.5 s and 1 s between them.
    fn default() -> Retry {
        Retry {
            attempts: 4,
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// No retries: one attempt.
    pub fn none() -> Retry {
        Retry {
            attempts: 1,
            ..Retry::default()
        }
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1 << exponent).min(self.max);
        // A random fraction in [0.5, 1], from the standard library's random keys.
        let random = std::collections::hash_map::RandomState::new().hash_one(retry);
        let fraction = 0.5 + (random % 1_000_001) as f64 / 2_000_000.0;
        full.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_with_jitter_and_a_cap() {
        let retry = Retry {
            attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for (n, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..20 {
                let delay = retry.delay(n);
                assert!(delay >= full / 2 && delay <= full, "retry {n}: {delay:?}");
            }
        }
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| retry.delay(3)).collect();
        assert!(delays.len() > 1, "the delays are jittered");
    }
}
