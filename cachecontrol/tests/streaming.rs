//! Bodies: streamed to the caller while recorded, committed only when complete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cachecontrol::CacheStatus;
use common::Fixture;
use testbed::origin::Reply;

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn chunked_body_without_content_length_is_stored_whole() {
    let f = Fixture::new().await;
    let body = body_of(100_000);
    f.origin.always(
        "/c",
        Reply::ok(body.clone())
            .chunked(7)
            .header("cache-control", "max-age=60"),
    );
    let first = f.get("/c").await;
    assert_eq!(first.body, body);
    let second = f.get("/c").await;
    assert_eq!(second.cache, Some(CacheStatus::Hit));
    assert_eq!(second.body, body);
    assert_eq!(f.origin.hits("/c"), 1);
}

#[tokio::test]
async fn body_reaches_the_caller_before_the_origin_has_sent_it_all() {
    let f = Fixture::new().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let body = body_of(40_000);
    f.origin.always(
        "/slow",
        Reply::ok(body.clone())
            .chunked(4)
            .gate(gate.clone())
            .header("cache-control", "max-age=60"),
    );
    let mut response = f.client.get(f.url("/slow")).send().await.unwrap();
    // The origin holds back everything after its first chunk until the gate opens:
    // a cache that buffered the body before handing it over would never get here.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrives while the origin is still sending")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    gate.add_permits(10);
    let mut received = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, body);
    assert_eq!(f.get("/slow").await.cache, Some(CacheStatus::Hit));
}

#[tokio::test]
async fn body_cut_short_of_its_content_length_is_not_stored() {
    let f = Fixture::new().await;
    f.origin.sequence(
        "/cut",
        vec![
            Reply::ok(body_of(10_000))
                .cut_after(3_000)
                .header("cache-control", "max-age=60"),
            Reply::ok("whole").header("cache-control", "max-age=60"),
        ],
    );
    let response = f.client.get(f.url("/cut")).send().await.unwrap();
    assert!(response.bytes().await.is_err(), "the caller sees the cut");
    let second = f.get("/cut").await;
    assert_eq!(second.cache, Some(CacheStatus::Miss));
    assert_eq!(second.text(), "whole");
    assert_eq!(f.origin.hits("/cut"), 2);
}

#[tokio::test]
async fn caller_dropping_the_body_early_leaves_no_entry() {
    let f = Fixture::new().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    f.origin.sequence(
        "/big",
        vec![
            Reply::ok(body_of(50_000))
                .chunked(5)
                .gate(gate.clone())
                .header("cache-control", "max-age=60"),
            Reply::ok("again").header("cache-control", "max-age=60"),
        ],
    );
    let mut response = f.client.get(f.url("/big")).send().await.unwrap();
    response.chunk().await.unwrap();
    drop(response);
    gate.add_permits(10);
    // The store task notices the drop; give it a moment before looking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = f.get("/big").await;
    assert_eq!(second.cache, Some(CacheStatus::Miss));
    assert_eq!(second.text(), "again");
    let third = f.get("/big").await;
    assert_eq!(
        (third.cache, third.text()),
        (Some(CacheStatus::Hit), "again")
    );
}

#[tokio::test]
async fn body_larger_than_the_memory_bound_is_served_but_not_stored() {
    let f = Fixture::with(|b| b).await;
    let small = std::sync::Arc::new(cachecontrol::MemoryCache::new(10_000));
    let cache = cachecontrol::CacheControl::builder(small.clone()).build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build();
    f.origin.always(
        "/huge",
        Reply::ok(body_of(50_000)).header("cache-control", "max-age=60"),
    );
    let body = client
        .get(f.url("/huge"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 50_000);
    assert!(small.is_empty());
}

#[tokio::test]
async fn concurrent_misses_for_one_url_go_to_the_origin_once() {
    let f = Fixture::new().await;
    f.origin.always(
        "/popular",
        Reply::ok(body_of(20_000))
            .delay(Duration::from_millis(300))
            .header("cache-control", "max-age=60"),
    );
    let requests = (0..10).map(|_| f.get("/popular"));
    let responses = futures_util::future::join_all(requests).await;
    assert_eq!(f.origin.hits("/popular"), 1);
    assert!(responses.iter().all(|r| r.body.len() == 20_000));
    let misses = responses
        .iter()
        .filter(|r| r.cache == Some(CacheStatus::Miss))
        .count();
    assert_eq!(misses, 1, "one leader, nine served from its response");
}

#[tokio::test]
async fn concurrent_misses_of_an_unstorable_response_each_get_their_own() {
    let f = Fixture::new().await;
    f.origin.route("/private", |req| {
        Reply::ok(format!("for request {}", req.index))
            .delay(Duration::from_millis(100))
            .header("cache-control", "no-store")
    });
    let responses = futures_util::future::join_all((0..4).map(|_| f.get("/private"))).await;
    assert_eq!(f.origin.hits("/private"), 4);
    let mut bodies: Vec<_> = responses.iter().map(|r| r.text().to_owned()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 4, "nobody got another's response");
}
