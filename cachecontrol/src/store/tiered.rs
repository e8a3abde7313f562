//! [`Tiered`]: a store made of two, a near one (fast, local) and a far one (shared).
//!
//! Reads try the near store, then the far one; a far hit is copied into the near
//! store while the caller reads it. Writes go to both at once, from one pass over the
//! body. This is a `dadd` worker's setup: `Tiered::new(FileCache, RedisCache)`, so that
//! an artifact fetched by one node is served to the others from Redis, and to the node
//! itself from its disk.
//!
//! A tier that fails does not fail the other: a write that one tier refuses is still
//! made in the other (and the failure logged); a read that the near tier cannot
//! answer goes to the far one.
//!
//! A far hit's copy into the near tier commits when the body has been read, which may
//! be after the key was written, updated or removed through this store meanwhile (a
//! newer response, an invalidation), or while such a change was under way: the copy
//! then removes itself from the near tier, so that the near tier does not keep an
//! older entry than one written through this store. (It may remove a newer near copy
//! that landed just before: the next read gets it from the far tier again.) Other
//! processes writing the same stores are not seen.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::Poll;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Body, BodyStream, Cache, Entry, EntryStream, Meta, StoreError};
use crate::policy::CachePolicy;

/// How many chunks may wait for the slower tier.
const TEE_CAPACITY: usize = 16;

/// Two stores: reads near then far, writes to both.
///
/// ```
/// use cachecontrol::{CacheControl, MemoryCache};
/// use cachecontrol::store::Tiered;
///
/// // A small, fast store in front of a bigger one (in production: a FileCache in
/// // front of a RedisCache).
/// let store = Tiered::new(MemoryCache::new(16 << 20), MemoryCache::new(256 << 20));
/// let cache = CacheControl::new(store);
/// # drop(cache);
/// ```
#[derive(Debug)]
pub struct Tiered<N, F> {
    near: Arc<N>,
    far: Arc<F>,
    changes: Arc<Changes>,
}

impl<N: Cache, F: Cache> Tiered<N, F> {
    /// Reads from `near` first, then `far`; writes to both.
    pub fn new(near: N, far: F) -> Tiered<N, F> {
        Tiered {
            near: Arc::new(near),
            far: Arc::new(far),
            changes: Arc::new(Changes::default()),
        }
    }

    /// The near store.
    pub fn near(&self) -> &N {
        &self.near
    }

    /// The far store.
    pub fn far(&self) -> &F {
        &self.far
    }
}

