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
use std::task::Poll;

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
    /// The body in a file: coming out of a store, a snapshot of the entry (a writer
    /// that replaces the entry publishes a new file; this one does not change), which
    /// a reader can copy or reflink without reading it through memory; going in, a
    /// file the store copies (and, for a [guarded](FileBody::guarded) one, commits
    /// only if the file did not change while it was copied).
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
pub struct FileBody {
    file: std::fs::File,
    len: u64,
    /// The whole body, when the store read it already: streaming it then needs no
    /// trip to the blocking pool.
    contents: Option<Bytes>,
    /// For a file that others may write to: whether it still holds what it held.
    guard: Option<Guard>,
}

/// Tells whether a guarded file still holds what it held when it was handed over.
type Guard = Arc<dyn Fn(&std::fs::File) -> bool + Send + Sync>;

/// How much of a file body is read at a time when it is streamed: one trip to the
/// blocking pool each, so not too little; one chunk in memory per reader, so not too
/// much.
const FILE_CHUNK: usize = 256 * 1024;

/// A stored body up to this size is read with its lookup
/// ([`FileBody::with_contents`]); a larger one is more likely to be copied from its
/// file than read.
pub(crate) const SMALL_FILE_BODY: usize = 64 * 1024;

impl fmt::Debug for FileBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBody")
            .field("file", &self.file)
            .field("len", &self.len)
            .field("read", &self.contents.is_some())
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

impl FileBody {
    /// A body of `len` bytes, from the start of `file`.
    pub fn new(file: std::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            len,
            contents: None,
            guard: None,
        }
    }

    /// A body of `len` bytes, from the start of a file that something else may
    /// still write to (a copy handed to a job, say), for a store to keep:
    /// `unchanged` tells, once the store has read or copied the whole file, whether
    /// the file still holds what it held when it was handed over (for example by
    /// comparing its change time, size and inode with what they were). If it does
    /// not, the store commits nothing and the put fails with
    /// [`StoreError::Changed`]. Every store of this crate asks; a store of your own
    /// that copies a file body must call [`FileBody::is_unchanged`] after copying
    /// and before committing, and [`FileBody::into_stream`] asks at the stream's end.
    ///
    /// ```
    /// use std::os::unix::fs::MetadataExt;
    /// use cachecontrol::store::FileBody;
    ///
    /// # fn main() -> std::io::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// # std::fs::write(dir.path().join("body"), b"hello")?;
    /// let file = std::fs::File::open(dir.path().join("body"))?;
    /// let before = file.metadata()?;
    /// let body = FileBody::guarded(file, 5, move |file| {
    ///     file.metadata().is_ok_and(|now| {
    ///         (now.ino(), now.len(), now.ctime(), now.ctime_nsec())
    ///             == (before.ino(), before.len(), before.ctime(), before.ctime_nsec())
    ///     })
    /// });
    /// assert!(body.is_unchanged());
    /// # Ok(()) }
    /// ```
    pub fn guarded(
        file: std::fs::File,
        len: u64,
        unchanged: impl Fn(&std::fs::File) -> bool + Send + Sync + 'static,
    ) -> FileBody {
        FileBody {
            file,
            len,
            contents: None,
            guard: Some(Arc::new(unchanged)),
        }
    }

    /// Whether the file still holds what it held when it was handed over: always
    /// for a body that is not [guarded](FileBody::guarded) (a stored body's file,
    /// which writers of its store do not change).
    pub fn is_unchanged(&self) -> bool {
        self.guard.as_ref().is_none_or(|guard| guard(&self.file))
    }

    /// A body whose bytes have been read already (`contents` is the whole file,
    /// read without moving its position): a small body found in a blocking task is
    /// read there, so that serving it needs no second task.
    pub(crate) fn with_contents(file: std::fs::File, contents: Bytes) -> FileBody {
        FileBody {
            file,
            len: contents.len() as u64,
            contents: Some(contents),
            guard: None,
        }
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

    /// The whole body, read in chunks. For a [guarded](FileBody::guarded) body, the
    /// stream ends with [`StoreError::Changed`] instead of its end when the file
    /// changed before the last chunk was read.
    pub fn into_stream(mut self) -> BodyStream {
        use futures_util::StreamExt;
        let len = self.len;
        let Some(guard) = self.guard.take() else {
            return self.range_stream(0, len);
        };
        let file = match self.file.try_clone() {
            Ok(file) => file,
            Err(source) => {
                let error = StoreError::Io {
                    context: "opening a file body again".to_owned(),
                    source,
                };
                return Box::pin(futures_util::stream::iter([Err(error)]));
            }
        };
        let file = Arc::new(file);
        // Asked in a blocking task: it looks at the file.
        let ask = move |guard: Guard, file: Arc<std::fs::File>| async move {
            tokio::task::spawn_blocking(move || guard(&file))
                .await
                .unwrap_or(false)
        };
        let (on_error, file_on_error) = (Arc::clone(&guard), Arc::clone(&file));
        // A file cut short (or failing) while it is read may have been changed.
        let body = self.range_stream(0, len).then(move |item| {
            let (guard, file) = (Arc::clone(&on_error), Arc::clone(&file_on_error));
            async move {
                let Err(error) = item else { return item };
                if ask(guard, file).await {
                    Err(error)
                } else {
                    Err(StoreError::Changed)
                }
            }
        });
        let check = futures_util::stream::once(async move {
            (!ask(guard, file).await).then_some(Err(StoreError::Changed))
        })
        .filter_map(std::future::ready);
        Box::pin(body.chain(check))
    }

    /// `len` bytes from `start`, read in chunks.
    ///
    /// Each chunk is read in one blocking task (seek, when needed, and read
    /// together), and the stream ends when `len` bytes have been read, without
    /// asking the file for its end: a small body costs one trip to the blocking
    /// pool, not the three or more of an async file's seek, read and end-of-file
    /// read. A file shorter than `len` is an error, not a short body.
    pub fn range_stream(self, start: u64, len: u64) -> BodyStream {
        use futures_util::TryStreamExt;
        if let Some(contents) = self.contents {
            let from = start.min(self.len) as usize;
            let to = start.saturating_add(len).min(self.len) as usize;
            let chunk = (to > from).then(|| Ok(contents.slice(from..to)));
            return Box::pin(futures_util::stream::iter(chunk));
        }
        let end = start.saturating_add(len);
        let first = (self.file, start, true);
        let stream = futures_util::stream::try_unfold(first, move |(file, at, seek)| async move {
            if at >= end {
                return Ok(None);
            }
            let want = (end - at).min(FILE_CHUNK as u64) as usize;
            let (file, chunk) =
                tokio::task::spawn_blocking(move || read_chunk(file, at, want, seek))
                    .await
                    .map_err(std::io::Error::other)??;
            Ok(Some((chunk, (file, at + want as u64, false))))
        })
        .map_err(|source| StoreError::Io {
            context: "reading a stored body".to_owned(),
            source,
        });
        Box::pin(stream)
    }
}

