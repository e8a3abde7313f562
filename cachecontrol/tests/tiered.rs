//! Two nodes sharing a far tier: what one fetched, the other gets without the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cachecontrol::store::{Body, Entry, Meta, Tiered, Variants};
use cachecontrol::{Cache, CacheControl, CacheStatus, MemoryCache};
use common::gated::Gated;
use futures_util::StreamExt;
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

fn marker(nonce: u64) -> Meta {
    Meta::Variants(Arc::new(Variants {
        names: Vec::new(),
        nonce,
    }))
}

async fn read_all(entry: Entry) -> Vec<u8> {
    let mut stream = entry.body.into_stream();
    let mut whole = Vec::new();
    while let Some(chunk) = stream.next().await {
        whole.extend_from_slice(&chunk.unwrap());
    }
    whole
}

/// `future`, or a failure if it takes more than ten seconds.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took too long"))
}

/// What `store` has under `k`, read whole.
async fn body_of(store: &impl Cache) -> Option<Vec<u8>> {
    match store.get("k").await.unwrap() {
        Some(entry) => Some(read_all(entry).await),
        None => None,
    }
}

fn new_body() -> Body {
    Body::Stream(Box::pin(futures_util::stream::iter([Ok(
        bytes::Bytes::from_static(b"new"),
    )])))
}

/// A far hit is copied into the near tier once read; a change of the key before
/// that copy commits (each of a delete, a newer put, a clear, and a put that was
/// already under way when the far tier was read) undoes the copy, so that the near
/// tier never serves what the far one no longer has.
#[tokio::test]
async fn a_far_hit_copied_into_the_near_tier_after_a_change_of_its_key_is_undone() {
    for change in ["delete", "put", "clear", "put under way"] {
        let near_gate = Arc::new(tokio::sync::Semaphore::new(0));
        let far_gate = Arc::new(tokio::sync::Semaphore::new(0));
        // The near copy of the far hit (`old`) waits for `copy_gate`; other near
        // writes for `near_gate`.
        let copy_gate = Arc::new(tokio::sync::Semaphore::new(0));
        let near = Arc::new(Gated {
            inner: MemoryCache::new(1 << 20),
            gate: Arc::clone(&near_gate),
            old_gate: Some(Arc::clone(&copy_gate)),
        });
        let far = Arc::new(Gated {
            inner: MemoryCache::new(1 << 20),
            gate: Arc::clone(&far_gate),
            old_gate: None,
        });
        far.inner
            .put("k", marker(1), Body::Bytes("old".into()))
            .await
            .unwrap();
        let store = Arc::new(Tiered::new(Arc::clone(&near), Arc::clone(&far)));
        // A newer put that started before the read: it waits for both gates.
        let under_way = (change == "put under way").then(|| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put("k", marker(2), new_body()).await })
        });
        if under_way.is_some() {
            // Its task runs (on this test's one thread) until both its writes wait.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let hit = within("the far read", store.get("k"))
            .await
            .unwrap()
            .expect("a far hit");
        assert_eq!(read_all(hit).await, b"old");
        // The near copy has its whole body and waits to commit; the key changes.
        match change {
            "delete" => within("the delete", store.delete("k")).await.unwrap(),
            "put" => {
                near_gate.add_permits(1);
                far_gate.add_permits(1);
                within("the put", store.put("k", marker(2), new_body()))
                    .await
                    .unwrap();
            }
            "clear" => within("the clear", store.clear()).await.unwrap(),
            _ => {
                // The put under way writes the near tier (it is still writing the
                // far one).
                near_gate.add_permits(1);
                within("the put's near write", async {
                    while body_of(&near.inner).await.is_none() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                })
                .await;
            }
        }
        // Then the copy commits, and is undone.
        copy_gate.add_permits(1);
        within("the copy", async {
            while copy_gate.available_permits() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        if let Some(put) = under_way {
            // The copy has committed, and checked, while the put was under way.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            far_gate.add_permits(1);
            within("the put under way", put).await.unwrap().unwrap();
        }
        let expected: Option<&[u8]> = if change.starts_with("put") {
            Some(b"new")
        } else {
            None
        };
        within(&format!("the near tier after a {change}"), async {
            loop {
                let near_now = body_of(&near.inner).await;
                // Every commit made, and no old body left; after a put, the near
                // tier may have the new one or none.
                let settled = match expected {
                    Some(_) => near_now.as_deref() != Some(&b"old"[..]),
                    None => near_now.is_none(),
                };
                if settled {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(
            body_of(&*store).await.as_deref(),
            expected,
            "after a {change}"
        );
    }
}
