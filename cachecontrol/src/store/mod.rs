//! Where responses are kept: the [`Cache`] trait and its implementations.
//!
//! A store maps keys to entries. An entry is small metadata (a [`CachePolicy`], or the
//! marker that says a URL has variants) and a body. Stores know nothing of HTTP
//! semantics: the middleware decides what to store and when an entry may be used;
//! stores keep entries safe and hand them back.
//!
//! Bodies travel as streams so that a store can write a large body as it arrives and
//! read it back without holding it whole in memory. A body stream that ends with an
//! error must not be committed: that is how an interrupted download, a body whose
//! length does not match its Content-Length, or a caller who dropped the response
//! early leaves no entry behind.

#[cfg(unix)]
pub mod file;
pub mod format;
pub mod memory;
pub mod redis;
pub mod tiered;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use http::HeaderName;

use crate::policy::CachePolicy;

pub use self::redis::{RedisCache, RedisCacheBuilder};
#[cfg(unix)]
pub use file::{FileCache, FileCacheBuilder};
pub use memory::MemoryCache;
pub use tiered::Tiered;

/// A stream of body chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// The body of an entry, as it goes into or comes out of a store.
pub enum Body {
    /// The whole body, in memory. Cloning [`Bytes`] shares it without copying.
    Bytes(Bytes),
    /// The body as a stream of chunks. When writing, a chunk that is an error means
    /// "do not commit this entry".
    Stream(BodyStream),
    /// The body in a file the store has opened: a snapshot of the entry (a writer
    /// that replaces the entry publishes a new file; this one does not change), which
    /// a reader can copy or reflink without reading it through memory.
    File(FileBody),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Bytes(Bytes::new())
    }

    /// The body as a stream, whatever its form.
    pub fn into_stream(self) -> BodyStream {
        match self {
            Body::Bytes(bytes) => Box::pin(futures_util::stream::iter(
                (!bytes.is_empty()).then_some(Ok(bytes)),
            )),
            Body::Stream(stream) => stream,
            Body::File(file) => file.into_stream(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(bytes) => write!(f, "Body::Bytes({} bytes)", bytes.len()),
            Body::Stream(_) => f.write_str("Body::Stream"),
            Body::File(file) => write!(f, "Body::File({} bytes)", file.len),
        }
    }
}

/// A body in an open file; see [`Body::File`].
#[derive(Debug)]
pub struct FileBody {
    file: std::fs::File,
    len: u64,
}

/// How much of a file body is read at a time when it is streamed.
const FILE_CHUNK: usize = 64 * 1024;

impl FileBody {
    /// A body of `len` bytes, from the start of `file`.
    pub fn new(file: std::fs::File, len: u64) -> FileBody {
        FileBody { file, len }
    }

    /// The open file: copy it with `copy_file_range`, or reflink it, from here.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body, read in chunks.
    pub fn into_stream(self) -> BodyStream {
        let len = self.len;
        self.range_stream(0, len)
    }

    /// `len` bytes from `start`, read in chunks.
    pub fn range_stream(self, start: u64, len: u64) -> BodyStream {
        use futures_util::TryStreamExt;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let file = tokio::fs::File::from_std(self.file);
        let stream = futures_util::stream::once(async move {
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(start)).await?;
            Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
                file.take(len),
                FILE_CHUNK,
            ))
        })
        .try_flatten()
        .map_err(|source| StoreError::Io {
            context: "reading a stored body".to_owned(),
            source,
        });
        Box::pin(stream)
    }
}

/// One stored response, as [`Cache::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// Its key: the URL without its fragment, preceded by the cache's partition when
    /// it has one, followed by ` vary:...` for one variant of a URL; for a method
    /// other than GET, the method and a digest of the request body are in it too.
    pub key: String,
    /// The size of its body, in bytes.
    pub size: u64,
    /// When the response was received, in seconds since the Unix epoch.
    pub stored_at: u64,
}

impl EntryInfo {
    /// An entry's description.
    pub fn new(key: String, size: u64, stored_at: u64) -> EntryInfo {
        EntryInfo {
            key,
            size,
            stored_at,
        }
    }

    /// How long it has been stored, at `now` (seconds since the Unix epoch).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at)
    }
}

