//! The main paths: a fresh hit, a revalidation, a miss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::Reply;

#[tokio::test]
async fn fresh_response_is_served_without_the_network() {
    let f = Fixture::new().await;
    f.origin.always(
        "/a",
        Reply::ok("hello").header("cache-control", "max-age=60"),
    );
    let first = f.get("/a").await;
    assert_eq!(first.cache, Some(CacheStatus::Miss));
    assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
    f.advance(10);
    let second = f.get("/a").await;
    assert_eq!(second.cache, Some(CacheStatus::Hit));
    assert_eq!(second.text(), "hello");
    assert_eq!(second.header("age").as_deref(), Some("10"));
    assert_eq!(f.origin.hits("/a"), 1);
}

#[tokio::test]
async fn stale_entry_with_etag_sends_if_none_match_and_serves_the_stored_body_on_304() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/a",
        vec![
            Reply::ok("body")
                .header("cache-control", "max-age=1")
                .header("etag", "\"v1\"")
                .header("x-version", "1"),
            Reply::not_modified()
                .header("etag", "\"v1\"")
                .header("x-version", "2")
                .header("cache-control", "max-age=100"),
        ],
    );
    f.get("/a").await;
    f.advance(5);
    let second = f.get("/a").await;
    assert_eq!(second.cache, Some(CacheStatus::Revalidated));
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "body");
    assert_eq!(second.header("x-version").as_deref(), Some("2"));
    let requests = f.origin.requests("/a");
    assert_eq!(requests[1].header("if-none-match"), Some("\"v1\""));
    // The 304's max-age=100 freshened the entry.
    let third = f.get("/a").await;
    assert_eq!(third.cache, Some(CacheStatus::Hit));
    assert_eq!(f.origin.hits("/a"), 2);
    assert_eq!(f.origin.body_bytes_sent(), 4);
}
