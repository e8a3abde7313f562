//! Unsafe methods invalidate what is stored (RFC 9111 §4.4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::{Origin, Reply};

async fn stored(f: &Fixture, path: &str) {
    f.origin.always(
        path,
        Reply::ok(path.to_owned()).header("cache-control", "max-age=600"),
    );
    f.get(path).await;
    assert_eq!(f.get(path).await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_url() {
    for method in ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"] {
        let f = Fixture::new().await;
        stored(&f, "/doc").await;
        f.origin.route("/doc", |req| {
            if req.method == http::Method::GET {
                Reply::ok("new").header("cache-control", "max-age=600")
            } else {
                Reply::ok("done")
            }
        });
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let got = f
            .send(f.client.request(method.clone(), f.url("/doc")).body("x"))
            .await;
        assert_eq!(got.cache, Some(CacheStatus::Bypass));
        let after = f.get("/doc").await;
        assert_eq!(
            (after.cache, after.text()),
            (Some(CacheStatus::Miss), "new"),
            "after {method}"
        );
    }
}

#[tokio::test]
async fn a_failed_unsafe_request_does_not_invalidate() {
    let f = Fixture::new().await;
    stored(&f, "/doc").await;
    f.origin.route("/doc", |req| {
        if req.method == http::Method::POST {
            Reply::status(500)
        } else {
            Reply::ok("new").header("cache-control", "max-age=600")
        }
    });
    f.send(f.client.post(f.url("/doc"))).await;
    assert_eq!(f.get("/doc").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn location_and_content_location_of_the_same_origin_are_invalidated() {
    let f = Fixture::new().await;
    stored(&f, "/a").await;
    stored(&f, "/b").await;
    f.origin.always(
        "/collection",
        Reply::status(201)
            .header("location", "/a")
            .header("content-location", "/b"),
    );
    f.send(f.client.post(f.url("/collection"))).await;
    assert_eq!(f.get("/a").await.cache, Some(CacheStatus::Miss));
    assert_eq!(f.get("/b").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn another_origins_location_is_not_invalidated() {
    let f = Fixture::new().await;
    let other = Origin::start().await.unwrap();
    other.always("/x", Reply::ok("x").header("cache-control", "max-age=600"));
    f.send(f.client.get(other.url("/x"))).await;
    f.origin.always(
        "/post",
        Reply::status(200).header("location", other.url("/x")),
    );
    f.send(f.client.post(f.url("/post"))).await;
    let again = f.send(f.client.get(other.url("/x"))).await;
    assert_eq!(again.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn invalidation_reaches_every_variant() {
    let f = Fixture::new().await;
    f.origin.route("/v", |req| {
        if req.method == http::Method::POST {
            return Reply::ok("posted");
        }
        Reply::ok(format!(
            "{}#{}",
            req.header("accept").unwrap_or("-"),
            req.index
        ))
        .header("cache-control", "max-age=600")
        .header("vary", "accept")
    });
    for accept in ["a", "b"] {
        f.get_with("/v", &[("accept", accept)]).await;
    }
    f.send(f.client.post(f.url("/v"))).await;
    for accept in ["a", "b"] {
        let got = f.get_with("/v", &[("accept", accept)]).await;
        assert_eq!(got.cache, Some(CacheStatus::Miss), "variant {accept}");
    }
}