/// A stream of stored entries.
pub type EntryStream<'a> = Pin<Box<dyn Stream<Item = Result<EntryInfo, StoreError>> + Send + 'a>>;

/// The marker stored under a URL whose responses vary on request headers
/// (RFC 9111 §4.1). Each variant is stored under its own key, derived from the URL,
/// the request's values of `names` and `nonce`.
///
/// The nonce changes whenever the marker is created anew, so that variants stored
/// before an invalidation can never be found again, even when the same variant is
/// requested later: they are orphans, and the store's eviction or expiry removes
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variants {
    /// The Vary'd request header names, lower-case.
    pub names: Vec<HeaderName>,
    /// A random number picked when the marker was created.
    pub nonce: u64,
}

/// What an entry's metadata says.
#[derive(Debug, Clone)]
pub enum Meta {
    /// A stored response: its policy (status, headers, what decisions need).
    Response(Arc<CachePolicy>),
    /// The URL has variants, each stored under its own key.
    Variants(Arc<Variants>),
}

/// An entry read from a store.
///
/// Stores build it with [`Entry::new`]; more fields may come, so it cannot be
/// built or matched field by field outside this crate.
#[derive(Debug)]
#[non_exhaustive]
pub struct Entry {
    /// Its metadata.
    pub meta: Meta,
    /// Its body (empty for a [`Meta::Variants`] marker).
    pub body: Body,
    /// Whether a [`Tiered`] store found it in its far store (the shared tier) rather
    /// than in its near one. `false` for every other store.
    pub from_far: bool,
}

impl Entry {
    /// An entry with this metadata and body.
    pub fn new(meta: Meta, body: Body) -> Entry {
        Entry {
            meta,
            body,
            from_far: false,
        }
    }
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store was closed; it answers nothing any more.
    #[error("the cache store is closed")]
    Closed,
    /// The body stream was cut short or failed; the entry was not committed.
    #[error("the body of {key} was incomplete, so it was not stored")]
    Incomplete {
        /// The entry's key.
        key: String,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The storage backend failed.
    #[error("cache backend error: {0}")]
    Backend(String),
}

/// A place to keep cache entries. Object-safe: the middleware holds an
/// `Arc<dyn Cache>`.
///
/// Implementations must be safe to share between tasks and threads; concurrent
/// `put`s to one key may finish in any order, but a reader must always see one
/// whole entry, never a mix of two.
#[async_trait]
pub trait Cache: Send + Sync + fmt::Debug + 'static {
    /// The entry under `key`, if any. An entry that cannot be read back (corrupt,
    /// unknown format) is a miss, and should be removed.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Stores an entry under `key`, replacing what was there once the body has been
    /// read to its end. If the body stream yields an error, nothing is stored and the
    /// previous entry stays.
    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError>;

    /// Replaces the policy of the response stored under `key`, keeping its body (a 304
    /// freshened it). Does nothing and returns `false` when the stored entry is not a
    /// response with the same [`CachePolicy::body_id`].
    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError>;

    /// Removes the entry under `key`, if any.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Lists the stored responses (not the variants markers), in no particular order.
    fn entries(&self) -> EntryStream<'_>;

    /// Removes every entry whose key starts with `prefix` (a URL's variants start
    /// with the URL's key); returns how many were removed.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Removes every entry.
    async fn clear(&self) -> Result<(), StoreError>;

    /// Flushes what is pending and releases resources. Afterwards every operation
    /// returns [`StoreError::Closed`] at once.
    async fn close(&self) -> Result<(), StoreError>;
}

/// A shared store is a store: `CacheControl::builder(Arc::clone(&store))` keeps a
/// handle on it, and one store can serve several caches.
#[async_trait]
impl<C: Cache + ?Sized> Cache for Arc<C> {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key).await
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        (**self).put(key, meta, body).await
    }

    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        (**self).update(key, policy).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key).await
    }

    fn entries(&self) -> EntryStream<'_> {
        (**self).entries()
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        (**self).delete_prefix(prefix).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        (**self).clear().await
    }

    async fn close(&self) -> Result<(), StoreError> {
        (**self).close().await
    }
}