#[async_trait]
impl<N: Cache, F: Cache> Cache for Tiered<N, F> {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        // Before anything is read: a change under way or made after this counts.
        let read_at = self.changes.epoch();
        match self.near.get(key).await {
            Ok(Some(entry)) => return Ok(Some(entry)),
            Ok(None) => {}
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(error) => tracing::warn!(key, %error, "near cache tier failed; trying the far one"),
        }
        let Some(entry) = self.far.get(key).await? else {
            return Ok(None);
        };
        // Copy the far hit into the near tier as the caller reads it; undone if the
        // key changes meanwhile.
        let (to_near, near_body) = channel(key);
        let near = Arc::clone(&self.near);
        let changes = Arc::clone(&self.changes);
        let owned_key = key.to_owned();
        let meta = entry.meta.clone();
        tokio::spawn(async move {
            match near.put(&owned_key, meta, Body::Stream(near_body)).await {
                Ok(()) if changes.since(&owned_key, read_at) => {
                    if let Err(error) = near.delete(&owned_key).await {
                        tracing::warn!(key = %owned_key, %error, "could not remove an outdated copy from the near tier");
                    }
                }
                Ok(()) | Err(StoreError::Incomplete { .. }) => {}
                Err(error) => {
                    tracing::debug!(key = %owned_key, %error, "could not copy a far hit into the near tier");
                }
            }
        });
        let body = match entry.body {
            // A whole body can be handed over at once.
            Body::Bytes(bytes) => {
                to_near.finish_with(bytes.clone()).await;
                Body::Bytes(bytes)
            }
            body => Body::Stream(to_near.tee(body.into_stream())),
        };
        let mut entry = Entry::new(entry.meta, body);
        entry.from_far = true;
        Ok(Some(entry))
    }

    /// Ready for a hit in the near tier (or a closed one); a miss there needs the far
    /// tier, so it is `Pending`.
    fn get_now(&self, key: &str) -> Poll<Result<Option<Entry>, StoreError>> {
        match self.near.get_now(key) {
            ready @ Poll::Ready(Ok(Some(_)) | Err(StoreError::Closed)) => ready,
            Poll::Ready(_) | Poll::Pending => Poll::Pending,
        }
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        let _change = self.changes.begin(Some(key));
        let (to_near, near_body) = channel(key);
        let (to_far, far_body) = channel(key);
        let source = body.into_stream();
        let pump = pump(source, [to_near, to_far]);
        let (failed, near, far) = tokio::join!(
            pump,
            self.near.put(key, meta.clone(), Body::Stream(near_body)),
            self.far.put(key, meta, Body::Stream(far_body)),
        );
        // Neither tier committed a body whose source failed: the source's error
        // says why (a guarded file that changed, say), not the tiers' "incomplete".
        match failed {
            Some(error) => Err(error),
            None => either_succeeded(key, "put", near, far),
        }
    }

    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        let _change = self.changes.begin(Some(key));
        let (near, far) = tokio::join!(
            self.near.update(key, Arc::clone(&policy)),
            self.far.update(key, policy)
        );
        match (near, far) {
            (Ok(a), Ok(b)) => Ok(a || b),
            (Ok(a), Err(error)) | (Err(error), Ok(a)) => {
                tracing::warn!(key, %error, "one cache tier failed to update");
                Ok(a)
            }
            (Err(error), Err(_)) => Err(error),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let _change = self.changes.begin(Some(key));
        let (near, far) = tokio::join!(self.near.delete(key), self.far.delete(key));
        near.and(far)
    }

    fn entries(&self) -> EntryStream<'_> {
        // The near tier's entries, then the far tier's that the near one does not have.
        let near_keys = Arc::new(parking_lot::Mutex::new(HashSet::new()));
        let seen = Arc::clone(&near_keys);
        let near = self.near.entries().map(move |entry| {
            if let Ok(entry) = &entry {
                seen.lock().insert(entry.key.clone());
            }
            entry
        });
        let far = self.far.entries().filter(move |entry| {
            let keep = match entry {
                Ok(entry) => !near_keys.lock().contains(&entry.key),
                Err(_) => true,
            };
            std::future::ready(keep)
        });
        Box::pin(near.chain(far))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let _change = self.changes.begin(None);
        let (near, far) = tokio::join!(
            self.near.delete_prefix(prefix),
            self.far.delete_prefix(prefix)
        );
        Ok(near? + far?)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let _change = self.changes.begin(None);
        let (near, far) = tokio::join!(self.near.clear(), self.far.clear());
        near.and(far)
    }

    async fn close(&self) -> Result<(), StoreError> {
        let (near, far) = tokio::join!(self.near.close(), self.far.close());
        near.and(far)
    }
}

/// How many recently changed keys are remembered: enough for the far hits being
/// copied; a change forgotten sooner counts as a change of every key.
const REMEMBERED: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// The writes and removals made through a [`Tiered`] store, numbered at their start
/// and at their end: whether a key changed, or was changing, after a far hit's copy
/// into the near tier started.
#[derive(Debug)]
struct Changes {
    inner: Mutex<ChangesInner>,
}

#[derive(Debug)]
struct ChangesInner {
    /// The number of starts and ends of changes so far.
    epoch: u64,
    /// The last start or end of a change of each recently changed key.
    recent: LruCache<String, u64>,
    /// The keys being changed, and by how many changes.
    under_way: HashMap<String, usize>,
    /// The latest start or end of a change of a key no longer in `recent`, or of
    /// every key (a `clear`, a `delete_prefix`).
    of_any: u64,
    /// How many changes of every key are under way.
    of_all_under_way: usize,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            inner: Mutex::new(ChangesInner {
                epoch: 0,
                recent: LruCache::new(REMEMBERED),
                under_way: HashMap::new(),
                of_any: 0,
                of_all_under_way: 0,
            }),
        }
    }
}

impl Changes {
    fn epoch(&self) -> u64 {
        self.inner.lock().epoch
    }

