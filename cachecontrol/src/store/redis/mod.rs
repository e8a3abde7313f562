//! [`RedisCache`]: entries in Redis or Redis Cluster, bodies in chunks, each entry
//! with a TTL of how long it can still be of use.
//!
//! ```no_run
//! use std::time::Duration;
//! use cachecontrol::{CacheControl, RedisCache};
//!
//! # async fn run() -> Result<(), cachecontrol::StoreError> {
//! let store = RedisCache::builder("redis://127.0.0.1:6379/")
//!     .prefix("myservice:http:")
//!     .retention(Duration::from_secs(24 * 3600))
//!     .build()
//!     .await?;
//! let cache = CacheControl::new(store);
//! // ... on shutdown: writes in flight finish, connections are released.
//! cache.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Key layout
//!
//! An entry is a *record* and the *chunks* of its body:
//!
//! ```text
//! <prefix>{<h>}:meta                     the record: the metadata and which body it points to
//! <prefix>{<h>}:body:<generation>:<i>    chunk i of the body written by write <generation>
//! ```
//!
//! The record holds the metadata (as [`format::encode`] writes it), the cache key,
//! and the body's generation, length and chunk size. Each chunk starts with a 20-byte
//! header that names its write and its place (the generation and the index).
//!
//! A small body (at most 64 KiB, and shorter than a chunk) has no chunks: it is *inline*,
//! at the end of its record, so that a hit on it is one `GET`. The record's format is
//! versioned; a record of another version (version 1 had no inline bodies) is a
//! miss, and is removed.
//!
//! `<h>` is the first half of the SHA-256 of the cache key, in hex; the record keeps
//! the cache key itself (listing and [`delete_prefix`](Cache::delete_prefix) read it
//! from there, and a read checks it). The prefix is `cachecontrol:` unless
//! configured; [`clear`](Cache::clear) removes every key under it.
//!
//! # Generations: readers never see a body made of two writes
//!
//! Every `put` picks a fresh random *generation* and writes its chunks under keys
//! that carry it, as the body arrives: memory holds one chunk (1 MiB by default),
//! whatever the body's size. Only when the body is complete is the record written
//! (`SET ... GET`, which returns the record it replaced), and then the previous
//! generation's chunks are deleted. A body stream that ends with an error publishes
//! nothing, and its chunks are deleted. An inline body is written with its record,
//! in the same `SET`.
//!
//! A reader reads the record, then the chunks of *its* generation: the first one at
//! once (a body of one chunk is handed out whole), the others as the body stream is
//! consumed, at most two ahead of it. If the entry is replaced while a body is being read, the
//! next chunk of the old generation is gone and the stream ends with an error: a body
//! is never stitched from two versions. A chunk of the wrong length is treated the
//! same way.
//!
//! [`update`](Cache::update) (a 304 freshened the response) rewrites the record
//! only, in a Lua script that first checks that the record still names the same
//! generation and body; removals of a damaged entry are guarded the same way, so
//! they never remove an entry that replaced it.
//!
//! # TTLs: how long the entry can still be of use
//!
//! Every key gets a TTL. For a response without a validator it is what is left of
//! its [useful life](crate::policy::CachePolicy::useful_until) (freshness lifetime
//! plus its `stale-while-revalidate` / `stale-if-error` window); a response with a
//! validator can be revalidated long after it went stale, and is kept for the
//! [retention](RedisCacheBuilder::retention) (7 days by default), as are variants
//! markers. The TTL counts from when the write began (the response has just
//! arrived), and is at least one second and at most ten years.
//! Chunks are written with a provisional TTL of one hour (a write that takes longer
//! is not stored), and get the entry's TTL just before the record is published, so
//! that the record and its chunks expire together; an update sets the new TTL on all
//! of them.
//!
//! # Redis Cluster
//!
//! [`RedisCache::cluster`] (or [`RedisCache::cluster_builder`]) talks to a cluster.
//! The braces around `<h>` make it the keys' hash tag: all keys of one entry hash to
//! one slot, so the scripts and pipelines over them run on one node, while different
//! entries spread over the cluster. A prefix may therefore not contain braces.
//! Listing and clearing SCAN every master.
//!
//! # Failures
//!
//! The store reconnects by itself: a single node through redis-rs's
//! `ConnectionManager`, a cluster through its cluster connection; the first
//! connection is made on first use when the store was built with
//! [`build_lazy`](RedisCacheBuilder::build_lazy). While Redis is down, operations
//! fail quickly with [`StoreError::Backend`] (a connection attempt is not retried
//! within an operation), which the middleware logs before using the network; when
//! Redis is back, the next operation reconnects. Timeouts default to 2 seconds to
//! connect and 10 seconds for a response (a chunk of a MiB over a slow link), not the
//! half second redis-rs would use.
//!
//! Every key has a TTL, so a `maxmemory-policy` of `volatile-lru` (or any
//! `allkeys-*` one) can evict entries; a chunk evicted under a record is found
//! missing and the entry is dropped, as below. The store needs Redis 6.2 or later
//! (`SET ... GET`).
//!
//! A value under the store's keys that is not what the store wrote (another type,
//! bytes that do not parse, metadata that fails its checksum, the record of another
//! key, a chunk that is missing, of the wrong length or without the header of its
//! place) is a miss, and the entry is removed; nothing read from Redis can make the
//! store panic. The body's bytes themselves carry no checksum: Redis is trusted to
//! keep what it was given, as a file system is by a file store.
//!
//! # Closing
//!
//! [`close`](Cache::close) refuses new operations at once ([`StoreError::Closed`]),
//! lets writes in flight finish (for at most the
//! [close grace](RedisCacheBuilder::close_grace), 10 seconds by default, after which
//! they stop, remove their chunks and fail), waits for the operations under way, and
//! then has Redis close the connection (`QUIT`, to every node of a cluster) and drops
//! it: when `close()` returns, `CLIENT LIST` shows none of the store's connections.
//! Connections are named (`CLIENT SETNAME`, `cachecontrol` by default) so that they
//! can be told apart in `CLIENT LIST`; a connection that replaced a failed one is
//! named by a later operation (naming is tried at most once a second, and never fails
//! an operation).
//!
//! # The hit path
//!
//! A hit on a small body is one round trip, a plain `GET` of the record (a Lua script
//! that read the record and its chunk together cost the server 5.4 µs a call, where a
//! `GET` costs 0.14 µs); a larger body's first chunk takes a second one. The
//! metadata is decoded once per version of the record per process: decoded policies
//! are kept in memory by the fingerprint of the record without its body
//! ([`DecodedCache`]), so a hit on an entry that has not changed only hashes the
//! record's few hundred bytes.

