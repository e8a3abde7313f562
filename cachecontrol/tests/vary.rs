//! Vary: several variants per URL (RFC 9111 §4.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::Reply;

fn by_language(f: &Fixture) {
    f.origin.route("/page", |req| {
        Reply::ok(format!(
            "in {}",
            req.header("accept-language").unwrap_or("none")
        ))
        .header("cache-control", "max-age=600")
        .header("vary", "Accept-Language")
    });
}

#[tokio::test]
async fn variants_are_stored_side_by_side() {
    let f = Fixture::new().await;
    by_language(&f);
    for language in ["en", "fr", "en", "fr"] {
        f.get_with("/page", &[("accept-language", language)]).await;
    }
    assert_eq!(f.origin.hits("/page"), 2);
    let fr = f.get_with("/page", &[("accept-language", "fr")]).await;
    assert_eq!((fr.cache, fr.text()), (Some(CacheStatus::Hit), "in fr"));
    let none = f.get("/page").await;
    assert_eq!(
        (none.cache, none.text()),
        (Some(CacheStatus::Miss), "in none")
    );
}

#[tokio::test]
async fn values_are_compared_after_normalization() {
    let f = Fixture::new().await;
    by_language(&f);
    f.get_with("/page", &[("accept-language", "en,fr")]).await;
    let got = f
        .get_with("/page", &[("accept-language", " en ,  fr ")])
        .await;
    assert_eq!(got.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let f = Fixture::new().await;
    f.origin.always(
        "/star",
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("vary", "*"),
    );
    f.get("/star").await;
    assert_eq!(f.get("/star").await.cache, Some(CacheStatus::Miss));
    assert_eq!(f.stored().await, 0);
}

#[tokio::test]
async fn a_change_of_vary_fields_replaces_the_variants() {
    let f = Fixture::new().await;
    f.origin.route("/p", |req| {
        let vary = if req.index == 0 {
            "accept"
        } else {
            "accept-language"
        };
        Reply::ok(format!("{}", req.index))
            .header("cache-control", "max-age=600")
            .header("vary", vary)
    });
    f.get_with("/p", &[("accept", "a")]).await;
    f.get_with("/p", &[("accept", "b")]).await;
    // The second response varies on another field, which neither request had: it
    // answers the third request, and the first response is never served again.
    let got = f.get_with("/p", &[("accept", "a")]).await;
    assert_eq!((got.cache, got.text()), (Some(CacheStatus::Hit), "1"));
    let other = f.get_with("/p", &[("accept-language", "de")]).await;
    assert_eq!(other.cache, Some(CacheStatus::Miss));
}