    /// A change of `key` (of every key: `None`) starts; it ends when the guard is
    /// dropped.
    fn begin<'a>(&'a self, key: Option<&str>) -> Change<'a> {
        let mut inner = self.inner.lock();
        inner.mark(key);
        match key {
            Some(key) => *inner.under_way.entry(key.to_owned()).or_default() += 1,
            None => inner.of_all_under_way += 1,
        }
        Change {
            changes: self,
            key: key.map(str::to_owned),
        }
    }

    /// Whether `key` changed after `epoch`, or is changing.
    fn since(&self, key: &str, epoch: u64) -> bool {
        let inner = self.inner.lock();
        inner.of_any > epoch
            || inner.of_all_under_way > 0
            || inner.under_way.contains_key(key)
            || inner.recent.peek(key).is_some_and(|at| *at > epoch)
    }
}

impl ChangesInner {
    /// Numbers a start or an end of a change of `key` (of every key: `None`).
    fn mark(&mut self, key: Option<&str>) {
        self.epoch += 1;
        let epoch = self.epoch;
        match key {
            Some(key) => {
                if let Some((evicted, at)) = self.recent.push(key.to_owned(), epoch)
                    && evicted != key
                {
                    self.of_any = self.of_any.max(at);
                }
            }
            None => self.of_any = epoch,
        }
    }
}

/// A change under way, in [`Changes`] until dropped.
struct Change<'a> {
    changes: &'a Changes,
    key: Option<String>,
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        let mut inner = self.changes.inner.lock();
        inner.mark(self.key.as_deref());
        match &self.key {
            Some(key) => {
                if let Some(count) = inner.under_way.get_mut(key) {
                    *count -= 1;
                    if *count == 0 {
                        inner.under_way.remove(key);
                    }
                }
            }
            None => inner.of_all_under_way -= 1,
        }
    }
}

fn either_succeeded(
    key: &str,
    operation: &str,
    near: Result<(), StoreError>,
    far: Result<(), StoreError>,
) -> Result<(), StoreError> {
    match (near, far) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(error)) | (Err(error), Ok(())) => {
            if !matches!(error, StoreError::Incomplete { .. } | StoreError::Changed) {
                tracing::warn!(key, operation, %error, "one cache tier failed; the other has the entry");
            }
            Ok(())
        }
        (Err(error), Err(_)) => Err(error),
    }
}

/// A message to one tier's copy of a body.
enum Piece {
    Chunk(Bytes),
    /// The body is complete.
    End,
}

/// The sending side of one tier's copy of a body.
struct Copy {
    sender: Option<mpsc::Sender<Piece>>,
}

/// A channel whose receiving side is a body stream for a store: it ends normally only
/// after [`Piece::End`]; closed without it, it ends with an error, so that the store
/// does not commit a body that was cut short.
fn channel(key: &str) -> (Copy, BodyStream) {
    let (sender, receiver) = mpsc::channel(TEE_CAPACITY);
    let key = key.to_owned();
    let body = stream::unfold(Some(receiver), move |state| {
        let key = key.clone();
        async move {
            let mut receiver = state?;
            match receiver.recv().await {
                Some(Piece::Chunk(bytes)) => Some((Ok(bytes), Some(receiver))),
                Some(Piece::End) => None,
                None => Some((Err(StoreError::Incomplete { key }), None)),
            }
        }
    });
    (
        Copy {
            sender: Some(sender),
        },
        Box::pin(body),
    )
}

impl Copy {
    /// Sends a chunk; a tier that gave up is left alone from then on.
    async fn send(&mut self, bytes: Bytes) {
        if let Some(sender) = &self.sender
            && sender.send(Piece::Chunk(bytes)).await.is_err()
        {
            self.sender = None;
        }
    }

    /// Marks the body complete.
    async fn end(&mut self) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Piece::End).await;
        }
    }

    /// A whole body in one go.
    async fn finish_with(mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.send(bytes).await;
        }
        self.end().await;
    }

    /// The caller's stream, copying each chunk to this tier on its way.
    fn tee(self, source: BodyStream) -> BodyStream {
        Box::pin(stream::unfold(
            (source, self),
            |(mut source, mut copy)| async move {
                match source.next().await {
                    Some(Ok(bytes)) => {
                        copy.send(bytes.clone()).await;
                        Some((Ok(bytes), (source, copy)))
                    }
                    // The copy is dropped unfinished: that tier discards it.
                    Some(Err(error)) => Some((Err(error), (source, Copy { sender: None }))),
                    None => {
                        copy.end().await;
                        None
                    }
                }
            },
        ))
    }
}

