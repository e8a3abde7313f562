//! RFC 9111 HTTP caching for [reqwest], as a [reqwest-middleware] middleware.
//!
//! ```no_run
//! use cachecontrol::{CacheControl, CacheStatus, MemoryCache};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(CacheControl::new(MemoryCache::new(64 << 20)))
//!     .build();
//!
//! let first = client.get("https://example.com/data.json").send().await?;
//! let body = first.bytes().await?; // the body is stored as it is read
//! let second = client.get("https://example.com/data.json").send().await?;
//! if second.extensions().get::<CacheStatus>() == Some(&CacheStatus::Hit) {
//!     // served from memory: no request went out
//! }
//! # Ok(()) }
//! ```
//!
//! # Flow
//!
//! An HTTP cache keeps responses so that the next request for the same thing need
//! not go to the origin server. The origin says how long a response stays *fresh*
//! (`Cache-Control: max-age=3600`, or an `Expires` date); while it is fresh, the cache
//! answers on its own. When it has gone *stale*, the cache does not throw it away if it
//! has a *validator* (an `ETag`, a `Last-Modified` date): it asks the origin "has this
//! changed?" with a conditional request (`If-None-Match`, `If-Modified-Since`), and
//! the origin answers `304 Not Modified` with no body when it has not. The stored body
//! is then served again, with its headers refreshed. For a large artifact this is the
//! difference between moving gigabytes and moving a few hundred bytes.
//!
//! For each request, [`CacheControl`]:
//!
//! 1. looks up the stored response for the URL (and, when the response varied on
//!    request headers, for this request's values of them);
//! 2. asks the [policy](policy::CachePolicy) whether it may be reused: fresh → served
//!    at once ([`CacheStatus::Hit`]); stale but acceptable → served
//!    ([`CacheStatus::Stale`]), and, within a `stale-while-revalidate` window,
//!    revalidated in the background; otherwise → revalidated with the origin, a 304
//!    merged into the stored response ([`CacheStatus::Revalidated`]);
//! 3. on a miss, sends the request, and if the response may be stored, streams its
//!    body to the caller while recording it; the entry is committed only when the
//!    body is complete and as long as announced ([`CacheStatus::Miss`]). The caller
//!    gets the body's end once the entry is committed, so that the next request finds
//!    it; or at once with [`StoreInBackground`], the response's [`Recording`] then
//!    telling when it is stored; or, with [`StoreFromFile`], not recorded at all:
//!    the caller writes the body to a file of its own and hands the file over
//!    ([`PendingStore`]), which the store copies. Concurrent misses for one URL wait for the first
//!    one's response when it will be stored fresh, and are served from it (unless
//!    its body is handed over in a file: they then go to the origin).
//!
//! Unsafe methods (POST, PUT, DELETE, ...) go straight through and, when they succeed,
//! invalidate what is stored for their URL. Per-request modes ([`CacheMode`]) let a
//! caller bypass, reload, revalidate or insist on the cache. Every response says how
//! it was served: a [`CacheStatus`] in its extensions, and an `x-cache` header.
//!
//! # Scope
//!
//! A private cache by default, like the CacheControl library for Python this comes
//! from: one user's client. `.shared(true)` makes it a shared cache (a proxy, or a
//! service serving many users), which honours `s-maxage`, `proxy-revalidate`,
//! `private` and the rules for authenticated requests, and optionally a targeted field
//! such as `CDN-Cache-Control` (RFC 9213). Partial responses (206) are not stored, but
//! a single byte range is served from a stored complete response.
//!
//! Not done on purpose: combining partial responses; the `Warning` header of RFC
//! 7234 (obsolete in RFC 9111) except where a heuristic asks for it.
//!
//! # Security
//!
//! Keys are whole URLs, so one origin's responses are never stored under another's;
//! redirects are cached under their own URL; invalidation through `Location` and
//! `Content-Location` only reaches the same origin. A response to a request with
//! `Authorization` is only ever served to a request with the same credentials (in a
//! shared cache, unless the origin marked it `public`, `s-maxage` or
//! `must-revalidate`). Only a digest of the credentials is kept.
//!
//! The middleware sees the request as it is when it reaches the middleware: a
//! client's default headers and cookie store are added by reqwest afterwards. Put
//! credentials on the requests, or give each user's client its own
//! [`partition`](CacheControlBuilder::partition) of a shared store.
//!
//! # The hit path
//!
//! Whether a stored response may be reused is decided from numbers computed once,
//! when it was stored: its freshness lifetime, its corrected initial age, a few
//! flags. Serving a fresh hit from [`MemoryCache`] parses no stored header and
//! decodes nothing: it reads the clock, compares two numbers, clones a header map and
//! shares the body ([`bytes::Bytes`], no copy). For a GET it allocates no cache key
//! either (the key is borrowed from the request's URL). A store that can answer
//! without waiting says so ([`Cache::get_now`]; the memory store does, and a tiered
//! store for a hit in its near tier): such a hit is decided and served before any
//! future is made for the request.
//!
//! # Stores
//!
//! [`Cache`] is the store trait: async, object-safe, streaming bodies in and out,
//! inspection (`entries`, `delete_prefix`, `clear`), and `close()`. The stores:
//!
//! - [`MemoryCache`]: in memory, bounded by bytes, least recently used out;
//! - [`FileCache`]: metadata and body in files under a directory, published atomically,
//!   safe across threads and processes, bodies handed out as open files (zero-copy);
//! - [`RedisCache`]: Redis or Redis Cluster, bodies in chunks, a TTL on every key;
//! - [`store::Tiered`]: a near store in front of a far one, such as a `FileCache` in
//!   front of a `RedisCache` shared by a cluster's nodes.
//!
//! Persistent stores write metadata in a versioned, checksummed format
//! ([`store::format`]); an entry that cannot be read back is a miss and is removed. A
//! store failure (down, slow, full, corrupt) never fails a request: it is logged and
//! the network is used.
//!
//! # Reading
//!
//! - [RFC 9111](https://www.rfc-editor.org/rfc/rfc9111), HTTP Caching, which every
//!   rule in [`policy`] cites by section.
//! - [RFC 5861](https://www.rfc-editor.org/rfc/rfc5861): `stale-while-revalidate`,
//!   `stale-if-error`. [RFC 8246](https://www.rfc-editor.org/rfc/rfc8246):
//!   `immutable`. [RFC 9213](https://www.rfc-editor.org/rfc/rfc9213): targeted fields.
//! - [cache-tests.fyi](https://cache-tests.fyi), how real caches behave.
//!
//! [reqwest]: https://docs.rs/reqwest
//! [reqwest-middleware]: https://docs.rs/reqwest-middleware

pub mod clock;
pub mod error;
pub mod heuristics;
mod middleware;
mod mode;
pub mod policy;
pub mod store;

pub use error::Error;
pub use middleware::{CacheControl, CacheControlBuilder, X_CACHE};
pub use mode::{
    CacheMode, CacheStatus, FromCache, PendingStore, Recording, StoreFromFile, StoreInBackground,
    StoredFile,
};
pub use store::{Cache, MemoryCache, RedisCache, RedisCacheBuilder, StoreError};
#[cfg(unix)]
pub use store::{FileCache, FileCacheBuilder};
