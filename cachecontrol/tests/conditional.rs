//! Validation: revalidating stored responses, answering the caller's own conditional
//! requests, HEAD.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::{Recorded, Reply, http_date};

/// An origin that answers 304 when the request's validators match the current ones.
fn validating(
    version: &'static str,
    cache_control: &'static str,
    last_modified: String,
) -> impl Fn(&Recorded) -> Reply {
    move |req| {
        let etag = format!("\"{version}\"");
        let matches = req.header("if-none-match") == Some(etag.as_str())
            || (req.header("if-none-match").is_none()
                && req.header("if-modified-since") == Some(last_modified.as_str()));
        let reply = if matches {
            Reply::not_modified()
        } else {
            Reply::ok(format!("body {version}"))
        };
        reply
            .header("etag", etag)
            .header("last-modified", last_modified.clone())
            .header("cache-control", cache_control)
    }
}

#[tokio::test]
async fn stale_entry_with_only_last_modified_sends_if_modified_since() {
    let f = Fixture::new().await;
    let modified = http_date(-3600);
    let m = modified.clone();
    f.origin.route("/lm", move |req| {
        if req.header("if-modified-since") == Some(m.as_str()) {
            Reply::not_modified()
        } else {
            Reply::ok("lm body")
                .header("last-modified", m.clone())
                .header("cache-control", "max-age=1")
        }
    });
    f.get("/lm").await;
    f.advance(10);
    let got = f.get("/lm").await;
    assert_eq!(
        (got.cache, got.text()),
        (Some(CacheStatus::Revalidated), "lm body")
    );
    assert_eq!(
        f.origin.requests("/lm")[1].header("if-modified-since"),
        Some(modified.as_str())
    );
}

#[tokio::test]
async fn a_changed_resource_replaces_the_entry() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/c",
        vec![
            Reply::ok("one")
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=1"),
            Reply::ok("two")
                .header("etag", "\"2\"")
                .header("cache-control", "max-age=60"),
        ],
    );
    f.get("/c").await;
    f.advance(10);
    let changed = f.get("/c").await;
    assert_eq!(
        (changed.cache, changed.text()),
        (Some(CacheStatus::Miss), "two")
    );
    let after = f.get("/c").await;
    assert_eq!((after.cache, after.text()), (Some(CacheStatus::Hit), "two"));
}

#[tokio::test]
async fn a_304_does_not_change_the_stored_content_length() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/len",
        vec![
            Reply::ok("twelve bytes")
                .header("etag", "\"e\"")
                .header("cache-control", "max-age=1"),
            Reply::not_modified()
                .header("etag", "\"e\"")
                .header("content-length", "3")
                .header("x-new", "yes"),
        ],
    );
    f.get("/len").await;
    f.advance(10);
    let got = f.get("/len").await;
    assert_eq!(got.header("content-length").as_deref(), Some("12"));
    assert_eq!(got.header("x-new").as_deref(), Some("yes"));
    assert_eq!(got.text(), "twelve bytes");
}

#[tokio::test]
async fn a_304_about_another_representation_leads_to_a_full_request() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/m",
        vec![
            Reply::ok("one")
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=1"),
            Reply::not_modified().header("etag", "\"other\""),
            Reply::ok("fresh copy").header("etag", "\"3\""),
        ],
    );
    f.get("/m").await;
    f.advance(10);
    let got = f.get("/m").await;
    assert_eq!((got.status, got.text()), (200, "fresh copy"));
    let third = &f.origin.requests("/m")[2];
    assert_eq!(third.header("if-none-match"), None);
}

#[tokio::test]
async fn the_callers_if_none_match_is_answered_from_a_fresh_entry() {
    let f = Fixture::new().await;
    f.origin
        .route("/e", validating("v1", "max-age=600", http_date(-100)));
    f.get("/e").await;
    let matching = f
        .send(
            f.client
                .get(f.url("/e"))
                .header("if-none-match", "\"v0\", \"v1\""),
        )
        .await;
    assert_eq!(
        (matching.status, matching.cache),
        (304, Some(CacheStatus::Hit))
    );
    assert_eq!(matching.header("etag").as_deref(), Some("\"v1\""));
    assert!(matching.body.is_empty());
    let other = f
        .send(f.client.get(f.url("/e")).header("if-none-match", "\"v0\""))
        .await;
    assert_eq!((other.status, other.text()), (200, "body v1"));
    let weak = f
        .send(
            f.client
                .get(f.url("/e"))
                .header("if-none-match", "W/\"v1\""),
        )
        .await;
    assert_eq!(weak.status, 304, "If-None-Match compares weakly");
    assert_eq!(f.origin.hits("/e"), 1);
}