/// Reads `len` bytes at `at` (seeking there first when `seek`), and hands the file
/// back for the next chunk.
fn read_chunk(
    mut file: std::fs::File,
    at: u64,
    len: usize,
    seek: bool,
) -> std::io::Result<(std::fs::File, Bytes)> {
    use std::io::{Read, Seek};
    if seek {
        file.seek(std::io::SeekFrom::Start(at))?;
    }
    let mut chunk = vec![0; len];
    file.read_exact(&mut chunk)?;
    Ok((file, Bytes::from(chunk)))
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
    /// A [guarded](FileBody::guarded) file body changed while it was being stored;
    /// the entry was not committed.
    #[error("the file of the body changed while it was being stored, so it was not stored")]
    Changed,
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

    /// What [`get`](Cache::get) would return, if the store can tell without waiting
    /// for anything (a store in memory); `Poll::Pending` otherwise, and by default.
    ///
    /// The middleware asks this first, so that a fresh hit from such a store is
    /// served without making a future for the request. A store that implements it
    /// must answer exactly as `get` would, and must not block: no file or network
    /// I/O, no lock held by anything that waits.
    fn get_now(&self, key: &str) -> Poll<Result<Option<Entry>, StoreError>> {
        let _ = key;
        Poll::Pending
    }

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

    fn get_now(&self, key: &str) -> Poll<Result<Option<Entry>, StoreError>> {
        (**self).get_now(key)
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
