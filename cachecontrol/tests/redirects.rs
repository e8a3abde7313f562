//! Redirects: cached under their own URL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cachecontrol::{CacheControl, CacheStatus, MemoryCache};
use common::Fixture;
use testbed::origin::{Origin, Reply};

#[tokio::test]
async fn with_follow_redirects_each_hop_is_cached_under_its_own_url() {
    let f = Fixture::with(|b| b.follow_redirects(10)).await;
    f.origin
        .always("/old", Reply::status(301).header("location", "/new"));
    f.origin.always(
        "/new",
        Reply::ok("here").header("cache-control", "max-age=60"),
    );
    let first = f.get("/old").await;
    assert_eq!((first.status, first.text()), (200, "here"));
    let second = f.get("/old").await;
    assert_eq!(
        (second.status, second.cache, second.text()),
        (200, Some(CacheStatus::Hit), "here")
    );
    assert_eq!((f.origin.hits("/old"), f.origin.hits("/new")), (1, 1));
}

#[tokio::test]
async fn a_temporary_redirect_without_freshness_is_asked_again() {
    let f = Fixture::with(|b| b.follow_redirects(10)).await;
    f.origin
        .always("/tmp", Reply::status(302).header("location", "/target"));
    f.origin.always(
        "/target",
        Reply::ok("t").header("cache-control", "max-age=60"),
    );
    f.get("/tmp").await;
    let second = f.get("/tmp").await;
    assert_eq!(
        second.cache,
        Some(CacheStatus::Hit),
        "the final hop is a hit"
    );
    assert_eq!((f.origin.hits("/tmp"), f.origin.hits("/target")), (2, 1));
}

#[tokio::test]
async fn too_many_redirects_is_an_error_that_says_so() {
    let f = Fixture::with(|b| b.follow_redirects(3)).await;
    f.origin
        .always("/loop", Reply::status(302).header("location", "/loop"));
    let error = f.client.get(f.url("/loop")).send().await.unwrap_err();
    assert!(
        error.to_string().contains("more than 3 redirects"),
        "{error}"
    );
}

#[tokio::test]
async fn post_redirected_with_303_becomes_a_get() {
    let f = Fixture::with(|b| b.follow_redirects(10)).await;
    f.origin
        .always("/form", Reply::status(303).header("location", "/done"));
    f.origin.always("/done", Reply::ok("done"));
    let got = f.send(f.client.post(f.url("/form")).body("a=1")).await;
    assert_eq!(got.text(), "done");
    assert_eq!(f.origin.requests("/done")[0].method, http::Method::GET);
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let f = Fixture::with(|b| b.follow_redirects(10)).await;
    let other = Origin::start().await.unwrap();
    other.always("/x", Reply::ok("other"));
    f.origin.always(
        "/away",
        Reply::status(302).header("location", other.url("/x")),
    );
    f.get_with("/away", &[("authorization", "Bearer secret")])
        .await;
    assert_eq!(
        f.origin.requests("/away")[0].header("authorization"),
        Some("Bearer secret")
    );
    assert_eq!(other.requests("/x")[0].header("authorization"), None);
}

#[tokio::test]
async fn when_the_client_follows_redirects_the_final_response_is_cached_under_its_own_url() {
    let origin = Origin::start().await.unwrap();
    origin.always("/old", Reply::status(301).header("location", "/new"));
    origin.always(
        "/new",
        Reply::ok("here").header("cache-control", "max-age=60"),
    );
    let store = Arc::new(MemoryCache::new(1 << 20));
    // reqwest's default client follows redirects itself.
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::builder(store.clone()).build())
        .build();
    let first = client.get(origin.url("/old")).send().await.unwrap();
    assert_eq!(first.url().path(), "/new");
    first.bytes().await.unwrap();
    let direct = client.get(origin.url("/new")).send().await.unwrap();
    assert_eq!(
        direct.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    // Nothing was stored under /old: that URL answered 301, not "here".
    let again = client.get(origin.url("/old")).send().await.unwrap();
    again.bytes().await.unwrap();
    assert_eq!(origin.hits("/old"), 2);
}
