//! Per-request cache modes, only-if-cached, and the status header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::{CacheMode, CacheStatus};
use common::Fixture;
use testbed::origin::Reply;

async fn fixture_with_entry(cache_control: &'static str) -> Fixture {
    let f = Fixture::new().await;
    f.origin.route("/r", move |req| {
        if req.header("if-none-match") == Some("\"1\"") {
            Reply::not_modified()
                .header("etag", "\"1\"")
                .header("cache-control", cache_control)
        } else {
            Reply::ok(format!("v{}", req.index))
                .header("etag", "\"1\"")
                .header("cache-control", cache_control)
        }
    });
    f.get("/r").await;
    f
}

#[tokio::test]
async fn no_store_mode_neither_reads_nor_writes() {
    let f = fixture_with_entry("max-age=60").await;
    let got = f
        .send(f.client.get(f.url("/r")).with_extension(CacheMode::NoStore))
        .await;
    assert_eq!(got.cache, Some(CacheStatus::Bypass));
    assert_eq!(got.text(), "v1");
    // The stored v0 is still there: the bypass did not replace it.
    assert_eq!(f.get("/r").await.text(), "v0");
}

#[tokio::test]
async fn reload_mode_goes_to_the_network_and_stores_the_result() {
    let f = fixture_with_entry("max-age=60").await;
    let got = f
        .send(f.client.get(f.url("/r")).with_extension(CacheMode::Reload))
        .await;
    assert_eq!(got.cache, Some(CacheStatus::Miss));
    assert_eq!(got.text(), "v1");
    let after = f.get("/r").await;
    assert_eq!(after.cache, Some(CacheStatus::Hit));
    assert_eq!(after.text(), "v1");
}

#[tokio::test]
async fn no_cache_mode_revalidates_a_fresh_entry() {
    let f = fixture_with_entry("max-age=60").await;
    let got = f
        .send(f.client.get(f.url("/r")).with_extension(CacheMode::NoCache))
        .await;
    assert_eq!(got.cache, Some(CacheStatus::Revalidated));
    assert_eq!(got.text(), "v0");
    assert_eq!(
        f.origin.requests("/r")[1].header("if-none-match"),
        Some("\"1\"")
    );
}

#[tokio::test]
async fn force_cache_mode_serves_a_stale_entry_without_the_network() {
    let f = fixture_with_entry("max-age=1").await;
    f.advance(3600);
    let got = f
        .send(
            f.client
                .get(f.url("/r"))
                .with_extension(CacheMode::ForceCache),
        )
        .await;
    assert_eq!(got.cache, Some(CacheStatus::Stale));
    assert_eq!(got.text(), "v0");
    assert_eq!(f.origin.hits("/r"), 1);
}

#[tokio::test]
async fn only_if_cached_mode_answers_504_when_nothing_is_stored() {
    let f = Fixture::new().await;
    f.origin.always("/none", Reply::ok("x"));
    let got = f
        .send(
            f.client
                .get(f.url("/none"))
                .with_extension(CacheMode::OnlyIfCached),
        )
        .await;
    assert_eq!(got.status, 504);
    assert_eq!(f.origin.hits("/none"), 0);
}

#[tokio::test]
async fn only_if_cached_mode_serves_a_stale_entry() {
    let f = fixture_with_entry("max-age=1").await;
    f.advance(3600);
    let got = f
        .send(
            f.client
                .get(f.url("/r"))
                .with_extension(CacheMode::OnlyIfCached),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache, Some(CacheStatus::Stale));
    assert_eq!(f.origin.hits("/r"), 1);
}

#[tokio::test]
async fn only_if_cached_directive_answers_504_instead_of_revalidating() {
    let f = fixture_with_entry("max-age=1").await;
    f.advance(3600);
    let got = f
        .get_with("/r", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(got.status, 504);
    assert_eq!(f.origin.hits("/r"), 1);
}

#[tokio::test]
async fn request_directives_max_age_min_fresh_max_stale() {
    let f = fixture_with_entry("max-age=100").await;
    f.advance(50);
    let too_old = f.get_with("/r", &[("cache-control", "max-age=10")]).await;
    assert_eq!(too_old.cache, Some(CacheStatus::Revalidated));
    f.advance(80);
    let not_fresh_enough = f.get_with("/r", &[("cache-control", "min-fresh=50")]).await;
    assert_eq!(not_fresh_enough.cache, Some(CacheStatus::Revalidated));
    f.advance(500);
    let stale_ok = f
        .get_with("/r", &[("cache-control", "max-stale=1000")])
        .await;
    assert_eq!(stale_ok.cache, Some(CacheStatus::Stale));
    let pragma = f.get_with("/r", &[("pragma", "no-cache")]).await;
    assert_eq!(pragma.cache, Some(CacheStatus::Revalidated));
}

#[tokio::test]
async fn status_header_can_be_switched_off_but_the_extension_stays() {
    let f = Fixture::with(|b| b.status_header(false)).await;
    f.origin
        .always("/h", Reply::ok("x").header("cache-control", "max-age=60"));
    f.get("/h").await;
    let got = f.get("/h").await;
    assert_eq!(got.header("x-cache"), None);
    assert_eq!(got.cache, Some(CacheStatus::Hit));
}