/// Reads `source` once, sending every chunk to each copy; a copy whose store gave up
/// no longer holds the others back.
/// Sends the source's chunks to every copy; the source's error, if it failed.
async fn pump<const N: usize>(mut source: BodyStream, mut copies: [Copy; N]) -> Option<StoreError> {
    while let Some(chunk) = source.next().await {
        match chunk {
            Ok(bytes) => {
                for copy in &mut copies {
                    copy.send(bytes.clone()).await;
                }
            }
            // Dropping the copies unfinished tells both stores not to commit.
            Err(error) => return Some(error),
        }
    }
    for copy in &mut copies {
        copy.end().await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryCache;
    use crate::policy::{Exchange, PolicyOptions};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    fn policy() -> Arc<CachePolicy> {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
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

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let items: Vec<Result<Bytes, StoreError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::Stream(Box::pin(stream::iter(items)))
    }

    async fn read(body: Body) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = body.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn writes_go_to_both_tiers() {
        let tiered = Tiered::new(MemoryCache::new(1 << 20), MemoryCache::new(1 << 20));
        tiered
            .put("k", Meta::Response(policy()), chunks(&[b"ab", b"cd"]))
            .await
            .unwrap();
        for tier in [tiered.near(), tiered.far()] {
            let entry = tier.get("k").await.unwrap().unwrap();
            assert_eq!(read(entry.body).await, b"abcd");
        }
    }

    #[tokio::test]
    async fn a_far_hit_fills_the_near_tier() {
        let tiered = Tiered::new(MemoryCache::new(1 << 20), MemoryCache::new(1 << 20));
        tiered
            .far()
            .put("k", Meta::Response(policy()), chunks(&[b"far ", b"body"]))
            .await
            .unwrap();
        let entry = tiered.get("k").await.unwrap().unwrap();
        assert_eq!(read(entry.body).await, b"far body");
        // The copy is committed by a task: give it a moment.
        for _ in 0..100 {
            if tiered.near().get("k").await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let near = tiered.near().get("k").await.unwrap().expect("copied near");
        assert_eq!(read(near.body).await, b"far body");
    }

    #[tokio::test]
    async fn only_a_near_hit_is_ready_at_once() {
        let tiered = Tiered::new(MemoryCache::new(1 << 20), MemoryCache::new(1 << 20));
        tiered
            .far()
            .put("far", Meta::Response(policy()), chunks(&[b"far"]))
            .await
            .unwrap();
        tiered
            .near()
            .put("near", Meta::Response(policy()), chunks(&[b"near"]))
            .await
            .unwrap();
        match tiered.get_now("near") {
            Poll::Ready(Ok(Some(entry))) => assert_eq!(read(entry.body).await, b"near"),
            other => panic!("a near hit is ready, got {other:?}"),
        }
        // In the far tier only, or nowhere: only `get` can tell.
        assert!(tiered.get_now("far").is_pending());
        assert!(tiered.get_now("nowhere").is_pending());
        tiered.near().close().await.unwrap();
        assert!(matches!(
            tiered.get_now("near"),
            Poll::Ready(Err(StoreError::Closed))
        ));
    }

    #[tokio::test]
    async fn a_body_cut_short_is_committed_in_neither_tier() {
        let tiered = Tiered::new(MemoryCache::new(1 << 20), MemoryCache::new(1 << 20));
        let items: Vec<Result<Bytes, StoreError>> = vec![
            Ok(Bytes::from_static(b"part")),
            Err(StoreError::Incomplete { key: "k".into() }),
        ];
        let cut = Body::Stream(Box::pin(stream::iter(items)));
        assert!(
            tiered
                .put("k", Meta::Response(policy()), cut)
                .await
                .is_err()
        );
        assert!(tiered.near().get("k").await.unwrap().is_none());
        assert!(tiered.far().get("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_closed_tier_does_not_stop_the_other() {
        let tiered = Tiered::new(MemoryCache::new(1 << 20), MemoryCache::new(1 << 20));
        tiered.far().close().await.unwrap();
        tiered
            .put("k", Meta::Response(policy()), chunks(&[b"x"]))
            .await
            .unwrap();
        assert!(tiered.get("k").await.unwrap().is_some());
        tiered.near().delete("k").await.unwrap();
        assert!(
            tiered.get("k").await.is_err(),
            "the far tier answers Closed"
        );
    }
}
