//! Heuristic freshness: how long to reuse a response whose origin did not say.
//!
//! RFC 9111 §4.2.2 lets a cache assign a freshness lifetime to a response without an
//! explicit one (no `max-age`, `s-maxage` or `Expires`) when its status code is
//! heuristically cacheable or it is marked `public`. The usual heuristic, and our
//! default, is a fraction of the time since the resource was last modified:
//! [`LastModified`]. The original CacheControl's other heuristics are here too:
//! [`ExpiresAfter`] (reuse everything for a fixed time, even over what the origin said)
//! and [`OneDay`]. Write your own by implementing [`Heuristic`].
//!
//! ```
//! use std::time::Duration;
//! use cachecontrol::{CacheControl, MemoryCache};
//! use cachecontrol::heuristics::ExpiresAfter;
//!
//! // Reuse every cacheable response for ten minutes, whatever its headers say.
//! let cache = CacheControl::builder(MemoryCache::new(64 << 20))
//!     .heuristic(ExpiresAfter::new(Duration::from_secs(600)))
//!     .build();
//! # drop(cache);
//! ```

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

/// Status codes that are cacheable by default (RFC 9110 §15.1): a cache may give them
/// a heuristic freshness lifetime. 206 is left out because this cache does not store
/// partial content.
pub const HEURISTICALLY_CACHEABLE: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// What a heuristic sees of a response.
#[derive(Debug, Clone, Copy)]
pub struct HeuristicInput<'a> {
    /// The response's status.
    pub status: StatusCode,
    /// The response's headers.
    pub headers: &'a HeaderMap,
    /// When the response was generated: its `Date`, or when it was received. Seconds
    /// since the Unix epoch.
    pub date: u64,
    /// Its `Last-Modified`, when it has a valid one. Seconds since the Unix epoch.
    pub last_modified: Option<u64>,
    /// The lifetime the response gives itself (`s-maxage`, `max-age`, `Expires`), if
    /// any, in seconds.
    pub explicit_lifetime: Option<u64>,
    /// The response says `public`.
    pub public: bool,
}

impl HeuristicInput<'_> {
    /// Whether RFC 9111 §4.2.2 allows a heuristic lifetime for this response: no
    /// explicit lifetime, and a status cacheable by default or `public`.
    pub fn allows_heuristic(&self) -> bool {
        self.explicit_lifetime.is_none() && (self.cacheable_by_default() || self.public)
    }

    /// Whether the status code is cacheable by default ([`HEURISTICALLY_CACHEABLE`]).
    pub fn cacheable_by_default(&self) -> bool {
        HEURISTICALLY_CACHEABLE.contains(&self.status.as_u16())
    }
}

/// A lifetime given by a heuristic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeuristicFreshness {
    /// How long the response stays fresh, counted from its `Date`.
    pub lifetime: Duration,
    /// A `Warning` to add to the stored response, as the original CacheControl did.
    pub warning: Option<HeaderValue>,
}

/// Assigns freshness lifetimes to responses.
///
/// [`freshness`](Heuristic::freshness) is called for every storable response; what it
/// returns replaces the response's own lifetime. A heuristic that follows RFC 9111
/// §4.2.2 returns `None` unless [`HeuristicInput::allows_heuristic`]; one that
/// overrides the origin, like [`ExpiresAfter`], need not.
pub trait Heuristic: Send + Sync + fmt::Debug + 'static {
    /// The lifetime to give this response, or `None` to keep its own.
    fn freshness(&self, response: &HeuristicInput<'_>) -> Option<HeuristicFreshness>;
}

/// The RFC's suggestion, and the default: a response stays fresh for a fraction (10%)
/// of the time between its `Last-Modified` and its `Date`, at most a day.
///
/// Permanent redirects (301, 308) without `Last-Modified` get the cap (a day): the
/// original CacheControl served them from the cache without looking at dates at all;
/// the cap lets a mistaken redirect heal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastModified {
    fraction: f64,
    max: Duration,
}

impl LastModified {
    /// `fraction` of the time since the last modification, at most `max`.
    pub fn new(fraction: f64, max: Duration) -> LastModified {
        LastModified {
            fraction: fraction.clamp(0.0, 1.0),
            max,
        }
    }
}

impl Default for LastModified {
    fn default() -> Self {
        LastModified::new(0.1, Duration::from_secs(24 * 3600))
    }
}

