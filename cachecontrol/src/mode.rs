//! Per-request cache modes, and how each response was served.

use std::fmt;

use futures_util::FutureExt;
use futures_util::future::Shared;
use http::HeaderValue;
use tokio::sync::oneshot;

/// How the cache treats one request, as in the Fetch standard's `cache` option.
///
/// Set it on a request through reqwest-middleware's extensions:
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> reqwest_middleware::Result<()> {
/// use cachecontrol::CacheMode;
/// let response = client
///     .get("https://example.com/data.json")
///     .with_extension(CacheMode::NoCache)
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheMode {
    /// HTTP caching as RFC 9111 says: fresh stored responses are served, stale ones
    /// revalidated, new ones stored.
    #[default]
    Default,
    /// Bypass the cache entirely: neither read nor write.
    NoStore,
    /// Go to the network without looking in the cache, and store the response.
    Reload,
    /// Always revalidate a stored response with the origin (conditionally when it
    /// has a validator), even when fresh; store the result.
    NoCache,
    /// Serve any stored response, fresh or stale, without revalidation; go to the
    /// network only when nothing is stored.
    ForceCache,
    /// Serve any stored response, fresh or stale; never go to the network. When
    /// nothing is stored, answer `504 Gateway Timeout`.
    OnlyIfCached,
}

/// How a response was served. Found in the response's extensions, and in its
/// `x-cache` header unless that is switched off.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> reqwest_middleware::Result<()> {
/// use cachecontrol::CacheStatus;
/// let response = client.get("https://example.com/").send().await?;
/// if response.extensions().get::<CacheStatus>() == Some(&CacheStatus::Hit) {
///     println!("no network needed");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Served from the cache, without contacting the origin.
    Hit,
    /// Served from the origin (nothing usable was stored); stored if it could be.
    Miss,
    /// A stored response, revalidated with the origin (it answered 304).
    Revalidated,
    /// A stale stored response: allowed by `max-stale`, served while revalidating in
    /// the background (`stale-while-revalidate`), or because the origin failed
    /// (`stale-if-error`).
    Stale,
    /// The cache was not involved: an unsafe method that is not cacheable, a
    /// precondition meant for the origin (`If-Match`, `If-Unmodified-Since`,
    /// `If-Range`), a request body that cannot be keyed, or [`CacheMode::NoStore`].
    Bypass,
}

impl CacheStatus {
    /// The header value: `HIT`, `MISS`, `REVALIDATED`, `STALE` or `BYPASS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the body of a response served from the cache comes from: a response
/// extension on a whole response (`200` and the like, not a `206` or a `304`) whose
/// body is the stored one (`HIT`, `STALE`, `REVALIDATED`), when the store hands the
/// body out as a file or the entry came from a far tier (absent otherwise: a
/// [`MemoryCache`](crate::MemoryCache) hit has nothing to say here).
///
/// With a [`FileCache`](crate::FileCache) the stored body is a file, handed out here
/// so that it can be copied by the kernel (`copy_file_range`, a reflink) instead of
/// being read through the response:
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), Box<dyn std::error::Error>> {
/// use cachecontrol::FromCache;
/// let response = client.get("https://example.com/big.tar").send().await?;
/// if let Some(stored) = response.extensions().get::<FromCache>().and_then(|from| from.file.clone()) {
///     // Copy stored.file() (stored.len() bytes, from offset 0) with positioned I/O,
///     // and drop the response without reading its body.
///     drop(response);
///     let _ = (stored.file(), stored.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FromCache {
    /// The stored body as an open file, when the store keeps bodies in files.
    pub file: Option<StoredFile>,
    /// Whether the entry came from the far store of a [`Tiered`](crate::store::Tiered)
    /// store (the shared tier) rather than from its near one.
    pub from_far: bool,
}

/// A stored body's file: a snapshot, which writers of the store do not change.
///
/// It shares its file offset with the response's body, which reads it from the
/// start: use positioned I/O (`copy_file_range` with offsets, `read_at`, a reflink)
/// or do not read the response's body.
#[derive(Debug, Clone)]
pub struct StoredFile {
    file: std::sync::Arc<std::fs::File>,
    len: u64,
}

impl StoredFile {
    pub(crate) fn new(file: std::fs::File, len: u64) -> StoredFile {
        StoredFile {
            file: std::sync::Arc::new(file),
            len,
        }
    }

