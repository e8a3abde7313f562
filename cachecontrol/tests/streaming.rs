//! Bodies: streamed to the caller while recorded, committed only when complete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cachecontrol::{CacheControl, CacheStatus, Recording, StoreInBackground};
use common::Fixture;
use common::gated::Gated;
use testbed::origin::{Origin, Reply};

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

/// An origin serving `/big` (fresh for a minute), and a client whose store commits
/// only when the returned gate gets a permit (store timeout: a minute).
async fn gated_commit() -> (
    Origin,
    reqwest_middleware::ClientWithMiddleware,
    Arc<tokio::sync::Semaphore>,
) {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/big",
        Reply::ok(body_of(300_000)).header("cache-control", "max-age=60"),
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Gated::new(&gate);
    let cache = CacheControl::builder(store)
        .store_timeout(Duration::from_secs(60))
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build();
    (origin, client, gate)
}

#[tokio::test]
async fn with_store_in_background_the_body_ends_before_the_commit_and_recording_tells_when_stored()
{
    let (origin, client, gate) = gated_commit().await;
    let response = client
        .get(origin.url("/big"))
        .with_extension(StoreInBackground)
        .send()
        .await
        .unwrap();
    let recording = response
        .extensions()
        .get::<Recording>()
        .cloned()
        .expect("a response being stored says so");
    let body = tokio::time::timeout(Duration::from_secs(10), response.bytes())
        .await
        .expect("the body ends without waiting for the store's commit")
        .unwrap();
    assert_eq!(body.len(), 300_000);
    let mut stored = std::pin::pin!(recording.stored());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stored)
            .await
            .is_err(),
        "not stored before the store commits"
    );
    gate.add_permits(1);
    assert!(stored.await, "stored once the store commits");
    let again = client.get(origin.url("/big")).send().await.unwrap();
    assert_eq!(
        again.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    assert_eq!(origin.hits("/big"), 1);
}

#[tokio::test]
async fn without_store_in_background_the_body_ends_only_once_stored() {
    let (origin, client, gate) = gated_commit().await;
    let response = client.get(origin.url("/big")).send().await.unwrap();
    let mut reading = tokio::spawn(response.bytes());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut reading)
            .await
            .is_err(),
        "the body's end waits for the commit"
    );
    gate.add_permits(1);
    let body = reading.await.unwrap().unwrap();
    assert_eq!(body.len(), 300_000);
    let again = client.get(origin.url("/big")).send().await.unwrap();
    assert_eq!(
        again.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
}

#[tokio::test]
async fn a_recording_whose_body_is_dropped_unread_is_not_stored() {
    let (origin, client, gate) = gated_commit().await;
    gate.add_permits(1);
    let response = client
        .get(origin.url("/big"))
        .with_extension(StoreInBackground)
        .send()
        .await
        .unwrap();
    let recording = response.extensions().get::<Recording>().cloned().unwrap();
    drop(response);
    let stored = tokio::time::timeout(Duration::from_secs(10), recording.stored())
        .await
        .expect("the recording ends when the body is dropped");
    assert!(!stored);
    let again = client.get(origin.url("/big")).send().await.unwrap();
    assert_eq!(
        again.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Miss)
    );
}
