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

/// How many recent invalidations are remembered: enough for the responses in flight.
const REMEMBERED: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// The invalidations of one middleware.
#[derive(Debug)]
pub(super) struct Invalidations {
    epoch: AtomicU64,
    recent: Mutex<LruCache<String, u64>>,
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations {
            epoch: AtomicU64::new(0),
            recent: Mutex::new(LruCache::new(REMEMBERED)),
        }
    }
}

impl Invalidations {
    /// The number of invalidations so far.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn record(&self, key: &str) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.recent.lock().put(key.to_owned(), epoch);
    }

    /// Whether `key` was invalidated after `epoch`.
    pub(super) fn since(&self, key: &str, epoch: u64) -> bool {
        self.recent.lock().peek(key).is_some_and(|at| *at > epoch)
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
