//! Invalidation by unsafe methods (RFC 9111 §4.4), and its race with responses that
//! are still being recorded.
//!
//! A GET whose body is still streaming into the store when a POST to the same URL
//! succeeds would otherwise commit after the invalidation and bring the old
//! representation back. Each invalidation is numbered; a request remembers the number
//! when it was sent; after committing, an entry whose URL was invalidated since is
//! deleted again.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header;
use lru::LruCache;
use parking_lot::Mutex;
use reqwest::Response;
use url::Url;

use super::{Shared, same_origin};

/// How many recent invalidations are remembered: enough for the responses in flight
/// (an invalidation forgotten sooner counts as one of every URL).
const REMEMBERED: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// The invalidations of one middleware.
#[derive(Debug)]
pub(super) struct Invalidations {
    epoch: AtomicU64,
    recent: Mutex<Recent>,
}

/// The last invalidation of each recently invalidated key, and the latest one that
/// is no longer known by its key.
#[derive(Debug)]
struct Recent {
    keys: LruCache<String, u64>,
    forgotten: u64,
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations {
            epoch: AtomicU64::new(0),
            recent: Mutex::new(Recent {
                keys: LruCache::new(REMEMBERED),
                forgotten: 0,
            }),
        }
    }
}

impl Invalidations {
    /// The number of invalidations so far.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn record(&self, key: &str) {
        let mut recent = self.recent.lock();
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((evicted, at)) = recent.keys.push(key.to_owned(), epoch)
            && evicted != key
        {
            recent.forgotten = recent.forgotten.max(at);
        }
    }

    /// Whether `key` was invalidated after `epoch` (or may have been: past the
    /// invalidations remembered, any key may have been).
    pub(super) fn since(&self, key: &str, epoch: u64) -> bool {
        let recent = self.recent.lock();
        recent.forgotten > epoch || recent.keys.peek(key).is_some_and(|at| *at > epoch)
    }
}

impl Shared {
    /// After an unsafe request: a non-error response invalidates its URL, and its
    /// Location and Content-Location when they are on the same origin.
    pub(super) async fn invalidate_after(&self, url: &Url, response: &Response) {
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        self.invalidate(url).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let target = response
                .headers()
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| url.join(v).ok());
            if let Some(target) = target
                && same_origin(&target, url)
            {
                self.invalidate(&target).await;
            }
        }
    }

    pub(super) async fn invalidate(&self, url: &Url) {
        let key = self.keys.of_url(url);
        self.invalidations.record(&key);
        self.store_delete(&key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_is_seen_by_what_was_sent_before_it_even_once_forgotten() {
        let invalidations = Invalidations::default();
        let before = invalidations.epoch();
        invalidations.record("a");
        assert!(invalidations.since("a", before));
        assert!(!invalidations.since("b", before));
        assert!(!invalidations.since("a", invalidations.epoch()));
        // So many others that "a" is no longer remembered by its key.
        for n in 0..REMEMBERED.get() {
            invalidations.record(&format!("other {n}"));
        }
        assert!(invalidations.since("a", before), "forgotten, still seen");
        let now = invalidations.epoch();
        assert!(!invalidations.since("a", now), "nothing since now");
    }
}
