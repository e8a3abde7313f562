//! Responses to authenticated requests (RFC 9111 §3.5) and the security model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::Reply;

fn personal(f: &Fixture, cache_control: &'static str) {
    f.origin.route("/me", move |req| {
        Reply::ok(format!(
            "for {}",
            req.header("authorization").unwrap_or("nobody")
        ))
        .header("cache-control", cache_control)
    });
}

#[tokio::test]
async fn private_cache_serves_an_authenticated_response_only_to_the_same_credentials() {
    let f = Fixture::new().await;
    personal(&f, "max-age=600");
    f.get_with("/me", &[("authorization", "Bearer alice")])
        .await;
    let alice = f
        .get_with("/me", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(
        (alice.cache, alice.text()),
        (Some(CacheStatus::Hit), "for Bearer alice")
    );
    let bob = f.get_with("/me", &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.text(), "for Bearer bob");
    let anonymous = f.get("/me").await;
    assert_eq!(anonymous.text(), "for nobody");
}

#[tokio::test]
async fn shared_cache_does_not_store_authenticated_responses_without_permission() {
    let f = Fixture::shared().await;
    personal(&f, "max-age=600");
    f.get_with("/me", &[("authorization", "Bearer alice")])
        .await;
    let again = f
        .get_with("/me", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(again.cache, Some(CacheStatus::Miss));
    assert_eq!(f.stored().await, 0);
}

#[tokio::test]
async fn shared_cache_shares_authenticated_responses_marked_public() {
    let f = Fixture::shared().await;
    personal(&f, "public, max-age=600");
    f.get_with("/me", &[("authorization", "Bearer alice")])
        .await;
    let anonymous = f.get("/me").await;
    assert_eq!(
        (anonymous.cache, anonymous.text()),
        (Some(CacheStatus::Hit), "for Bearer alice")
    );
}

#[tokio::test]
async fn shared_cache_does_not_store_private_responses_but_a_private_cache_does() {
    let shared = Fixture::shared().await;
    let private = Fixture::new().await;
    for f in [&shared, &private] {
        f.origin.always(
            "/p",
            Reply::ok("mine").header("cache-control", "private, max-age=600"),
        );
        f.get("/p").await;
    }
    assert_eq!(shared.get("/p").await.cache, Some(CacheStatus::Miss));
    assert_eq!(private.get("/p").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn shared_cache_strips_fields_named_in_private_and_serves_the_rest() {
    let f = Fixture::shared().await;
    f.origin.always(
        "/p",
        Reply::ok("page")
            .header("cache-control", "private=\"x-user\", max-age=600")
            .header("x-user", "alice"),
    );
    f.get("/p").await;
    let got = f.get("/p").await;
    assert_eq!(got.cache, Some(CacheStatus::Hit));
    assert_eq!(got.header("x-user"), None);
}

#[tokio::test]
async fn s_maxage_governs_a_shared_cache_and_is_ignored_by_a_private_one() {
    let shared = Fixture::shared().await;
    let private = Fixture::new().await;
    for f in [&shared, &private] {
        f.origin.always(
            "/s",
            Reply::ok("s").header("cache-control", "max-age=1, s-maxage=600"),
        );
        f.get("/s").await;
        f.advance(10);
    }
    assert_eq!(shared.get("/s").await.cache, Some(CacheStatus::Hit));
    assert_eq!(private.get("/s").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn targeted_cache_control_replaces_cache_control_when_asked() {
    let f = Fixture::with(|b| {
        b.shared(true)
            .targeted_cache_control(http::HeaderName::from_static("cdn-cache-control"))
    })
    .await;
    f.origin.always(
        "/t",
        Reply::ok("t")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=600"),
    );
    f.get("/t").await;
    assert_eq!(f.get("/t").await.cache, Some(CacheStatus::Hit));
    // Without the option the field means nothing.
    let plain = Fixture::shared().await;
    plain.origin.always(
        "/t",
        Reply::ok("t")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=600"),
    );
    plain.get("/t").await;
    assert_eq!(plain.get("/t").await.cache, Some(CacheStatus::Miss));
}
