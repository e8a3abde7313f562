//! [`MemoryCache`]: entries in memory, bounded by bytes, least recently used first out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lru::LruCache;
use parking_lot::Mutex;

use super::{Body, Cache, Entry, Meta, StoreError};
use crate::policy::CachePolicy;

/// What an entry costs beyond its key, body and headers: the policy, the map's slot.
const ENTRY_OVERHEAD: usize = 256;

/// Entries in memory, bounded by the bytes they hold; the least recently used go first.
///
/// A hit hands out the stored body as [`Bytes`], shared, not copied. A body larger
/// than the whole bound is not stored. Safe to share between tasks and threads: one
/// short lock per operation, never held across an `await`.
///
/// ```
/// use cachecontrol::MemoryCache;
/// let store = MemoryCache::new(64 * 1024 * 1024); // 64 MiB
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Debug)]
pub struct MemoryCache {
    max_bytes: usize,
    state: Mutex<State>,
    closed: AtomicBool,
}

#[derive(Debug)]
struct State {
    entries: LruCache<String, Slot>,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    meta: Meta,
    body: Bytes,
    size: usize,
}

impl MemoryCache {
    /// A cache that holds at most `max_bytes` of entries (keys, headers and bodies).
    pub fn new(max_bytes: usize) -> MemoryCache {
        MemoryCache {
            max_bytes,
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            closed: AtomicBool::new(false),
        }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bytes its entries take, by its own accounting.
    pub fn size(&self) -> usize {
        self.state.lock().bytes
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn insert(&self, key: &str, meta: Meta, body: Bytes) {
        let size = entry_size(key, &meta, body.len());
        if size > self.max_bytes {
            tracing::debug!(
                key,
                size,
                max = self.max_bytes,
                "entry larger than the memory cache; not stored"
            );
            return;
        }
        let mut state = self.state.lock();
        if let Some(old) = state.entries.put(key.to_owned(), Slot { meta, body, size }) {
            state.bytes -= old.size;
        }
        state.bytes += size;
        while state.bytes > self.max_bytes {
            match state.entries.pop_lru() {
                Some((_, evicted)) => state.bytes -= evicted.size,
                None => break,
            }
        }
    }
}

fn entry_size(key: &str, meta: &Meta, body: usize) -> usize {
    let headers: usize = match meta {
        Meta::Response(policy) => policy
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 16)
            .sum(),
        Meta::Variants(variants) => variants.names.iter().map(|n| n.as_str().len() + 16).sum(),
    };
    key.len() + headers + body + ENTRY_OVERHEAD
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        Ok(state.entries.get(key).map(|slot| Entry {
            meta: slot.meta.clone(),
            body: Body::Bytes(slot.body.clone()),
        }))
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        self.check_open()?;
        let body = match body {
            Body::Bytes(bytes) => bytes,
            Body::Stream(mut stream) => {
                let mut buffer = BytesMut::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    if buffer.len() + chunk.len() > self.max_bytes {
                        tracing::debug!(
                            key,
                            max = self.max_bytes,
                            "body larger than the memory cache; not stored"
                        );
                        return Ok(());
                    }
                    buffer.extend_from_slice(&chunk);
                }
                buffer.freeze()
            }
        };
        // The store may have been closed while the body was arriving.
        self.check_open()?;
        self.insert(key, meta, body);
        Ok(())
    }

    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        let Some(slot) = state.entries.get_mut(key) else {
            return Ok(false);
        };
        match &slot.meta {
            Meta::Response(stored) if stored.body_id() == policy.body_id() => {
                slot.meta = Meta::Response(policy);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        if let Some(slot) = state.entries.pop(key) {
            state.bytes -= slot.size;
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        let mut state = self.state.lock();
        state.entries.clear();
        state.bytes = 0;
        Ok(())
    }
}
