//! Behaviours pinned after a review of the middleware; eight of them failed before the
//! fixes that came with them (the others pin what the review found untested).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cachecontrol::policy::CachePolicy;
use cachecontrol::store::{Body, Entry, EntryStream, Meta};
use cachecontrol::{Cache, CacheControl, CacheMode, CacheStatus, MemoryCache, StoreError};
use common::Fixture;
use testbed::origin::{Origin, Reply};

/// Polls until a GET of `path` is a hit (the store commits in the background).
async fn eventually_hit(f: &Fixture, path: &str) -> bool {
    for _ in 0..100 {
        if f.get(path).await.cache == Some(CacheStatus::Hit) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_body_read_exactly_to_its_content_length_is_stored() {
    let f = Fixture::new().await;
    f.origin.always(
        "/exact",
        Reply::ok(vec![7u8; 30_000]).header("cache-control", "max-age=600"),
    );
    let mut response = f.client.get(f.url("/exact")).send().await.unwrap();
    let length = response.content_length().unwrap();
    let mut read = 0;
    // Like hyper forwarding a body: stop once Content-Length bytes are in.
    while read < length {
        read += response.chunk().await.unwrap().unwrap().len() as u64;
    }
    drop(response);
    assert!(eventually_hit(&f, "/exact").await);
    assert_eq!(f.origin.hits("/exact"), 1);
}

#[tokio::test]
async fn an_empty_body_never_polled_is_stored() {
    let f = Fixture::new().await;
    f.origin.always(
        "/moved",
        Reply::status(301).header("location", "/elsewhere"),
    );
    drop(f.client.get(f.url("/moved")).send().await.unwrap());
    assert!(eventually_hit(&f, "/moved").await);
}

#[tokio::test]
async fn body_is_shared_not_copied_between_memory_hits() {
    // A property of the memory store, whatever store the other tests run on.
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/shared",
        Reply::ok(vec![1u8; 4096]).header("cache-control", "max-age=600"),
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::new(MemoryCache::new(1 << 20)))
        .build();
    let get = || async {
        client
            .get(origin.url("/shared"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    get().await;
    let (one, two) = (get().await, get().await);
    assert_eq!(
        one.as_ptr(),
        two.as_ptr(),
        "both hits hand out the stored bytes"
    );
}

#[tokio::test]
async fn stale_if_error_is_not_used_when_revalidation_was_asked_for() {
    for (cache_control, request_cc, mode) in [
        (
            "max-age=600, no-cache, stale-if-error=600",
            None,
            CacheMode::Default,
        ),
        (
            "max-age=600, stale-if-error=600",
            Some("no-cache"),
            CacheMode::Default,
        ),
        (
            "max-age=600, stale-if-error=600",
            Some("max-age=0"),
            CacheMode::Default,
        ),
        ("max-age=600, stale-if-error=600", None, CacheMode::NoCache),
    ] {
        let f = Fixture::new().await;
        f.origin.sequence(
            "/r",
            vec![
                Reply::ok("old")
                    .header("cache-control", cache_control)
                    .header("etag", "\"1\""),
                Reply::status(503).body("down"),
            ],
        );
        f.get("/r").await;
        let mut request = f.client.get(f.url("/r")).with_extension(mode);
        if let Some(cc) = request_cc {
            request = request.header("cache-control", cc);
        }
        let got = f.send(request).await;
        assert_eq!(
            (got.status, got.text()),
            (503, "down"),
            "{cache_control} / {request_cc:?} / {mode:?}"
        );
    }
}

#[tokio::test]
async fn a_head_response_without_validators_does_not_refresh_a_get_that_has_them() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/h",
        vec![
            Reply::ok("v1")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=1"),
            Reply::status(200).header("cache-control", "max-age=3600"),
            Reply::ok("v2")
                .header("etag", "\"v2\"")
                .header("cache-control", "max-age=3600"),
        ],
    );
    f.get("/h").await;
    f.advance(10);
    f.send(f.client.head(f.url("/h"))).await;
    let got = f.get("/h").await;
    assert_eq!(
        got.text(),
        "v2",
        "the stored v1 was not made fresh by a HEAD that did not name it"
    );
}

/// A store whose writes never finish and whose reads hang: the worst a backend can do.
#[derive(Debug, Default)]
struct Stalled;

#[async_trait]
impl Cache for Stalled {
    async fn get(&self, _key: &str) -> Result<Option<Entry>, StoreError> {
        std::future::pending().await
    }
    async fn put(&self, _key: &str, _meta: Meta, _body: Body) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn update(&self, _key: &str, _policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        std::future::pending().await
    }
    async fn delete(&self, _key: &str) -> Result<(), StoreError> {
        std::future::pending().await
    }
    fn entries(&self) -> EntryStream<'_> {
        Box::pin(futures_util::stream::pending())
    }
    async fn delete_prefix(&self, _prefix: &str) -> Result<u64, StoreError> {
        std::future::pending().await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stalled_store_delays_a_request_by_the_store_timeout_at_most() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok(vec![3u8; 200_000]).header("cache-control", "max-age=600"),
    );
    let cache = CacheControl::builder(Stalled)
        .store_timeout(Duration::from_millis(200))
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build();
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(20), async {
        client
            .get(origin.url("/a"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    })
    .await
    .expect("the request finishes although the store never answers");
    assert_eq!(body.len(), 200_000);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn followers_of_a_varying_response_do_not_wait_for_its_body() {
    let f = Fixture::new().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    f.origin.route("/v", move |req| {
        let language = req.header("accept-language").unwrap_or("none").to_owned();
        let reply = Reply::ok(format!("in {language} ").repeat(1000))
            .header("cache-control", "max-age=600")
            .header("vary", "accept-language");
        if language == "en" {
            reply.chunked(4).gate(Arc::clone(&g))
        } else {
            reply
        }
    });
    let mut english = f
        .client
        .get(f.url("/v"))
        .header("accept-language", "en")
        .send()
        .await
        .unwrap();
    english.chunk().await.unwrap();
    // The English body is held back; a French request must not wait for it.
    let french = tokio::time::timeout(
        Duration::from_secs(2),
        f.get_with("/v", &[("accept-language", "fr")]),
    )
    .await
    .expect("the French request did not wait for the English body");
    assert!(french.text().starts_with("in fr"));
    gate.add_permits(10);
    while english.chunk().await.unwrap().is_some() {}
}

#[tokio::test]
async fn a_leader_whose_caller_does_not_read_holds_followers_only_briefly() {
    let f = Fixture::new().await;
    f.origin.always(
        "/u",
        Reply::ok(vec![5u8; 100_000])
            .chunked(50)
            .header("cache-control", "max-age=600"),
    );
    let unread = f.client.get(f.url("/u")).send().await.unwrap();
    // The same task asks again while holding the first response unread.
    let second = tokio::time::timeout(Duration::from_secs(15), f.get("/u"))
        .await
        .expect("the second request went ahead instead of waiting out the 30 s");
    assert_eq!(second.body.len(), 100_000);
    drop(unread);
}

#[tokio::test]
async fn a_newer_response_that_may_not_be_stored_removes_the_older_one() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/n",
        vec![
            Reply::ok("v1").header("cache-control", "max-age=600"),
            Reply::ok("v2").header("cache-control", "no-store"),
            Reply::ok("v3").header("cache-control", "max-age=600"),
        ],
    );
    f.get("/n").await;
    let reloaded = f
        .send(f.client.get(f.url("/n")).with_extension(CacheMode::Reload))
        .await;
    assert_eq!(reloaded.text(), "v2");
    let after = f.get("/n").await;
    assert_eq!(
        (after.cache, after.text()),
        (Some(CacheStatus::Miss), "v3"),
        "v1 must not come back"
    );
}

#[tokio::test]
async fn a_newer_response_too_large_for_memory_removes_the_older_one() {
    let origin = Origin::start().await.unwrap();
    origin.sequence(
        "/big",
        vec![
            Reply::ok("small").header("cache-control", "max-age=600"),
            Reply::ok(vec![9u8; 50_000]).header("cache-control", "max-age=600"),
        ],
    );
    let store = Arc::new(MemoryCache::new(20_000));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::new(Arc::clone(&store)))
        .build();
    client
        .get(origin.url("/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let reloaded = client
        .get(origin.url("/big"))
        .with_extension(CacheMode::Reload)
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.bytes().await.unwrap().len(), 50_000);
    assert!(store.is_empty(), "the small old body is gone too");
}

#[tokio::test]
async fn a_cacheable_post_still_invalidates_the_urls_get() {
    let f = Fixture::with(|b| b.cacheable_methods([http::Method::GET, http::Method::POST])).await;
    f.origin.route("/doc", |req| {
        if req.method == http::Method::POST {
            Reply::ok("posted")
        } else {
            Reply::ok(format!("get {}", req.index)).header("cache-control", "max-age=600")
        }
    });
    f.get("/doc").await;
    f.send(f.client.post(f.url("/doc")).body("x")).await;
    let after = f.get("/doc").await;
    assert_eq!(after.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn a_post_with_a_streamed_body_still_invalidates() {
    let f = Fixture::new().await;
    f.origin.route("/doc", |req| {
        if req.method == http::Method::POST {
            Reply::ok("posted")
        } else {
            Reply::ok("got").header("cache-control", "max-age=600")
        }
    });
    f.get("/doc").await;
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("a"), Ok("b")];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    f.send(f.client.post(f.url("/doc")).body(body)).await;
    assert_eq!(f.get("/doc").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn an_invalidation_during_a_recording_wins() {
    let f = Fixture::new().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    f.origin
        .route("/race", move |req| match (req.method.clone(), req.index) {
            (http::Method::DELETE, _) => Reply::status(204),
            (_, 0) => Reply::ok(vec![1u8; 40_000])
                .chunked(4)
                .gate(Arc::clone(&g))
                .header("cache-control", "max-age=600"),
            _ => Reply::ok("after").header("cache-control", "max-age=600"),
        });
    let mut old = f.client.get(f.url("/race")).send().await.unwrap();
    old.chunk().await.unwrap();
    f.send(f.client.delete(f.url("/race"))).await;
    gate.add_permits(10);
    while old.chunk().await.unwrap().is_some() {}
    let after = f.get("/race").await;
    assert_eq!(
        after.text(),
        "after",
        "the body recorded before the DELETE was not kept"
    );
}

#[tokio::test]
async fn partitions_keep_clients_with_invisible_credentials_apart() {
    let origin = Origin::start().await.unwrap();
    origin.route("/me", |req| {
        Reply::ok(format!(
            "hello {}",
            req.header("authorization").unwrap_or("nobody")
        ))
        .header("cache-control", "max-age=600")
    });
    let store = Arc::new(MemoryCache::new(1 << 20));
    let client_for = |user: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {user}").parse().unwrap());
        let inner = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        let cache = CacheControl::builder(Arc::clone(&store))
            .partition(user)
            .build();
        reqwest_middleware::ClientBuilder::new(inner)
            .with(cache)
            .build()
    };
    let alice = client_for("alice");
    let bob = client_for("bob");
    alice
        .get(origin.url("/me"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let for_bob = bob
        .get(origin.url("/me"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(for_bob, "hello Bearer bob");
}