mod body;
mod connection;
mod keys;
mod record;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use redis::Script;

use super::format::{self, DecodedCache};
use super::{Body, Cache, Entry, EntryInfo, EntryStream, Meta, StoreError};
use crate::policy::{CachePolicy, random_u64};
use body::{ChunkWriter, Fetched, Reading, delete_keys};
use connection::{Link, Node, Session, Target, failed, is_wrong_type};
use keys::{EntryKeys, Keys};
use record::{BodyShape, Kind, MAX_CHUNK, Record};

/// The prefix of every key, unless configured.
pub const DEFAULT_PREFIX: &str = "cachecontrol:";
/// The size of a body chunk, unless configured: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// How long an entry with a validator is kept, unless configured: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long to wait for a response from Redis, unless configured.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a connection to Redis, unless configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `close()` lets writes in flight finish, unless configured.
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The name of the store's connections, unless configured.
pub const DEFAULT_CLIENT_NAME: &str = "cachecontrol";
/// How many decoded records are kept in memory, unless configured.
pub const DEFAULT_DECODED_ENTRIES: usize = 4096;

/// The TTL of chunks while their write is under way.
const PENDING_TTL: Duration = Duration::from_secs(3600);
/// The shortest TTL an entry gets.
const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL an entry gets (Redis refuses expiry times past its range).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How many keys one command or pipeline touches at most.
const BATCH: usize = 1000;
/// How many records one read of a listing asks for.
const RECORDS_PER_READ: usize = 100;

/// Rewrites the record if it still starts with the guard, and gives every chunk the
/// new TTL. KEYS: the record, then the chunks. ARGV: guard, new record, TTL (ms).
/// Returns 1 when updated, 0 when the entry changed, -1 when a chunk is missing.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #KEYS do
  if redis.call('PEXPIRE', KEYS[i], ARGV[3]) == 0 then
    return -1
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// Deletes the record and the given chunks if the record still starts with the
/// guard. KEYS: the record, then the chunks. ARGV: the guard. Returns 1 or 0.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
for i = 1, #KEYS do
  redis.call('DEL', KEYS[i])
