//! Serving stale: stale-while-revalidate and stale-if-error (RFC 5861).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cachecontrol::{CacheMode, CacheStatus};
use common::Fixture;
use testbed::origin::Reply;

/// Waits until the origin has seen `n` requests for `path`.
async fn until_hits(f: &Fixture, path: &str, n: usize) {
    for _ in 0..200 {
        if f.origin.hits(path) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{path} never got {n} requests (got {})",
        f.origin.hits(path)
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_revalidates_in_the_background() {
    let f = Fixture::new().await;
    f.origin.route("/swr", |req| {
        if req.header("if-none-match") == Some("\"a\"") {
            Reply::not_modified()
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=100, stale-while-revalidate=60")
        } else {
            Reply::ok("stored")
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=1, stale-while-revalidate=60")
        }
    });
    f.get("/swr").await;
    f.advance(10);
    let stale = f.get("/swr").await;
    assert_eq!(stale.cache, Some(CacheStatus::Stale));
    assert_eq!(stale.text(), "stored");
    until_hits(&f, "/swr", 2).await;
    assert_eq!(
        f.origin.requests("/swr")[1].header("if-none-match"),
        Some("\"a\"")
    );
    // The 304 freshened the entry in the background. Looked at with only-if-cached,
    // which never revalidates: a plain request that read the entry just before the
    // update landed would start a second revalidation, once the first is over.
    let mut served = None;
    for _ in 0..100 {
        let look = f
            .client
            .get(f.url("/swr"))
            .with_extension(CacheMode::OnlyIfCached);
        served = f.send(look).await.cache;
        if served == Some(CacheStatus::Hit) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(served, Some(CacheStatus::Hit));
    assert_eq!(f.origin.hits("/swr"), 2);
}

#[tokio::test]
async fn one_background_revalidation_per_entry_at_a_time() {
    let f = Fixture::new().await;
    f.origin.route("/swr", |req| {
        if req.index == 0 {
            Reply::ok("stored")
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=1, stale-while-revalidate=60")
        } else {
            Reply::not_modified()
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=100")
                .delay(Duration::from_millis(300))
        }
    });
    f.get("/swr").await;
    f.advance(10);
    let responses = futures_util::future::join_all((0..5).map(|_| f.get("/swr"))).await;
    assert!(
        responses
            .iter()
            .all(|r| r.cache == Some(CacheStatus::Stale))
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(f.origin.hits("/swr"), 2);
}

#[tokio::test]
async fn past_the_stale_while_revalidate_window_the_request_waits_for_the_origin() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/swr",
        vec![
            Reply::ok("old").header("cache-control", "max-age=1, stale-while-revalidate=4"),
            Reply::ok("new").header("cache-control", "max-age=60"),
        ],
    );
    f.get("/swr").await;
    f.advance(10);
    let got = f.get("/swr").await;
    assert_eq!(got.cache, Some(CacheStatus::Miss));
    assert_eq!(got.text(), "new");
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_and_on_network_errors() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/sie",
        vec![
            Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=60"),
            Reply::status(503).body("down"),
            Reply::disconnect(),
        ],
    );
    f.get("/sie").await;
    f.advance(10);
    let on_503 = f.get("/sie").await;
    assert_eq!(
        (on_503.status, on_503.cache, on_503.text()),
        (200, Some(CacheStatus::Stale), "good")
    );
    let on_disconnect = f.get("/sie").await;
    assert_eq!(
        (
            on_disconnect.status,
            on_disconnect.cache,
            on_disconnect.text()
        ),
        (200, Some(CacheStatus::Stale), "good")
    );
}

#[tokio::test]
async fn stale_if_error_window_ends() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/sie",
        vec![
            Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=60"),
            Reply::status(503).body("down"),
        ],
    );
    f.get("/sie").await;
    f.advance(100);
    let got = f.get("/sie").await;
    assert_eq!((got.status, got.text()), (503, "down"));
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale_even_on_errors() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/mr",
        vec![
            Reply::ok("good").header(
                "cache-control",
                "max-age=1, must-revalidate, stale-if-error=60",
            ),
            Reply::disconnect(),
        ],
    );
    f.get("/mr").await;
    f.advance(10);
    let result = f.client.get(f.url("/mr")).send().await;
    assert!(
        result.is_err(),
        "the origin's failure reaches the caller: {result:?}"
    );
}
