//! Behaviours of the original CacheControl (Python) test suite, kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cachecontrol::CacheStatus;
use cachecontrol::heuristics::{ExpiresAfter, LastModified, OneDay};
use common::Fixture;
use testbed::origin::{Reply, http_date};

fn etag_origin(f: &Fixture) {
    f.origin.route("/etag", |req| {
        if req.header("if-none-match") == Some("\"jfd9094r808\"") {
            Reply::not_modified().header("etag", "\"jfd9094r808\"")
        } else {
            Reply::ok("etag body").header("etag", "\"jfd9094r808\"")
        }
    });
}

#[tokio::test]
async fn etags_are_kept_and_used_to_revalidate() {
    let f = Fixture::new().await;
    etag_origin(&f);
    f.get("/etag").await;
    let second = f.get("/etag").await;
    assert_eq!(
        (second.status, second.cache, second.text()),
        (200, Some(CacheStatus::Revalidated), "etag body")
    );
    assert_eq!(
        f.origin.requests("/etag")[1].header("if-none-match"),
        Some("\"jfd9094r808\"")
    );
}

#[tokio::test]
async fn with_cache_etags_off_a_response_that_is_not_fresh_is_not_kept() {
    let f = Fixture::with(|b| b.cache_etags(false)).await;
    etag_origin(&f);
    f.get("/etag").await;
    let second = f.get("/etag").await;
    assert_eq!(second.cache, Some(CacheStatus::Miss));
    assert_eq!(f.origin.requests("/etag")[1].header("if-none-match"), None);
}

#[tokio::test]
async fn client_max_age_0_revalidates_and_3600_uses_the_cache() {
    let f = Fixture::new().await;
    f.origin.route("/m", |req| {
        if req.header("if-none-match") == Some("\"x\"") {
            Reply::not_modified().header("etag", "\"x\"")
        } else {
            Reply::ok("m")
                .header("etag", "\"x\"")
                .header("cache-control", "max-age=600")
        }
    });
    f.get("/m").await;
    let zero = f.get_with("/m", &[("cache-control", "max-age=0")]).await;
    assert_eq!(zero.cache, Some(CacheStatus::Revalidated));
    let hour = f.get_with("/m", &[("cache-control", "max-age=3600")]).await;
    assert_eq!(hour.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn permanent_redirects_and_multiple_choices_are_cached() {
    let f = Fixture::new().await;
    f.origin
        .always("/301", Reply::status(301).header("location", "/elsewhere"));
    f.origin
        .always("/308", Reply::status(308).header("location", "/elsewhere"));
    f.origin.always(
        "/300",
        Reply::status(300)
            .header("cache-control", "max-age=600")
            .body("choose"),
    );
    for path in ["/301", "/308", "/300"] {
        f.get(path).await;
        let again = f.get(path).await;
        assert_eq!(again.cache, Some(CacheStatus::Hit), "{path}");
    }
}

#[tokio::test]
async fn a_temporary_redirect_without_lifetime_is_not_cached() {
    let f = Fixture::new().await;
    f.origin
        .always("/302", Reply::status(302).header("location", "/elsewhere"));
    f.get("/302").await;
    assert_eq!(f.get("/302").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn a_stream_read_partially_is_not_cached() {
    let f = Fixture::new().await;
    f.origin.always(
        "/stream",
        Reply::ok(vec![b'x'; 64 * 1024])
            .chunked(16)
            .header("cache-control", "max-age=600"),
    );
    let mut response = f.client.get(f.url("/stream")).send().await.unwrap();
    response.chunk().await.unwrap();
    drop(response);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.get("/stream").await.cache, Some(CacheStatus::Miss));
    assert_eq!(f.get("/stream").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn one_day_heuristic() {
    let f = Fixture::with(|b| b.heuristic(OneDay)).await;
    f.origin.always("/d", Reply::ok("d"));
    f.get("/d").await;
    f.advance(23 * 3600);
    assert_eq!(f.get("/d").await.cache, Some(CacheStatus::Hit));
    f.advance(2 * 3600);
    assert_eq!(f.get("/d").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn expires_after_overrides_the_origin_and_adds_a_warning() {
    let f = Fixture::with(|b| b.heuristic(ExpiresAfter::new(Duration::from_secs(600)))).await;
    f.origin
        .always("/e", Reply::ok("e").header("cache-control", "max-age=0"));
    f.get("/e").await;
    f.advance(300);
    let got = f.get("/e").await;
    assert_eq!(got.cache, Some(CacheStatus::Hit));
    assert!(got.header("warning").unwrap().starts_with("110"));
    f.advance(600);
    assert_eq!(f.get("/e").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn last_modified_heuristic_is_the_default() {
    let f = Fixture::new().await;
    // Modified ten hours ago: fresh for one hour.
    f.origin.always(
        "/lm",
        Reply::ok("lm").header("last-modified", http_date(-36_000)),
    );
    f.get("/lm").await;
    f.advance(1800);
    assert_eq!(f.get("/lm").await.cache, Some(CacheStatus::Hit));
    f.advance(3600);
    assert_ne!(f.get("/lm").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn last_modified_heuristic_can_be_tuned() {
    let f = Fixture::with(|b| b.heuristic(LastModified::new(0.5, Duration::from_secs(7 * 86_400))))
        .await;
    f.origin.always(
        "/lm",
        Reply::ok("lm").header("last-modified", http_date(-36_000)),
    );
    f.get("/lm").await;
    f.advance(4 * 3600);
    assert_eq!(f.get("/lm").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn no_store_in_the_response_is_not_stored() {
    let f = Fixture::new().await;
    f.origin.always(
        "/ns",
        Reply::ok("ns").header("cache-control", "max-age=600, no-store"),
    );
    f.get("/ns").await;
    assert_eq!(f.get("/ns").await.cache, Some(CacheStatus::Miss));
}