impl Heuristic for LastModified {
    fn freshness(&self, response: &HeuristicInput<'_>) -> Option<HeuristicFreshness> {
        if !response.allows_heuristic() {
            return None;
        }
        let lifetime = match response.last_modified {
            Some(modified) => {
                let since = response.date.saturating_sub(modified);
                Duration::from_secs((since as f64 * self.fraction) as u64).min(self.max)
            }
            None if matches!(response.status.as_u16(), 301 | 308) => self.max,
            None => return None,
        };
        Some(HeuristicFreshness {
            lifetime,
            warning: None,
        })
    }
}

/// Reuse every response for a fixed time, whatever it says about its own freshness
/// (the original's `ExpiresAfter`).
///
/// It applies to statuses cacheable by default and to `public` responses; `no-store`
/// and, in a shared cache, `private` are still honoured: those speak of who may see a
/// response, not of how long it stays right. Responses get a `Warning` as in the
/// original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiresAfter {
    lifetime: Duration,
}

impl ExpiresAfter {
    /// Reuse responses for `lifetime`.
    pub fn new(lifetime: Duration) -> ExpiresAfter {
        ExpiresAfter { lifetime }
    }
}

impl Heuristic for ExpiresAfter {
    fn freshness(&self, response: &HeuristicInput<'_>) -> Option<HeuristicFreshness> {
        if !(response.cacheable_by_default() || response.public) {
            return None;
        }
        let warning = format!(
            "110 - \"Automatically cached for {}s. Response might be stale\"",
            self.lifetime.as_secs()
        );
        Some(HeuristicFreshness {
            lifetime: self.lifetime,
            warning: HeaderValue::from_str(&warning).ok(),
        })
    }
}

/// Responses without an explicit lifetime stay fresh for a day (the original's
/// `OneDayCache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OneDay;

impl Heuristic for OneDay {
    fn freshness(&self, response: &HeuristicInput<'_>) -> Option<HeuristicFreshness> {
        response.allows_heuristic().then(|| HeuristicFreshness {
            lifetime: Duration::from_secs(24 * 3600),
            warning: None,
        })
    }
}

/// No heuristic: only responses that state their lifetime are ever fresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHeuristic;

impl Heuristic for NoHeuristic {
    fn freshness(&self, _response: &HeuristicInput<'_>) -> Option<HeuristicFreshness> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        status: u16,
        last_modified: Option<u64>,
        explicit: Option<u64>,
    ) -> HeuristicInput<'static> {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        HeuristicInput {
            status: StatusCode::from_u16(status).unwrap(),
            headers: EMPTY.get_or_init(HeaderMap::new),
            date: 1_000_000,
            last_modified,
            explicit_lifetime: explicit,
            public: false,
        }
    }

    #[test]
    fn last_modified_is_ten_percent_capped_at_a_day() {
        let h = LastModified::default();
        let ten_hours_old = input(200, Some(1_000_000 - 36_000), None);
        assert_eq!(
            h.freshness(&ten_hours_old).unwrap().lifetime,
            Duration::from_secs(3600)
        );
        let a_year_old = input(200, Some(0), None);
        assert_eq!(
            h.freshness(&a_year_old).unwrap().lifetime,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn last_modified_respects_explicit_lifetimes_and_statuses() {
        let h = LastModified::default();
        assert_eq!(h.freshness(&input(200, Some(0), Some(60))), None);
        assert_eq!(h.freshness(&input(500, Some(0), None)), None);
        assert_eq!(h.freshness(&input(200, None, None)), None);
        assert_eq!(
            h.freshness(&input(301, None, None)).unwrap().lifetime,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn expires_after_overrides_and_warns() {
        let h = ExpiresAfter::new(Duration::from_secs(600));
        let f = h.freshness(&input(200, None, Some(5))).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(600));
        assert!(f.warning.unwrap().to_str().unwrap().starts_with("110 -"));
        assert_eq!(h.freshness(&input(503, None, None)), None);
    }

    #[test]
    fn one_day_only_without_explicit_lifetime() {
        assert_eq!(
            OneDay.freshness(&input(200, None, None)).unwrap().lifetime,
            Duration::from_secs(86_400)
        );
        assert_eq!(OneDay.freshness(&input(200, None, Some(0))), None);
    }
}
