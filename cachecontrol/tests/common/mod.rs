//! What the behaviour tests share: an origin, a client with the cache, a clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cachecontrol::clock::ManualClock;
use cachecontrol::{Cache, CacheControl, CacheControlBuilder, CacheStatus, MemoryCache};
use futures_util::TryStreamExt;
use http::HeaderMap;
use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};
use testbed::origin::Origin;

pub mod gated;

/// A test's world: a scripted origin, and a client whose cache reads a manual clock.
pub struct Fixture {
    pub origin: Origin,
    pub client: ClientWithMiddleware,
    pub clock: ManualClock,
    pub store: Arc<dyn Cache>,
    pub cache: CacheControl,
    /// What the store needs to stay alive (a directory, a server).
    _store_guard: Box<dyn std::any::Any + Send>,
}

/// The store the behaviour tests run on, chosen by `CACHECONTROL_TEST_STORE`
/// (`memory`, the default; the persistent stores add their names), with what keeps it
/// alive.
pub fn test_store() -> (Arc<dyn Cache>, Box<dyn std::any::Any + Send>) {
    let kind = std::env::var("CACHECONTROL_TEST_STORE").unwrap_or_else(|_| "memory".to_owned());
    match kind.as_str() {
        "memory" => (Arc::new(MemoryCache::new(64 << 20)), Box::new(())),
        "file" => {
            let dir = tempfile::tempdir().unwrap();
            let store = cachecontrol::FileCache::new(dir.path()).unwrap();
            (Arc::new(store), Box::new(dir))
        }
        "redis" => {
            // A server of its own, kept alive by the guard; the store connects on first
            // use, inside the test's runtime.
            let server = testbed::redis::RedisServer::start().unwrap();
            let store = cachecontrol::RedisCache::builder(server.url())
                .build_lazy()
                .unwrap();
            (Arc::new(store), Box::new(server))
        }
        other => panic!("CACHECONTROL_TEST_STORE={other}: no such store"),
    }
}

/// A response, read to its end.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub cache: Option<CacheStatus>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// All lines of a header, joined with ", ".
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl Fixture {
    /// A private cache with the defaults.
    pub async fn new() -> Fixture {
        Fixture::with(|b| b).await
    }

    /// A shared cache.
    pub async fn shared() -> Fixture {
        Fixture::with(|b| b.shared(true)).await
    }

    /// A cache configured by `configure`.
    pub async fn with(
        configure: impl FnOnce(CacheControlBuilder) -> CacheControlBuilder,
    ) -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("cachecontrol=debug")
            .try_init();
        let origin = Origin::start().await.unwrap();
        let clock = ManualClock::starting_now();
        let (store, store_guard) = test_store();
        let cache =
            configure(CacheControl::builder(Arc::clone(&store)).clock(clock.clone())).build();
        let client = reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        )
        .with(cache.clone())
        .build();
        Fixture {
            origin,
            client,
            clock,
            store,
            cache,
            _store_guard: store_guard,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.origin.url(path)
    }

    /// GET `path`, read the whole body.
    pub async fn get(&self, path: &str) -> Got {
        self.send(self.client.get(self.url(path))).await
    }

    /// GET `path` with these request headers, read the whole body.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// Sends a request, reads the whole body.
    pub async fn send(&self, request: RequestBuilder) -> Got {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let cache = response.extensions().get::<CacheStatus>().copied();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        Got {
            status,
            cache,
            headers,
            body,
        }
    }

    /// How many responses the store holds.
    pub async fn stored(&self) -> usize {
        let entries: Vec<_> = self.store.entries().try_collect().await.unwrap();
        entries.len()
    }

    /// Moves the cache's clock forward.
    pub fn advance(&self, seconds: u64) {
        self.clock.advance(Duration::from_secs(seconds));
    }
}
