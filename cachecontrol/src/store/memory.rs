//! [`MemoryCache`]: entries in memory, bounded by bytes, least recently used first out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use lru::LruCache;
use parking_lot::Mutex;

use super::{Body, Cache, Entry, EntryInfo, EntryStream, Meta, StoreError};
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

    fn remove(&self, key: &str) {
        let mut state = self.state.lock();
        if let Some(slot) = state.entries.pop(key) {
            state.bytes -= slot.size;
        }
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
        let mut state = self.state.lock();
        if size > self.max_bytes {
            tracing::debug!(
                key,
                size,
                max = self.max_bytes,
                "entry larger than the memory cache; not stored"
            );
            // The newer response replaces the stored one even when it cannot be kept.
            drop(state);
            self.remove(key);
            return;
        }
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

/// The chunks of a body as one buffer of exactly `len` bytes. Even one chunk is
/// copied: it may be a slice of a larger network buffer that it would keep alive.
fn join(chunks: Vec<Bytes>, len: usize) -> Bytes {
    let mut buffer = BytesMut::with_capacity(len);
    for chunk in chunks {
        buffer.extend_from_slice(&chunk);
    }
    buffer.freeze()
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

impl MemoryCache {
    fn lookup(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        Ok(state
            .entries
            .get(key)
            .map(|slot| Entry::new(slot.meta.clone(), Body::Bytes(slot.body.clone()))))
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.lookup(key)
    }

    /// Always ready: a lookup takes a short lock and clones two `Arc`s.
    fn get_now(&self, key: &str) -> Poll<Result<Option<Entry>, StoreError>> {
        Poll::Ready(self.lookup(key))
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        self.check_open()?;
        let body = match body {
            Body::Bytes(bytes) => bytes,
            body @ (Body::Stream(_) | Body::File(_)) => {
                let mut stream = body.into_stream();
                // Chunks are kept as they come and joined once, at the exact size: a
                // growing buffer would keep up to twice the body in memory.
                let mut chunks = Vec::new();
                let mut len = 0;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    len += chunk.len();
                    if len > self.max_bytes {
                        tracing::debug!(
                            key,
                            max = self.max_bytes,
                            "body larger than the memory cache; not stored"
                        );
                        // The newer response replaces the stored one even when it
                        // cannot be kept.
                        self.remove(key);
                        return Ok(());
                    }
                    chunks.push(chunk);
                }
                join(chunks, len)
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
        if !matches!(&slot.meta, Meta::Response(stored) if stored.body_id() == policy.body_id()) {
            return Ok(false);
        }
        let meta = Meta::Response(policy);
        let size = entry_size(key, &meta, slot.body.len());
        let old_size = std::mem::replace(&mut slot.size, size);
        slot.meta = meta;
        state.bytes = state.bytes - old_size + size;
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_open()?;
        self.remove(key);
        Ok(())
    }

    fn entries(&self) -> EntryStream<'_> {
        if let Err(error) = self.check_open() {
            return Box::pin(futures_util::stream::iter([Err(error)]));
        }
        let listed: Vec<Result<EntryInfo, StoreError>> = self
            .state
            .lock()
            .entries
            .iter()
            .filter_map(|(key, slot)| match &slot.meta {
                Meta::Response(policy) => Some(Ok(EntryInfo::new(
                    key.clone(),
                    slot.body.len() as u64,
                    policy.response_time(),
                ))),
                Meta::Variants(_) => None,
            })
            .collect();
        Box::pin(futures_util::stream::iter(listed))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        let doomed: Vec<String> = state
            .entries
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            if let Some(slot) = state.entries.pop(key) {
                state.bytes -= slot.size;
            }
        }
        Ok(doomed.len() as u64)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.check_open()?;
        let mut state = self.state.lock();
        state.entries.clear();
        state.bytes = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Exchange, PolicyOptions};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    fn policy(max_age: &str) -> Arc<CachePolicy> {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_str(max_age).unwrap());
        let exchange = Exchange {
            method: &Method::GET,
            request_headers: &HeaderMap::new(),
            status: StatusCode::OK,
            response_headers: &headers,
            request_time: 1000,
            response_time: 1000,
        };
        Arc::new(CachePolicy::new(&exchange, &PolicyOptions::default()).unwrap())
    }

    #[tokio::test]
    async fn least_recently_used_entries_go_first() {
        let cache = MemoryCache::new(3 * 1024);
        for key in ["a", "b"] {
            cache
                .put(
                    key,
                    Meta::Response(policy("max-age=60")),
                    Body::Bytes(Bytes::from(vec![0; 1000])),
                )
                .await
                .unwrap();
        }
        cache.get("a").await.unwrap();
        cache
            .put(
                "c",
                Meta::Response(policy("max-age=60")),
                Body::Bytes(Bytes::from(vec![0; 1000])),
            )
            .await
            .unwrap();
        assert!(cache.get("a").await.unwrap().is_some());
        assert!(
            cache.get("b").await.unwrap().is_none(),
            "b was the least recently used"
        );
        assert!(cache.get("c").await.unwrap().is_some());
        assert!(cache.size() <= 3 * 1024);
    }

    #[tokio::test]
    async fn update_keeps_the_body_and_the_accounting() {
        let cache = MemoryCache::new(1 << 20);
        let first = policy("max-age=60");
        cache
            .put(
                "k",
                Meta::Response(first.clone()),
                Body::Bytes(Bytes::from_static(b"body")),
            )
            .await
            .unwrap();
        let size = cache.size();
        let freshened = Arc::new(
            (*policy("max-age=600, must-revalidate"))
                .clone()
                .with_body_of(&first),
        );
        assert!(cache.update("k", freshened).await.unwrap());
        assert!(cache.size() > size, "the longer headers are counted");
        let other = policy("max-age=1");
        assert!(
            !cache.update("k", other).await.unwrap(),
            "another body's policy is refused"
        );
        let Some(Entry {
            body: Body::Bytes(body),
            ..
        }) = cache.get("k").await.unwrap()
        else {
            panic!("the entry is still there");
        };
        assert_eq!(&body[..], b"body");
    }

    #[tokio::test]
    async fn entries_list_responses_and_prefixes_delete_variants_too() {
        use futures_util::TryStreamExt;
        let cache = MemoryCache::new(1 << 20);
        let body = || Body::Bytes(Bytes::from_static(b"12345"));
        cache
            .put("http://a/x", Meta::Response(policy("max-age=60")), body())
            .await
            .unwrap();
        cache
            .put(
                "http://a/x vary:1:ab",
                Meta::Response(policy("max-age=60")),
                body(),
            )
            .await
            .unwrap();
        let marker = crate::store::Variants {
            names: vec![],
            nonce: 1,
        };
        cache
            .put(
                "http://a/y",
                Meta::Variants(Arc::new(marker)),
                Body::empty(),
            )
            .await
            .unwrap();
        cache
            .put("http://b/z", Meta::Response(policy("max-age=60")), body())
            .await
            .unwrap();
        let mut listed: Vec<EntryInfo> = cache.entries().try_collect().await.unwrap();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["http://a/x", "http://a/x vary:1:ab", "http://b/z"]);
        assert!(listed.iter().all(|e| e.size == 5 && e.stored_at == 1000));
        assert_eq!(cache.delete_prefix("http://a/").await.unwrap(), 3);
        assert_eq!(cache.len(), 1);
        cache.clear().await.unwrap();
        assert!(cache.is_empty());
        assert_eq!(cache.size(), 0);
    }

    #[tokio::test]
    async fn a_file_body_is_read_into_memory() {
        use std::io::{Seek, Write};
        let mut file = tempfile_in_target();
        file.write_all(b"from a file").unwrap();
        file.rewind().unwrap();
        let cache = MemoryCache::new(1 << 20);
        cache
            .put(
                "k",
                Meta::Response(policy("max-age=60")),
                Body::File(crate::store::FileBody::new(file, 11)),
            )
            .await
            .unwrap();
        let Some(Entry {
            body: Body::Bytes(body),
            ..
        }) = cache.get("k").await.unwrap()
        else {
            panic!("stored");
        };
        assert_eq!(&body[..], b"from a file");
    }

    /// A scratch file that removes itself (no tempfile dependency in the library).
    fn tempfile_in_target() -> std::fs::File {
        let path =
            std::env::temp_dir().join(format!("cachecontrol-test-{}", crate::policy::random_u64()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[tokio::test]
    async fn after_close_everything_is_closed() {
        let cache = MemoryCache::new(1 << 20);
        cache
            .put("k", Meta::Response(policy("max-age=60")), Body::empty())
            .await
            .unwrap();
        cache.close().await.unwrap();
        assert!(matches!(cache.get("k").await, Err(StoreError::Closed)));
        assert!(matches!(cache.delete("k").await, Err(StoreError::Closed)));
        assert!(matches!(
            cache
                .put("k", Meta::Response(policy("max-age=60")), Body::empty())
                .await,
            Err(StoreError::Closed)
        ));
        assert_eq!(cache.len(), 0);
    }
}

#[cfg(test)]
mod concurrency {
    use super::*;
    use crate::policy::{Exchange, PolicyOptions};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_and_readers_always_see_whole_entries_within_the_bound() {
        let cache = Arc::new(MemoryCache::new(64 * 1024));
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
        let exchange = Exchange {
            method: &Method::GET,
            request_headers: &HeaderMap::new(),
            status: StatusCode::OK,
            response_headers: &headers,
            request_time: 0,
            response_time: 0,
        };
        let policy = Arc::new(CachePolicy::new(&exchange, &PolicyOptions::default()).unwrap());
        let tasks: Vec<_> = (0..8u8)
            .map(|writer| {
                let cache = Arc::clone(&cache);
                let policy = Arc::clone(&policy);
                tokio::spawn(async move {
                    for round in 0..200usize {
                        let key = format!("k{}", round % 20);
                        // Every body is one repeated byte: a mixed entry would show.
                        let body = Bytes::from(vec![writer; 500 + round % 7 * 300]);
                        cache
                            .put(&key, Meta::Response(Arc::clone(&policy)), Body::Bytes(body))
                            .await
                            .unwrap();
                        if let Some(Entry {
                            body: Body::Bytes(read),
                            ..
                        }) = cache.get(&format!("k{}", (round + 3) % 20)).await.unwrap()
                        {
                            assert!(read.iter().all(|b| *b == read[0]), "a torn body");
                        }
                        if round % 50 == 0 {
                            cache.delete(&key).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(cache.size() <= 64 * 1024);
        let recount: usize = {
            let state = cache.state.lock();
            state.entries.iter().map(|(_, slot)| slot.size).sum()
        };
        assert_eq!(
            recount,
            cache.size(),
            "the byte accounting matches the entries"
        );
    }
}