#[tokio::test]
async fn the_callers_if_modified_since_is_answered_from_a_fresh_entry() {
    let f = Fixture::new().await;
    f.origin
        .route("/e", validating("v1", "max-age=600", http_date(-100)));
    f.get("/e").await;
    let later = f
        .get_with("/e", &[("if-modified-since", &http_date(-10))])
        .await;
    assert_eq!(later.status, 304);
    let earlier = f
        .get_with("/e", &[("if-modified-since", &http_date(-1000))])
        .await;
    assert_eq!(earlier.status, 200);
    assert_eq!(f.origin.hits("/e"), 1);
}

#[tokio::test]
async fn the_callers_validators_are_evaluated_after_a_revalidation() {
    let f = Fixture::new().await;
    f.origin
        .route("/e", validating("v1", "max-age=1", http_date(-100)));
    f.get("/e").await;
    f.advance(10);
    let got = f
        .send(f.client.get(f.url("/e")).header("if-none-match", "\"v1\""))
        .await;
    assert_eq!(
        (got.status, got.cache),
        (304, Some(CacheStatus::Revalidated))
    );
    // The origin was asked with the cache's validator.
    assert_eq!(
        f.origin.requests("/e")[1].header("if-none-match"),
        Some("\"v1\"")
    );
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let f = Fixture::new().await;
    f.origin
        .route("/h", validating("v1", "max-age=600", http_date(-100)));
    f.get("/h").await;
    let head = f.send(f.client.head(f.url("/h"))).await;
    assert_eq!((head.status, head.cache), (200, Some(CacheStatus::Hit)));
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag").as_deref(), Some("\"v1\""));
    assert_eq!(f.origin.hits("/h"), 1);
}

#[tokio::test]
async fn a_head_response_with_another_validator_invalidates_the_stored_get() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/h",
        vec![
            Reply::ok("old")
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=1"),
            Reply::status(200)
                .header("etag", "\"2\"")
                .header("cache-control", "max-age=60"),
            Reply::ok("new")
                .header("etag", "\"2\"")
                .header("cache-control", "max-age=60"),
        ],
    );
    f.get("/h").await;
    f.advance(10);
    f.send(f.client.head(f.url("/h"))).await;
    let got = f.get("/h").await;
    assert_eq!((got.cache, got.text()), (Some(CacheStatus::Miss), "new"));
}

#[tokio::test]
async fn a_single_range_is_served_from_a_stored_complete_response() {
    let f = Fixture::new().await;
    f.origin.always(
        "/r",
        Reply::ok("0123456789")
            .header("cache-control", "max-age=600")
            .header("a", "1"),
    );
    f.get("/r").await;
    let got = f.get_with("/r", &[("range", "bytes=2-4")]).await;
    assert_eq!((got.status, got.text()), (206, "234"));
    assert_eq!(got.header("content-range").as_deref(), Some("bytes 2-4/10"));
    assert_eq!(got.header("a").as_deref(), Some("1"));
    let suffix = f.get_with("/r", &[("range", "bytes=-3")]).await;
    assert_eq!(suffix.text(), "789");
    let several = f.get_with("/r", &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!((several.status, several.text()), (200, "0123456789"));
    assert_eq!(f.origin.hits("/r"), 1);
}

#[tokio::test]
async fn a_stale_entry_without_validator_is_fetched_again_with_a_plain_request() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/p",
        vec![
            Reply::ok("one").header("cache-control", "max-age=1, stale-if-error=5"),
            Reply::ok("two").header("cache-control", "max-age=60"),
        ],
    );
    f.get("/p").await;
    f.advance(10);
    let got = f.get("/p").await;
    assert_eq!((got.cache, got.text()), (Some(CacheStatus::Miss), "two"));
    let second = &f.origin.requests("/p")[1];
    assert_eq!(second.header("if-none-match"), None);
    assert_eq!(second.header("if-modified-since"), None);
}

#[tokio::test]
async fn a_matching_head_response_freshens_the_stored_get() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/h",
        vec![
            Reply::ok("body")
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=1"),
            Reply::status(200)
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=600")
                .header("x-updated", "yes"),
        ],
    );
    f.get("/h").await;
    f.advance(10);
    // The stale GET entry makes the HEAD a conditional one; this origin answers
    // with a full 200 to HEAD, which matches the stored validator.
    let head = f.send(f.client.head(f.url("/h"))).await;
    assert_eq!(head.status, 200);
    let got = f.get("/h").await;
    assert_eq!((got.cache, got.text()), (Some(CacheStatus::Hit), "body"));
    assert_eq!(got.header("x-updated").as_deref(), Some("yes"));
    assert_eq!(f.origin.hits("/h"), 2);
}
