//! Per-request cache modes, and how each response was served.

use std::fmt;

use http::HeaderValue;

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
