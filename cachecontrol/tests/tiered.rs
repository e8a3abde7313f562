//! Two nodes sharing a far tier: what one fetched, the other gets without the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cachecontrol::store::Tiered;
use cachecontrol::{Cache, CacheControl, CacheStatus, MemoryCache};
use testbed::origin::{Origin, Reply};

fn node(
    far: Arc<MemoryCache>,
) -> (
    reqwest_middleware::ClientWithMiddleware,
    Arc<Tiered<MemoryCache, Arc<MemoryCache>>>,
) {
    let store = Arc::new(Tiered::new(MemoryCache::new(1 << 20), far));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::new(Arc::clone(&store)))
        .build();
    (client, store)
}

#[tokio::test]
async fn a_second_node_is_served_from_the_shared_tier() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/artifact",
        Reply::ok(vec![4u8; 100_000]).header("cache-control", "max-age=600"),
    );
    let shared = Arc::new(MemoryCache::new(16 << 20));
    let (first, _) = node(Arc::clone(&shared));
    let (second, second_store) = node(Arc::clone(&shared));

    let body = first
        .get(origin.url("/artifact"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 100_000);
    let response = second.get(origin.url("/artifact")).send().await.unwrap();
    assert_eq!(
        response.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    let from = response.extensions().get::<cachecontrol::FromCache>();
    assert!(
        from.is_some_and(|from| from.from_far && from.file.is_none()),
        "the hit says it came from the far tier: {from:?}"
    );
    assert_eq!(response.bytes().await.unwrap().len(), 100_000);
    assert_eq!(
        origin.hits("/artifact"),
        1,
        "the origin was asked once, by the first node"
    );
    // The far hit was copied into the second node's near tier.
    let mut copied = false;
    for _ in 0..100 {
        if second_store
            .near()
            .get(&origin.url("/artifact"))
            .await
            .unwrap()
            .is_some()
        {
            copied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(copied);
    // Now the second node's own tier answers.
    let response = second.get(origin.url("/artifact")).send().await.unwrap();
    assert_eq!(
        response.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    let from = response.extensions().get::<cachecontrol::FromCache>();
    assert!(
        from.is_none_or(|from| !from.from_far),
        "the hit came from the near tier: {from:?}"
    );
}

#[tokio::test]
async fn the_shared_tier_failing_leaves_each_node_its_own_cache() {
    let origin = Origin::start().await.unwrap();
    origin.always("/a", Reply::ok("a").header("cache-control", "max-age=600"));
    let shared = Arc::new(MemoryCache::new(16 << 20));
    let (client, _) = node(Arc::clone(&shared));
    shared.close().await.unwrap();
    client
        .get(origin.url("/a"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let again = client.get(origin.url("/a")).send().await.unwrap();
    assert_eq!(
        again.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    assert_eq!(origin.hits("/a"), 1);
}