    /// The open file.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// The body's length: the file's first `len` bytes are the body.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A request extension: reading the response's body to its end does not wait for
/// the store to commit the entry recorded from it.
///
/// By default a caller that reads a response being stored gets the body's end only
/// once the entry is committed (or the [store
/// timeout](crate::CacheControlBuilder::store_timeout) has passed), so that a request
/// made right after finds it in the cache. For a large body on a
/// [`FileCache`](crate::FileCache), committing includes syncing the body to disk:
/// a caller that has its own copy of the body and does not need the entry at once
/// (the fetcher, which writes the body where it is used) can skip that wait, and
/// learn when the entry is stored from the response's [`Recording`]:
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), Box<dyn std::error::Error>> {
/// use cachecontrol::{Recording, StoreInBackground};
/// let response = client
///     .get("https://example.com/big.tar")
///     .with_extension(StoreInBackground)
///     .send()
///     .await?;
/// let recording = response.extensions().get::<Recording>().cloned();
/// let body = response.bytes().await?; // does not wait for the store
/// if let Some(recording) = recording {
///     let stored = recording.stored().await; // the store is done with the entry
///     # let _ = (body, stored);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StoreInBackground;

/// A request extension: the caller writes the response's body to a file of its
/// own and hands that file over for the store to copy, rather than the cache
/// recording the body as it streams.
///
/// A response that may be stored then comes with a [`PendingStore`] in its
/// extensions (and a [`Recording`], which tells when the store is done); its body is
/// the origin's, untouched, so that reading it costs what it costs without a cache.
/// Once the file holds the whole body, [`PendingStore::store`] hands it over; the
/// store copies it (with `copy_file_range`, a reflink where the file system has
/// them, for a [`FileCache`](crate::FileCache)) in the background. Dropping the
/// `PendingStore` stores nothing. Concurrent requests for the URL are not held
/// back waiting for this one (the body reaches the cache only when handed over).
/// Redirects are recorded as usual (the middleware reads their bodies itself when
/// it [follows them](crate::CacheControlBuilder::follow_redirects)).
///
/// The file may be handed over [guarded](crate::store::FileBody::guarded): a
/// file given to someone who may write to it is only stored if it did not change
/// while the store copied it. This is how the fetcher leaves a job its file at the
/// speed of a plain download, while the cache keeps a copy nothing the job does can
/// change.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// use cachecontrol::store::FileBody;
/// use cachecontrol::{PendingStore, Recording, StoreFromFile};
///
/// let mut response = client
///     .get("https://example.com/big.tar")
///     .with_extension(StoreFromFile::new())
///     .send()
///     .await?;
/// let pending = response.extensions().get::<PendingStore>().cloned();
/// let recording = response.extensions().get::<Recording>().cloned();
/// let mut file = std::fs::File::options()
///     .read(true)
///     .write(true)
///     .create(true)
///     .truncate(true)
///     .open("big.tar")?;
/// let mut len = 0;
/// while let Some(chunk) = response.chunk().await? {
///     file.write_all(&chunk)?;
///     len += chunk.len() as u64;
/// }
/// if let Some(pending) = pending {
///     pending.store(FileBody::new(file, len));
/// }
/// if let Some(recording) = recording {
///     let stored = recording.stored().await; // the store is done with it
///     # let _ = stored;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StoreFromFile {
    min_len: u64,
}

impl StoreFromFile {
    /// For a body of any length.
    pub const fn new() -> StoreFromFile {
        StoreFromFile { min_len: 0 }
    }

    /// Only for a body of at least `min_len` bytes, or of a length the response does
    /// not announce; a shorter one is recorded as usual (with no [`PendingStore`]):
    /// for a small body, writing it twice costs little, and the store has it
    /// before the caller's file is anyone else's.
    pub const fn at_least(min_len: u64) -> StoreFromFile {
        StoreFromFile { min_len }
    }

    /// Whether a body of this announced length is handed over in a file.
    pub(crate) fn applies_to(&self, announced: Option<u64>) -> bool {
        announced.is_none_or(|len| len >= self.min_len)
    }
}

/// A response extension on a response to a [`StoreFromFile`] request that may be
/// stored: hands the file holding its body to the store.
///
/// Clones share it: the first [`store`](PendingStore::store) takes it; once every
/// clone is dropped without storing, the response is not stored (its
/// [`Recording`] says `false`).
#[derive(Clone)]
pub struct PendingStore {
    sender: std::sync::Arc<parking_lot::Mutex<Option<oneshot::Sender<crate::store::FileBody>>>>,
}

impl fmt::Debug for PendingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingStore")
            .field("handed_over", &self.sender.lock().is_none())
            .finish()
    }
}

impl PendingStore {
    pub(crate) fn new(sender: oneshot::Sender<crate::store::FileBody>) -> PendingStore {
        PendingStore {
            sender: std::sync::Arc::new(parking_lot::Mutex::new(Some(sender))),
        }
    }

    /// Hands the file holding the whole body (its first `len` bytes, from the
    /// start) to the store, which copies it in the background; the response's
    /// [`Recording`] tells when that is done and whether it was stored (a body of
    /// another length than announced is not). `false` when the body was handed
    /// over already (or the runtime the cache's task ran on is gone).
    pub fn store(&self, body: crate::store::FileBody) -> bool {
        match self.sender.lock().take() {
            Some(sender) => sender.send(body).is_ok(),
            None => false,
        }
    }
}

/// A response extension on a response whose body is being recorded into the store
/// (a [`CacheStatus::Miss`], or a new response to a revalidation, that may be
/// stored): tells when the store is done with it.
#[derive(Debug, Clone)]
pub struct Recording {
    done: Shared<oneshot::Receiver<bool>>,
}

impl Recording {
    pub(crate) fn new(done: oneshot::Receiver<bool>) -> Recording {
        Recording {
            done: done.shared(),
        }
    }

    /// Waits until the store is done with the entry: `true` when it was committed,
    /// `false` when it was not (the body was not read to its end or was not as long
    /// as announced, the store failed or was too slow, the URL was invalidated
    /// meanwhile). The body must be read for this to resolve: dropping the response
    /// unread ends the recording (`false`).
    pub async fn stored(&self) -> bool {
        self.done.clone().await.unwrap_or(false)
    }

    /// The same signal, for the recording body to wait on.
    pub(crate) fn signal(&self) -> Shared<oneshot::Receiver<bool>> {
        self.done.clone()
    }
}
