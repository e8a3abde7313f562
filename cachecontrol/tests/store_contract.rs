//! What the middleware asks of a store: `get_now` first, `get` when it must wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use async_trait::async_trait;
use cachecontrol::policy::CachePolicy;
use cachecontrol::store::{Body, Entry, EntryStream, Meta};
use cachecontrol::{Cache, CacheControl, CacheStatus, MemoryCache, StoreError};
use testbed::origin::{Origin, Reply};

/// A MemoryCache that counts its lookups, and answers `get_now` only while `ready`.
#[derive(Debug)]
struct Counting {
    inner: MemoryCache,
    ready: bool,
    gets: AtomicUsize,
    gets_now: AtomicUsize,
}

impl Counting {
    fn new(ready: bool) -> Counting {
        Counting {
            inner: MemoryCache::new(1 << 20),
            ready,
            gets: AtomicUsize::new(0),
            gets_now: AtomicUsize::new(0),
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.gets.load(Ordering::SeqCst),
            self.gets_now.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl Cache for Counting {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    fn get_now(&self, key: &str) -> Poll<Result<Option<Entry>, StoreError>> {
        self.gets_now.fetch_add(1, Ordering::SeqCst);
        if self.ready {
            self.inner.get_now(key)
        } else {
            Poll::Pending
        }
    }
    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        self.inner.put(key, meta, body).await
    }
    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        self.inner.update(key, policy).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn entries(&self) -> EntryStream<'_> {
        self.inner.entries()
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

async fn get(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: String,
) -> (Option<CacheStatus>, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.extensions().get::<CacheStatus>().copied();
    (status, response.text().await.unwrap())
}

fn client(store: Arc<Counting>) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::builder(store).build())
        .build()
}

#[tokio::test]
async fn a_fresh_hit_from_a_store_that_answers_at_once_needs_no_get() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    origin.always(
        "/v",
        Reply::ok("varied")
            .header("cache-control", "max-age=60")
            .header("vary", "accept-language"),
    );
    let store = Arc::new(Counting::new(true));
    let client = client(store.clone());
    for (path, body) in [("/a", "fine"), ("/v", "varied")] {
        assert_eq!(
            get(&client, origin.url(path)).await,
            (Some(CacheStatus::Miss), body.to_owned())
        );
        let (gets, _) = store.counts();
        // A variant takes two lookups: the URL's marker, then the variant.
        for _ in 0..3 {
            assert_eq!(
                get(&client, origin.url(path)).await,
                (Some(CacheStatus::Hit), body.to_owned())
            );
        }
        assert_eq!(store.counts().0, gets, "{path}: hits called get");
        assert_eq!(origin.hits(path), 1);
    }
}

#[tokio::test]
async fn a_store_that_must_wait_is_asked_with_get() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    let store = Arc::new(Counting::new(false));
    let client = client(store.clone());
    assert_eq!(
        get(&client, origin.url("/a")).await,
        (Some(CacheStatus::Miss), "fine".to_owned())
    );
    let (gets, gets_now) = store.counts();
    assert_eq!(
        get(&client, origin.url("/a")).await,
        (Some(CacheStatus::Hit), "fine".to_owned())
    );
    let (after, after_now) = store.counts();
    assert!(after_now > gets_now, "get_now was not asked first");
    assert!(
        after > gets,
        "a store that must wait was not asked with get"
    );
    assert_eq!(origin.hits("/a"), 1);
}

#[tokio::test]
async fn a_stale_entry_found_at_once_is_still_revalidated() {
    let origin = Origin::start().await.unwrap();
    origin.sequence(
        "/a",
        vec![
            Reply::ok("old")
                .header("cache-control", "max-age=0")
                .header("etag", "\"1\""),
            Reply::ok("new").header("cache-control", "max-age=60"),
        ],
    );
    let store = Arc::new(Counting::new(true));
    let client = client(store.clone());
    assert_eq!(
        get(&client, origin.url("/a")).await,
        (Some(CacheStatus::Miss), "old".to_owned())
    );
    let (status, body) = get(&client, origin.url("/a")).await;
    assert_ne!(status, Some(CacheStatus::Hit));
    assert_eq!(body, "new");
    assert_eq!(origin.hits("/a"), 2);
}
