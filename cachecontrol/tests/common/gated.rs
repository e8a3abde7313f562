//! [`Gated`]: a store whose commits happen when a test says.

use std::sync::Arc;

use cachecontrol::policy::CachePolicy;
use cachecontrol::store::{Body, Entry, EntryStream, Meta};
use cachecontrol::{Cache, MemoryCache, StoreError};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

/// A [`MemoryCache`] whose `put` takes the whole body, then uses up a permit of
/// `gate` (of `old_gate` for the body `old`, when there is one) before committing.
#[derive(Debug)]
pub struct Gated {
    pub inner: MemoryCache,
    pub gate: Arc<Semaphore>,
    pub old_gate: Option<Arc<Semaphore>>,
}

impl Gated {
    /// A store of 1 MiB whose commits each wait for a permit of `gate`.
    pub fn new(gate: &Arc<Semaphore>) -> Gated {
        Gated {
            inner: MemoryCache::new(1 << 20),
            gate: Arc::clone(gate),
            old_gate: None,
        }
    }
}

#[async_trait::async_trait]
impl Cache for Gated {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        let mut stream = body.into_stream();
        let mut whole = Vec::new();
        while let Some(chunk) = stream.next().await {
            whole.extend_from_slice(&chunk?);
        }
        let gate = match &self.old_gate {
            Some(old_gate) if whole == b"old" => old_gate,
            _ => &self.gate,
        };
        // Each commit uses up a permit: a test can count them.
        gate.acquire()
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