end
return 1
",
    )
});

/// Entries in Redis (one server, or a cluster), bodies in chunks; see the
/// [module documentation](self) for the key layout, generations, TTLs and failure
/// behaviour.
///
/// Cloning is cheap: clones share the connection and the decoded metadata.
#[derive(Debug, Clone)]
pub struct RedisCache {
    shared: Arc<Shared>,
}

/// Configures a [`RedisCache`]; see [`RedisCache::builder`].
#[derive(Debug, Clone)]
pub struct RedisCacheBuilder {
    nodes: Nodes,
    prefix: String,
    chunk_size: usize,
    response_timeout: Duration,
    connect_timeout: Duration,
    retention: Duration,
    close_grace: Duration,
    client_name: String,
    decoded_entries: usize,
}

#[derive(Clone)]
enum Nodes {
    Single(String),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Nodes {
    // URLs may carry passwords: only their number is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nodes::Single(_) => f.write_str("Single"),
            Nodes::Cluster(urls) => write!(f, "Cluster({} nodes)", urls.len()),
        }
    }
}

/// What every clone of a [`RedisCache`] and every body stream it hands out share.
#[derive(Debug)]
struct Shared {
    link: Link,
    keys: Keys,
    chunk_size: u32,
    retention: Duration,
    close_grace: Duration,
    decoded: DecodedCache,
}

impl RedisCache {
    /// A store on the Redis server at `url` (`redis://[:password@]host:port/[db]`),
    /// with the defaults of [`RedisCache::builder`]; connects before returning.
    pub async fn new(url: impl Into<String>) -> Result<RedisCache, StoreError> {
        RedisCache::builder(url).build().await
    }

    /// A store on the Redis Cluster reached through any of `urls`, with the defaults
    /// of [`RedisCache::builder`]; connects before returning.
    pub async fn cluster(
        urls: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<RedisCache, StoreError> {
        RedisCache::cluster_builder(urls).build().await
    }

    /// Starts configuring a store on the Redis server at `url`. The defaults: keys
    /// under `cachecontrol:`, chunks of 1 MiB, a 10-second response timeout and a
    /// 2-second connect timeout, entries with validators kept 7 days, a 10-second close
    /// grace, connections named `cachecontrol`, 4096 decoded records kept in memory.
    pub fn builder(url: impl Into<String>) -> RedisCacheBuilder {
        RedisCacheBuilder::new(Nodes::Single(url.into()))
    }

    /// Starts configuring a store on a Redis Cluster, reached through any of `urls`;
    /// the defaults are those of [`RedisCache::builder`].
    pub fn cluster_builder(urls: impl IntoIterator<Item = impl Into<String>>) -> RedisCacheBuilder {
        RedisCacheBuilder::new(Nodes::Cluster(urls.into_iter().map(Into::into).collect()))
    }
}

impl RedisCacheBuilder {
    fn new(nodes: Nodes) -> RedisCacheBuilder {
        RedisCacheBuilder {
            nodes,
            prefix: DEFAULT_PREFIX.to_owned(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retention: DEFAULT_RETENTION,
            close_grace: DEFAULT_CLOSE_GRACE,
            client_name: DEFAULT_CLIENT_NAME.to_owned(),
            decoded_entries: DEFAULT_DECODED_ENTRIES,
        }
    }

    /// The prefix of every key of the store (`cachecontrol:` by default); stores with
    /// different prefixes share a Redis without seeing each other's entries. It may
    /// not contain braces (`{`, `}`), which would make a cluster hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The size of a body chunk, in bytes (1 MiB by default, at most 512 MiB): what a
    /// write holds in memory, and the largest value the store puts in Redis. A body
    /// is at most 16 Mi chunks (16 TiB with the default); a longer one reads back as
    /// a miss.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// How long to wait for Redis to answer one command (10 seconds by default): long
    /// enough to move a chunk over the slowest link the store is used on.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long to wait for a connection to Redis (2 seconds by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an entry that has a validator (ETag, Last-Modified) is kept after it
    /// was stored or last revalidated (7 days by default): it can be revalidated with
    /// a conditional request long after it went stale.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long `close()` lets writes in flight finish before they are abandoned (10
    /// seconds by default).
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// The name the store's connections give themselves (`CLIENT SETNAME`;
    /// `cachecontrol` by default): printable ASCII without spaces.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// How many decoded records are kept in memory (4096 by default), so that a hit on
    /// an unchanged entry decodes nothing.
    pub fn decoded_entries(mut self, entries: usize) -> Self {
        self.decoded_entries = entries;
        self
    }

    /// The store, connected: fails when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisCache, StoreError> {
        let cache = self.build_lazy()?;
        drop(cache.shared.link.session().await?);
        Ok(cache)
    }

