//! A store that fails never fails a request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use cachecontrol::policy::CachePolicy;
use cachecontrol::store::{Body, Entry, EntryStream, Meta};
use cachecontrol::{Cache, CacheControl, CacheStatus, MemoryCache, StoreError};
use common::Fixture;
use testbed::origin::{Origin, Reply};

/// A MemoryCache that fails every operation while `broken` is set: a stand-in for
/// a store whose backend is down, to inject the fault at will.
#[derive(Debug)]
struct Flaky {
    inner: MemoryCache,
    broken: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Backend("injected failure".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Cache for Flaky {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put(key, meta, body).await
    }
    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.update(key, policy).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key).await
    }
    fn entries(&self) -> EntryStream<'_> {
        self.inner.entries()
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.delete_prefix(prefix).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.clear().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

#[tokio::test]
async fn a_failing_store_means_the_network_and_the_cache_recovers_with_it() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    let store = Arc::new(Flaky {
        inner: MemoryCache::new(1 << 20),
        broken: AtomicBool::new(true),
    });
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::builder(store.clone()).build())
        .build();
    for _ in 0..2 {
        let response = client.get(origin.url("/a")).send().await.unwrap();
        assert_eq!(
            response.extensions().get::<CacheStatus>(),
            Some(&CacheStatus::Miss)
        );
        assert_eq!(response.text().await.unwrap(), "fine");
    }
    assert_eq!(origin.hits("/a"), 2);
    store.broken.store(false, Ordering::SeqCst);
    client
        .get(origin.url("/a"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let response = client.get(origin.url("/a")).send().await.unwrap();
    assert_eq!(
        response.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    assert_eq!(origin.hits("/a"), 3);
}

#[tokio::test]
async fn after_close_requests_go_straight_to_the_network() {
    let f = Fixture::new().await;
    f.origin.always(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    f.get("/a").await;
    f.cache.close().await.unwrap();
    assert!(matches!(f.store.get("/a").await, Err(StoreError::Closed)));
    let got = f.get("/a").await;
    assert_eq!((got.status, got.text()), (200, "fine"));
    assert_eq!(f.origin.hits("/a"), 2);
}
