//! Two nodes sharing a far tier: what one fetched, the other gets without the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cachecontrol::policy::CachePolicy;
use cachecontrol::store::{Body, Entry, EntryStream, Meta, Tiered, Variants};
use cachecontrol::{Cache, CacheControl, CacheStatus, MemoryCache, StoreError};
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

/// A MemoryCache whose `put` takes the whole body, then waits for a permit of
/// `gate` before committing.
#[derive(Debug)]
struct GatedNear {
    inner: MemoryCache,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Cache for GatedNear {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        let mut stream = body.into_stream();
        let mut whole = Vec::new();
        while let Some(chunk) = stream.next().await {
            whole.extend_from_slice(&chunk?);
        }
        // Each commit uses up a permit: the test counts them.
        self.gate
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?
            .forget();
        self.inner
            .put(key, meta, Body::Bytes(bytes::Bytes::from(whole)))
            .await
    }
    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        self.inner.update(key, policy).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn entries(&self) -> EntryStream<'_> {
        self.inner.entries()
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
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

/// A far hit is copied into the near tier once read; a change of the key before
/// that copy commits (here: each of a delete, a newer put, a clear) undoes the copy,
/// so that the near tier never serves what the far one no longer has.
#[tokio::test]
async fn a_far_hit_copied_into_the_near_tier_after_a_change_of_its_key_is_undone() {
    for change in ["delete", "put", "clear"] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let near = Arc::new(GatedNear {
            inner: MemoryCache::new(1 << 20),
            gate: Arc::clone(&gate),
        });
        let far = Arc::new(MemoryCache::new(1 << 20));
        far.put("k", marker(1), Body::Bytes("old".into()))
            .await
            .unwrap();
        let store = Tiered::new(Arc::clone(&near), Arc::clone(&far));
        let hit = store.get("k").await.unwrap().expect("a far hit");
        assert_eq!(read_all(hit).await, b"old");
        // The near copy has its whole body and waits to commit; the key changes.
        match change {
            "delete" => store.delete("k").await.unwrap(),
            "put" => {
                let newer = Body::Stream(Box::pin(futures_util::stream::iter([Ok(
                    bytes::Bytes::from_static(b"new"),
                )])));
                gate.add_permits(1);
                store.put("k", marker(2), newer).await.unwrap();
            }
            _ => store.clear().await.unwrap(),
        }
        // Then the copy commits, and is undone.
        gate.add_permits(1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let expected: Option<&[u8]> = if change == "put" { Some(b"new") } else { None };
        loop {
            let near_now = match near.inner.get("k").await.unwrap() {
                Some(entry) => Some(read_all(entry).await),
                None => None,
            };
            // Every commit made (the copy's, and the newer put's), and no old body
            // left; after a put, the near tier may have the new one or none.
            let commits_done = gate.available_permits() == 0;
            let settled = match change {
                "put" => near_now.as_deref() != Some(&b"old"[..]),
                _ => near_now.is_none(),
            };
            if commits_done && settled {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "after a {change}, the near tier has {near_now:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let through = match store.get("k").await.unwrap() {
            Some(entry) => Some(read_all(entry).await),
            None => None,
        };
        assert_eq!(through.as_deref(), expected, "after a {change}");
    }
}