    /// The store, without connecting: the first operation connects (and an operation
    /// that finds Redis unreachable fails, and the next one tries again). It needs no
    /// runtime until then, so it can be built in synchronous code.
    pub fn build_lazy(self) -> Result<RedisCache, StoreError> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK as usize {
            return Err(StoreError::Backend(format!(
                "a Redis chunk size of {} bytes is outside 1 byte ..= 512 MiB",
                self.chunk_size
            )));
        }
        if self.client_name.is_empty() || !self.client_name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::Backend(format!(
                "the Redis client name {:?} must be printable ASCII without spaces",
                self.client_name
            )));
        }
        let keys = Keys::new(&self.prefix)?;
        let target = match &self.nodes {
            Nodes::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|error| StoreError::Backend(format!("invalid Redis URL: {error}")))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    // A cache does better going to the network than waiting for a
                    // Redis that is down: one attempt per reconnection.
                    .set_number_of_retries(0);
                Target::Single { client, config }
            }
            Nodes::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.response_timeout)
                        .retries(2)
                        .min_retry_wait(10)
                        .max_retry_wait(500)
                        .build()
                        .map_err(|error| {
                            StoreError::Backend(format!("invalid Redis Cluster URLs: {error}"))
                        })?;
                Target::Cluster(client)
            }
        };
        Ok(RedisCache {
            shared: Arc::new(Shared {
                link: Link::new(target, self.client_name),
                keys,
                chunk_size: self.chunk_size as u32,
                retention: self.retention,
                close_grace: self.close_grace,
                decoded: DecodedCache::new(self.decoded_entries),
            }),
        })
    }
}

impl Shared {
    /// How long an entry with this metadata can still be of use, counted from when
    /// the response was received.
    fn lifetime(&self, meta: &Meta) -> Duration {
        match meta {
            Meta::Response(policy) => match policy.useful_until() {
                Some(until) => Duration::from_secs(until.saturating_sub(policy.response_time())),
                None => self.retention,
            },
            Meta::Variants(_) => self.retention,
        }
    }

    /// The TTL, in milliseconds, of an entry whose `lifetime` began at `started`.
    fn ttl_ms(lifetime: Duration, started: Instant) -> u64 {
        let ttl = lifetime
            .saturating_sub(started.elapsed())
            .clamp(MIN_TTL, MAX_TTL);
        ttl.as_millis() as u64
    }

    /// The record in `bytes`, read for `key`, and its metadata, decoded once per
    /// version; why not, when it is not a sound record of `key`.
    fn read_record<'a>(&self, key: &str, bytes: &'a [u8]) -> Result<(Record<'a>, Meta), String> {
        let record = record::parse(bytes).map_err(|error| error.to_string())?;
        if record.key != key {
            return Err(format!("it is the record of another key, {:?}", record.key));
        }
        let meta = self
            .decoded
            .get_or_decode(key, format::fingerprint(record.without_body()), || {
                Some(record.meta.to_vec())
            })
            .map_err(|error| error.to_string())?
            .ok_or_else(|| "no metadata".to_owned())?;
        if !record.agrees_with(&meta) {
            self.decoded.forget(key);
            return Err("its fields disagree with its metadata".to_owned());
        }
        Ok((record, meta))
    }

    /// Removes an entry if its record still starts with `guard` (it was not replaced
    /// since it was read): the record and the chunks of `shape`. Best effort.
    async fn remove_if_unchanged(
        &self,
        session: &mut Session,
        key: &str,
        keys: &EntryKeys,
        shape: BodyShape,
        guard: &[u8],
    ) -> bool {
        self.decoded.forget(key);
        let mut invocation = DELETE.prepare_invoke();
        invocation.key(keys.meta());
        for chunk in keys.chunks(shape.generation, shape.chunk_count()) {
            invocation.key(chunk);
        }
        invocation.arg(guard);
        match session.script::<i64>(&invocation).await {
            Ok(removed) => removed == 1,
            Err(error) => {
                tracing::debug!(key, %error, "could not remove an entry; it will expire");
                false
            }
        }
    }

    /// Removes a value under an entry's record key that is not a sound record.
    async fn remove_garbage(
        &self,
        session: &mut Session,
        key: &str,
        keys: &EntryKeys,
        value: Option<&[u8]>,
        why: &str,
    ) {
        tracing::warn!(
            key,
            why,
            "a value under the cache's Redis keys is not what it wrote; removing it"
        );
        self.decoded.forget(key);
        let result = match value {
            // Only that very value: an entry written since is left alone.
            Some(value) => {
                let mut invocation = DELETE.prepare_invoke();
                invocation.key(keys.meta()).arg(value);
                session.script::<i64>(&invocation).await.map(drop)
            }
            // Another type of value: no entry of ours can be there.
            None => {
                session
                    .query::<()>(redis::cmd("DEL").arg(keys.meta()))
                    .await
            }
        };
        if let Err(error) = result {
            tracing::debug!(key, %error, "could not remove the garbage value");
        }
    }

    /// The record under `keys`, read for `key`: `None` when there is none, or when
    /// what is there was garbage (it has been removed).
    async fn fetch_record(
        &self,
        session: &mut Session,
        key: &str,
        keys: &EntryKeys,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(keys.meta());
        match session.query::<Option<Vec<u8>>>(&get).await {
            Ok(value) => Ok(value),
            Err(error) if is_wrong_type(&error) => {
                self.remove_garbage(session, key, keys, None, "not a string")
                    .await;
                Ok(None)
            }
            Err(error) => Err(failed(&format!("reading the record of {key}"), error)),
        }
    }

    /// Takes the body in, chunk by chunk, until its end; an error (or the close grace
    /// running out) stops it. Returns its shape and, when it is inline, its bytes.
    async fn write_body(
        &self,
        writer: &mut ChunkWriter<'_>,
        body: Body,
    ) -> Result<(BodyShape, Bytes), StoreError> {
        let abandon = self.link.abandoned();
        match body {
            Body::Bytes(bytes) => writer.push(bytes).await?,
            body @ (Body::Stream(_) | Body::File(_)) => {
                let mut stream = body.into_stream();
                loop {
                    let next = tokio::select! {
                        biased;
                        () = abandon.cancelled() => return Err(StoreError::Closed),
                        next = stream.next() => next,
                    };
                    match next {
                        None => break,
                        Some(Ok(bytes)) => writer.push(bytes).await?,
                        Some(Err(error)) => return Err(error),
                    }
                }
            }
        }
        if abandon.is_cancelled() {
            return Err(StoreError::Closed);
        }
        writer.finish().await
    }

    /// Publishes a complete body: its chunks get the entry's TTL, the record is set
    /// (with the body in it when it is `inline`), and the chunks of the generation it
    /// replaced are deleted.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        session: &mut Session,
        key: &str,
        keys: &EntryKeys,
        meta: Meta,
        shape: BodyShape,
        inline: &[u8],
        started: Instant,
    ) -> Result<(), StoreError> {
        let ttl = Shared::ttl_ms(self.lifetime(&meta), started);
        let chunks: Vec<String> = keys.chunks(shape.generation, shape.chunk_count()).collect();
        for batch in chunks.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for chunk in batch {
                pipe.cmd("PEXPIRE").arg(chunk).arg(ttl);
            }
            let extended: Vec<i64> = match session.pipeline(&pipe).await {
                Ok(extended) => extended,
                Err(error) => {
                    let _ = delete_keys(session, &chunks).await;
                    return Err(failed(
                        &format!("setting the TTL of the chunks of {key}"),
                        error,
                    ));
                }
            };
            if extended.iter().any(|&done| done != 1) {
                let _ = delete_keys(session, &chunks).await;
                return Err(StoreError::Backend(format!(
                    "Redis: a chunk of {key} expired or was evicted before the entry was published; not stored"
                )));
            }
        }
        let value = record::encode(key, &meta, shape, inline);
        let mut set = redis::cmd("SET");
        set.arg(keys.meta())
            .arg(&value)
            .arg("PX")
            .arg(ttl)
            .arg("GET");
        let previous = match session.query::<Option<Vec<u8>>>(&set).await {
            Ok(previous) => previous,
            Err(error) if is_wrong_type(&error) => {
                // Garbage of another type under the record key: SET ... GET refuses
                // to replace it.
                self.remove_garbage(session, key, keys, None, "not a string")
                    .await;
                let mut set = redis::cmd("SET");
                set.arg(keys.meta()).arg(&value).arg("PX").arg(ttl);
                session
                    .query::<()>(&set)
                    .await
                    .map_err(|error| failed(&format!("writing the record of {key}"), error))?;
                None
            }
            Err(error) => {
                let _ = delete_keys(session, &chunks).await;
                return Err(failed(&format!("writing the record of {key}"), error));
            }
        };
        let without_body = record::without_inline(&value, inline);
        self.decoded
            .remember(key, format::fingerprint(without_body), meta);
        if let Some(previous) = previous
            && let Ok(old) = record::parse(&previous)
            && old.generation != shape.generation
        {
            let old: Vec<String> = keys
                .chunks(old.generation, old.body().chunk_count())
                .collect();
            if let Err(error) = delete_keys(session, &old).await {
                tracing::debug!(key, %error, "could not remove the replaced body; it will expire");
            }
        }
        Ok(())
    }

    /// The keys of the store matching `pattern`, a page at a time, from every master.
    fn scan(
        self: &Arc<Self>,
        pattern: String,
    ) -> impl Stream<Item = Result<Vec<Vec<u8>>, StoreError>> + Send + 'static {
        struct Position {
            nodes: Option<Vec<Node>>,
            node: usize,
            cursor: u64,
        }
        let shared = Arc::clone(self);
        let start = Position {
            nodes: None,
            node: 0,
            cursor: 0,
        };
        futures_util::stream::try_unfold(start, move |mut at| {
            let shared = Arc::clone(&shared);
            let pattern = pattern.clone();
            async move {
                let mut session = shared.link.session().await?;
                loop {
                    let nodes = match &at.nodes {
                        Some(nodes) => nodes,
                        None => {
                            let nodes = session
                                .nodes()
                                .await
                                .map_err(|error| failed("listing the cluster's masters", error))?;
                            at.nodes.insert(nodes)
                        }
                    };
                    let Some(node) = nodes.get(at.node) else {
                        return Ok(None);
                    };
                    let (next, keys) = session
                        .scan(node, at.cursor, &pattern)
                        .await
                        .map_err(|error| failed("scanning the cache's keys", error))?;
                    if next == 0 {
                        at.node += 1;
                    }
                    at.cursor = next;
                    if !keys.is_empty() {
                        return Ok(Some((keys, at)));
                    }
                }
            }
        })
    }

    /// The records of the store, a page at a time: (record key, value).
    fn records(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send + 'static {
        let shared = Arc::clone(self);
        self.scan(self.keys.meta_pattern()).and_then(move |page| {
            let shared = Arc::clone(&shared);
            async move {
                let mut session = shared.link.session().await?;
                let mut records = Vec::with_capacity(page.len());
                // A record may hold its body (up to 64 KiB): a page is read a few
                // records at a time, so that no reply is more than a few MiB.
                for batch in page.chunks(RECORDS_PER_READ) {
                    let mut mget = redis::cmd("MGET");
                    mget.arg(batch);
                    // MGET answers nil for a value of another type.
                    let values: Vec<Option<Vec<u8>>> = session
                        .query(&mget)
                        .await
                        .map_err(|error| failed("reading records", error))?;
                    records.extend(batch.iter().zip(values).filter_map(|(key, value)| {
                        Some((String::from_utf8(key.clone()).ok()?, value?))
                    }));
                }
                Ok(records)
            }
        })
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let shared = &self.shared;
        let mut session = shared.link.session().await?;
        let keys = shared.keys.entry(key);
        let Some(value) = shared.fetch_record(&mut session, key, &keys).await? else {
            return Ok(None);
        };
        let (record, meta) = match shared.read_record(key, &value) {
            Ok(read) => read,
            Err(why) => {
                shared
                    .remove_garbage(&mut session, key, &keys, Some(&value), &why)
                    .await;
                return Ok(None);
            }
        };
        let shape = record.body();
        if shape.len == 0 {
            return Ok(Some(Entry::new(meta, Body::empty())));
        }
        if shape.is_inline() {
            // The body is the end of the record: shared with it, not copied.
            let inline = record.inline_body();
            return Ok(Some(Entry::new(
                meta,
                Body::Bytes(Bytes::from(value).slice(inline)),
            )));
        }
        let reading = Reading {
            key: key.to_owned(),
            keys,
            shape,
            guard: record.guard().to_vec(),
        };
        drop(session);
        let first = match body::fetch(shared, &reading, 0).await? {
            Fetched::Chunk(first) => first,
            Fetched::Broken(problem) => {
                tracing::debug!(key, problem, "the first chunk is not readable; a miss");
                return Ok(None);
            }
        };
        let body = if shape.chunk_count() == 1 {
            Body::Bytes(first)
        } else {
            Body::Stream(body::stream(Arc::clone(shared), reading, first))
        };
        Ok(Some(Entry::new(meta, body)))
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut session = shared.link.session().await?;
        let started = Instant::now();
        let keys = shared.keys.entry(key);
        let mut writer =
            ChunkWriter::new(&mut session, &keys, key, random_u64(), shared.chunk_size);
        let (shape, inline) = match shared.write_body(&mut writer, body).await {
            Ok(written) => written,
            Err(error) => {
                writer.discard().await;
                return Err(error);
            }
        };
        shared
            .commit(&mut session, key, &keys, meta, shape, &inline, started)
            .await
    }

    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let mut session = shared.link.session().await?;
        let keys = shared.keys.entry(key);
        let Some(value) = shared.fetch_record(&mut session, key, &keys).await? else {
            return Ok(false);
        };
        let record = match shared.read_record(key, &value) {
            Ok((record, _)) => record,
            Err(why) => {
                shared
                    .remove_garbage(&mut session, key, &keys, Some(&value), &why)
                    .await;
                return Ok(false);
            }
        };
        if record.kind != Kind::Response || record.body_id != policy.body_id() {
            return Ok(false);
        }
        let shape = record.body();
        let meta = Meta::Response(policy);
        let inline = &value[record.inline_body()];
        let updated = record::encode(key, &meta, shape, inline);
        let ttl = Shared::ttl_ms(shared.lifetime(&meta), Instant::now());
        let mut invocation = UPDATE.prepare_invoke();
        invocation.key(keys.meta());
        for chunk in keys.chunks(shape.generation, shape.chunk_count()) {
            invocation.key(chunk);
        }
        invocation.arg(record.guard()).arg(&updated).arg(ttl);
        let outcome: i64 = session
            .script(&invocation)
            .await
            .map_err(|error| failed(&format!("updating the record of {key}"), error))?;
        match outcome {
            1 => {
                let without_body = record::without_inline(&updated, inline);
                shared
                    .decoded
                    .remember(key, format::fingerprint(without_body), meta);
                Ok(true)
            }
            -1 => {
                tracing::debug!(
                    key,
                    "a chunk of the entry is gone; removing it instead of updating it"
                );
                shared
                    .remove_if_unchanged(&mut session, key, &keys, shape, record.guard())
                    .await;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut session = shared.link.session().await?;
        let keys = shared.keys.entry(key);
        shared.decoded.forget(key);
        // A write may replace the entry between the read and the removal: read again.
        for _ in 0..3 {
            let Some(value) = shared.fetch_record(&mut session, key, &keys).await? else {
                return Ok(());
            };
            let Ok(record) = record::parse(&value) else {
                shared
                    .remove_garbage(&mut session, key, &keys, Some(&value), "not a record")
                    .await;
                return Ok(());
            };
            if shared
                .remove_if_unchanged(&mut session, key, &keys, record.body(), record.guard())
                .await
            {
                return Ok(());
            }
        }
        // Still changing: remove the record, whatever it is (its chunks expire).
        session
            .query::<()>(redis::cmd("DEL").arg(keys.meta()))
            .await
            .map_err(|error| failed(&format!("deleting the record of {key}"), error))
    }

    fn entries(&self) -> EntryStream<'_> {
        let entries = self.shared.records().map_ok(|page| {
            let infos: Vec<Result<EntryInfo, StoreError>> = page
                .iter()
                .filter_map(|(_, value)| {
                    let record = record::parse(value).ok()?;
                    (record.kind == Kind::Response).then(|| {
                        Ok(EntryInfo::new(
                            record.key.to_owned(),
                            record.body_len,
                            record.stored_at,
                        ))
                    })
                })
                .collect();
            futures_util::stream::iter(infos)
        });
        Box::pin(entries.try_flatten())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let shared = &self.shared;
        let mut records = std::pin::pin!(shared.records());
        let mut removed = 0;
        while let Some(page) = records.try_next().await? {
            let mut session = shared.link.session().await?;
            for (record_key, value) in &page {
                let Ok(record) = record::parse(value) else {
                    continue;
                };
                if !record.key.starts_with(prefix) {
                    continue;
                }
                let Some(keys) = shared.keys.entry_of_meta_key(record_key) else {
                    continue;
                };
                if shared
                    .remove_if_unchanged(
                        &mut session,
                        record.key,
                        &keys,
                        record.body(),
                        record.guard(),
                    )
                    .await
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut pages = std::pin::pin!(shared.scan(shared.keys.everything_pattern()));
        while let Some(page) = pages.try_next().await? {
            let mut session = shared.link.session().await?;
            for batch in page.chunks(BATCH) {
                let mut del = redis::cmd("DEL");
                del.arg(batch);
                session.query::<()>(&del).await.map_err(|error| {
                    failed(
                        &format!("clearing the keys under {:?}", shared.keys.prefix()),
                        error,
                    )
                })?;
            }
        }
        shared.decoded.clear();
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.shared.link.close(self.shared.close_grace).await;
        self.shared.decoded.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Exchange, PolicyOptions};
    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use redis::Commands;
    use testbed::redis::RedisServer;

    /// A policy for a response received at 1000 with an ETag and this
    /// Cache-Control (the module's unit tests share it).
    pub(super) fn policy(cache_control: &'static str) -> Arc<CachePolicy> {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static(cache_control));
        headers.insert("etag", HeaderValue::from_static("\"1\""));
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

    fn cache_control(meta: &Meta) -> String {
        match meta {
            Meta::Response(policy) => policy.headers()["cache-control"]
                .to_str()
                .unwrap()
                .to_owned(),
            Meta::Variants(_) => panic!("a response"),
        }
    }

    #[tokio::test]
    async fn a_hit_decodes_the_metadata_once_per_version_of_the_record() {
        let server = RedisServer::start().unwrap();
        let writer = RedisCache::new(server.url()).await.unwrap();
        let reader = RedisCache::new(server.url()).await.unwrap();
        let stored = policy("max-age=60");
        writer
            .put(
                "k",
                Meta::Response(Arc::clone(&stored)),
                Body::Bytes(Bytes::from_static(b"x")),
            )
            .await
            .unwrap();
        let entry = reader.get("k").await.unwrap().unwrap();
        assert_eq!(cache_control(&entry.meta), "max-age=60");

        // What the reader decoded is what its next hits use: a planted stand-in
        // under the same fingerprint is served, so nothing was decoded again.
        let record: Vec<u8> = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap()
            .get(writer.shared.keys.entry("k").meta())
            .unwrap();
        let planted = Meta::Response(Arc::new(
            (*policy("max-age=1")).clone().with_body_of(&stored),
        ));
        reader.shared.decoded.remember(
            "k",
            format::fingerprint(record::parse(&record).unwrap().without_body()),
            planted,
        );
        for _ in 0..3 {
            let entry = reader.get("k").await.unwrap().unwrap();
            assert_eq!(cache_control(&entry.meta), "max-age=1");
        }

        // A new version of the record (a 304 freshened it) is decoded, once.
        let freshened = Arc::new((*policy("max-age=600")).clone().with_body_of(&stored));
        assert!(writer.update("k", freshened).await.unwrap());
        let entry = reader.get("k").await.unwrap().unwrap();
        assert_eq!(cache_control(&entry.meta), "max-age=600");

        // And the writer remembers what it wrote: its own hits decode nothing.
        let record: Vec<u8> = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap()
            .get(writer.shared.keys.entry("k").meta())
            .unwrap();
        let known = writer
            .shared
            .decoded
            .get_or_decode(
                "k",
                format::fingerprint(record::parse(&record).unwrap().without_body()),
                || panic!("the writer had to decode its own record"),
            )
            .unwrap();
        assert_eq!(cache_control(&known.unwrap()), "max-age=600");
    }
}
