//! [`CacheControl`]: the middleware that puts the policy and a store together.
//!
//! `mod.rs` takes a request and decides: bypass, serve what is stored, revalidate it
//! (`revalidate.rs`), or fetch and store (`fill.rs`); unsafe methods invalidate
//! (`invalidate.rs`). The pieces under it: keys, the recording body, coalescing,
//! ranges, redirects.

mod coalesce;
mod fill;
mod invalidate;
mod keys;
mod range;
mod record;
mod redirect;
mod revalidate;

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Extensions, HeaderMap, Method, StatusCode};
use parking_lot::Mutex;
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};
use url::Url;

use crate::clock::{Clock, SystemClock, unix_seconds};
use crate::heuristics::Heuristic;
use crate::mode::{
    CacheMode, CacheStatus, FromCache, StoreFromFile, StoreInBackground, StoredFile,
};
use crate::policy::{CachePolicy, PolicyOptions, Precondition, RequestDirectives, Reuse, VaryKey};
use crate::store::{Body, Cache, Entry, Meta, StoreError, Variants};
use coalesce::{Flights, Join};
use invalidate::Invalidations;
use keys::{Keys, variant_key};

/// The header that says how a response was served.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// RFC 9111 HTTP caching for reqwest, as a reqwest-middleware middleware.
///
/// Add it to a client with `.with(...)`. It serves fresh stored responses without
/// touching the network, revalidates stale ones, stores what may be stored, and says
/// on every response how it was served ([`CacheStatus`], and the `x-cache` header).
///
/// ```
/// use cachecontrol::{CacheControl, MemoryCache};
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(CacheControl::new(MemoryCache::new(64 << 20)))
///     .build();
/// # drop(client);
/// ```
///
/// Cloning is cheap; clones share the store and the bookkeeping.
///
/// # What the middleware cannot see
///
/// reqwest adds a client's default headers (`ClientBuilder::default_headers`) and its
/// cookie store's cookies after the middleware has run. A response to a request whose
/// `Authorization` comes from default headers looks unauthenticated to the cache: in a
/// shared cache it may be stored and served to others, and clients that share one
/// store would share their users' responses. Set credentials on each request, or give
/// each such client its own [`partition`](CacheControlBuilder::partition).
#[derive(Debug, Clone)]
pub struct CacheControl {
    shared: Arc<Shared>,
}

/// Configures a [`CacheControl`]; see [`CacheControl::builder`].
#[derive(Debug)]
pub struct CacheControlBuilder {
    store: Arc<dyn Cache>,
    settings: Settings,
    partition: Option<String>,
    background_client: Option<reqwest::Client>,
}

/// What a [`CacheControlBuilder`] sets, as the middleware uses it.
#[derive(Debug)]
struct Settings {
    policy: PolicyOptions,
    cacheable_methods: Vec<Method>,
    status_header: bool,
    follow_redirects: usize,
    coalesce_wait: Duration,
    store_timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl CacheControl {
    /// A private cache over `store`, with the defaults of [`CacheControl::builder`].
    pub fn new(store: impl Cache) -> CacheControl {
        CacheControl::builder(store).build()
    }

    /// Starts configuring a cache over `store`. The defaults: a private cache
    /// (`shared(false)`), the [`LastModified`](crate::heuristics::LastModified)
    /// heuristic, GET as the only cacheable method, `cache_etags(true)`, the
    /// `x-cache` header on, redirects left to the client, concurrent misses coalesced
    /// (a wait of at most 30 seconds), a store timeout of 5 seconds.
    ///
    /// To keep a handle on the store (to inspect it, or to share it between
    /// clients), pass an `Arc`: `CacheControl::builder(Arc::clone(&store))`.
    pub fn builder(store: impl Cache) -> CacheControlBuilder {
        CacheControlBuilder {
            store: Arc::new(store),
            settings: Settings {
                policy: PolicyOptions::default(),
                cacheable_methods: vec![Method::GET],
                status_header: true,
                follow_redirects: 0,
                coalesce_wait: Duration::from_secs(30),
                store_timeout: Duration::from_secs(5),
                clock: Arc::new(SystemClock),
            },
            partition: None,
            background_client: None,
        }
    }

    /// The store this cache uses.
    pub fn store(&self) -> &Arc<dyn Cache> {
        &self.shared.store
    }

    /// Forgets what is stored for `url` (every variant of it), as a successful
    /// unsafe request to it would (RFC 9111 §4.4): for a caller that found the stored
    /// response wrong, for example a body whose checksum is not the expected one.
    /// A response to `url` being recorded at the same time is not stored. Store
    /// errors are logged, not returned, as everywhere in the middleware.
    pub async fn invalidate(&self, url: &Url) {
        self.shared.invalidate(url).await;
    }

    /// Closes the store ([`Cache::close`]). After it, requests go straight to the
    /// network. Responses still being recorded are not stored.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.shared.cache().close().await
    }
}

impl CacheControlBuilder {
    /// A shared cache (`true`: a proxy, or a client serving many users) or a private
    /// one (`false`, the default). A shared cache honours `s-maxage`,
    /// `proxy-revalidate` and `private`, and keeps answers to authenticated requests
    /// only when the origin allows it.
    pub fn shared(mut self, shared: bool) -> Self {
        self.settings.policy.shared = shared;
        self
    }

    /// The heuristic that gives a lifetime to responses that do not state one.
    pub fn heuristic(mut self, heuristic: impl Heuristic) -> Self {
        self.settings.policy.heuristic = Arc::new(heuristic);
        self
    }

    /// The methods whose responses are stored; GET by default (HEAD is always
    /// answered from stored GET responses). For another method the request body is
    /// part of the key, a body that is a stream is never cached, and a response needs
    /// an explicit lifetime to be stored. Note that RFC 9110 §9.3.3 lets a POST
    /// response be reused only for a later GET of its Content-Location: caching POST
    /// for POST is for APIs that use POST to read (search and query endpoints). A
    /// successful unsafe method still invalidates the URL's stored GET response.
    pub fn cacheable_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.cacheable_methods = methods.into_iter().collect();
        self
    }

    /// Keep responses that have a validator (ETag, Last-Modified) after they go stale,
    /// to revalidate them (`true`, the default); or keep only fresh responses and
    /// replace them once stale (`false`).
    pub fn cache_etags(mut self, cache_etags: bool) -> Self {
        self.settings.policy.cache_etags = cache_etags;
        self
    }

    /// Whether responses carry the `x-cache` header (on by default). The
    /// [`CacheStatus`] extension is always there.
    pub fn status_header(mut self, on: bool) -> Self {
        self.settings.status_header = on;
        self
    }

    /// In a shared cache, obey this targeted cache-control field (RFC 9213) instead
    /// of Cache-Control and Expires when a response has a valid one; for example
    /// `HeaderName::from_static("cdn-cache-control")`. Off by default.
    pub fn targeted_cache_control(mut self, field: HeaderName) -> Self {
        self.settings.policy.targeted_field = Some(field);
        self
    }

    /// Follow redirects in the middleware, up to `max_hops`, so that each hop is
    /// cached under its own URL (a 301 is then served from the cache next time). Off
    /// by default (0). Use it with a client that does not follow redirects itself:
    /// `reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())`;
    /// otherwise reqwest follows them inside the client, out of the cache's sight.
    pub fn follow_redirects(mut self, max_hops: usize) -> Self {
        self.settings.follow_redirects = max_hops;
        self
    }

    /// How long a request may wait for a concurrent request of the same URL to bring
    /// the response, before going to the origin itself (30 seconds by default). Once
    /// that response has started arriving, a follower waits only while it makes
    /// progress (a few seconds without it, and the follower goes); a response that
    /// will not be stored fresh lets the followers go at once. `Duration::ZERO` turns
    /// coalescing off.
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.settings.coalesce_wait = wait;
        self
    }

    /// How long the cache waits for its store on any one operation (5 seconds by
    /// default). A store that takes longer is treated as failed: the request goes to
    /// the network, and a response being recorded is left unstored.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// Keeps this cache's entries apart from those of other caches on the same store:
    /// every key is prefixed with `partition` (a name without spaces). Use it when
    /// clients that share a store send credentials the middleware cannot see, such as
    /// a client's default headers: one partition per user.
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// The client for background revalidations (`stale-while-revalidate`). They run
    /// after the response has been served, so they cannot use the middleware chain;
    /// by default a plain client that does not follow redirects, with a one-minute
    /// timeout. Give it your client's settings (proxy, TLS roots, default headers)
    /// when the origin needs them.
    pub fn background_client(mut self, client: reqwest::Client) -> Self {
        self.background_client = Some(client);
        self
    }

    /// Where the cache reads the time (the system clock by default).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// The middleware.
    pub fn build(self) -> CacheControl {
        let background = OnceLock::new();
        if let Some(client) = self.background_client {
            let _ = background.set(Some(client));
        }
        CacheControl {
            shared: Arc::new(Shared {
                store: self.store,
                settings: self.settings,
                keys: Keys::partitioned(self.partition.as_deref()),
                background,
                flights: Flights::default(),
                revalidating: Mutex::new(HashSet::new()),
                invalidations: Invalidations::default(),
                warned_client_redirects: AtomicBool::new(false),
            }),
        }
    }
}

/// Written out rather than with `async_trait`, which would box the whole request's
/// future before anything is known: a fresh hit from a store that answers at once
/// ([`Cache::get_now`]) is decided and served here, and only its response is boxed.
impl Middleware for CacheControl {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        if let Some(response) = self.shared.hit_now(&request, extensions) {
            return Box::pin(std::future::ready(Ok(response)));
        }
        if self.shared.settings.follow_redirects == 0 {
            Box::pin(self.shared.handle_one(request, extensions, next))
        } else {
            Box::pin(redirect::follow(&self.shared, request, extensions, next))
        }
    }
}

/// What every clone of a [`CacheControl`] shares.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn Cache>,
    settings: Settings,
    keys: Keys,
    background: OnceLock<Option<reqwest::Client>>,
    flights: Flights,
    /// Storage keys with a background revalidation under way.
    revalidating: Mutex<HashSet<String>>,
    invalidations: Invalidations,
    warned_client_redirects: AtomicBool,
}

/// A stored response found for a request.
#[derive(Debug)]
struct Stored {
    /// Where it is stored: the URL's key, or its variant's.
    key: String,
    policy: Arc<CachePolicy>,
    body: Body,
    /// Found in the far store of a tiered store.
    from_far: bool,
}

/// What the policy needs of a request once it has been sent.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    url: Url,
    headers: HeaderMap,
    time: u64,
    /// The invalidation count when it was sent (see `invalidate.rs`).
    epoch: u64,
    /// The request asked not to wait for the store ([`StoreInBackground`]).
    store_in_background: bool,
    /// The caller hands the body over in a file ([`StoreFromFile`]).
    store_from_file: Option<StoreFromFile>,
}

/// The parts of a request that serving a stored response looks at.
#[derive(Clone, Copy)]
struct Asked<'a> {
    method: &'a Method,
    url: &'a Url,
    headers: &'a HeaderMap,
}

impl<'a> From<&'a Request> for Asked<'a> {
    fn from(request: &'a Request) -> Self {
        Asked {
            method: request.method(),
            url: request.url(),
            headers: request.headers(),
        }
    }
}

impl<'a> From<&'a Sent> for Asked<'a> {
    fn from(sent: &'a Sent) -> Self {
        Asked {
            method: &sent.method,
            url: &sent.url,
            headers: &sent.headers,
        }
    }
}

impl Shared {
    /// The store, called directly: a call on the `Arc` would go through the blanket
    /// `impl Cache for Arc<C>`, which boxes one more future per operation.
    fn cache(&self) -> &dyn Cache {
        &*self.store
    }

    fn now(&self) -> u64 {
        unix_seconds(self.settings.clock.now())
    }

    fn sent(&self, request: &Request, extensions: &Extensions) -> Sent {
        Sent {
            store_in_background: extensions.get::<StoreInBackground>().is_some(),
            store_from_file: extensions.get::<StoreFromFile>().copied(),
            method: request.method().clone(),
            url: request.url().clone(),
            headers: request.headers().clone(),
            time: self.now(),
            epoch: self.invalidations.epoch(),
        }
    }

    /// A request answered from the store without waiting for anything: a fresh (or
    /// accepted stale) response, found by [`Cache::get_now`], that needs no
    /// background revalidation and, when redirects are followed, is not one. `None`
    /// sends the request down the whole path, which looks again.
    fn hit_now(&self, request: &Request, extensions: &Extensions) -> Option<Response> {
        let mode = extensions.get::<CacheMode>().copied().unwrap_or_default();
        let method = request.method();
        let cacheable = *method == Method::HEAD
            || (*method == Method::GET && self.settings.cacheable_methods.contains(method));
        if !cacheable
            || matches!(mode, CacheMode::NoStore | CacheMode::Reload)
            || bypasses_cache(request.headers())
        {
            return None;
        }
        let key = self.keys.of_request(request)?;
        let stored = self.lookup_now(&key, request.headers())?;
        if self.settings.follow_redirects > 0 && stored.policy.status().is_redirection() {
            return None;
        }
        let directives = RequestDirectives::from_headers(request.headers());
        let now = self.now();
        let status = match reuse(mode, &directives, &stored.policy, now) {
            Reuse::Fresh => CacheStatus::Hit,
            Reuse::StaleAllowed => CacheStatus::Stale,
            Reuse::StaleWhileRevalidate | Reuse::Revalidate => return None,
        };
        Some(self.serve(Asked::from(request), stored, status, false, now))
    }

    async fn handle_one(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mode = extensions.get::<CacheMode>().copied().unwrap_or_default();
        let method = request.method();
        let safe = is_safe(method);
        let cacheable = method == Method::HEAD || self.settings.cacheable_methods.contains(method);
        let use_cache =
            cacheable && mode != CacheMode::NoStore && !bypasses_cache(request.headers());
        if !use_cache || self.keys.of_request(&request).is_none() {
            let url = request.url().clone();
            let response = next.run(request, extensions).await?;
            if !safe {
                Box::pin(self.invalidate_after(&url, &response)).await;
            }
            return Ok(self.mark(response, CacheStatus::Bypass));
        }
        if safe {
            return self.through_cache(request, extensions, next, mode).await;
        }
        // A cacheable unsafe method (a POST used to read): it may be answered from
        // the cache, and when it reaches the origin it still invalidates (§4.4).
        let url = request.url().clone();
        let response = self.through_cache(request, extensions, next, mode).await?;
        let from_origin = !matches!(
            response.extensions().get::<CacheStatus>(),
            Some(CacheStatus::Hit | CacheStatus::Stale)
        );
        if from_origin {
            Box::pin(self.invalidate_after(&url, &response)).await;
        }
        Ok(response)
    }

    /// Serves from the cache, revalidates, or fetches and stores.
    ///
    /// The paths that go to the network (a fetch, a revalidation, and in `handle`
    /// the redirects and invalidations) are boxed futures: `handle` moves the whole
    /// future of a request into a box, and a future is as large as its largest path.
    /// Inline, those paths made a hit from a store that must wait (a file, Redis)
    /// copy some 8 KiB per request.
    async fn through_cache(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        mode: CacheMode,
    ) -> reqwest_middleware::Result<Response> {
        let directives = RequestDirectives::from_headers(request.headers());
        let mut waited = false;
        let mut looked_again = false;
        loop {
            let key = self.keys.of_request(&request);
            let coalesce = !waited
                && mode != CacheMode::Reload
                && self.settings.coalesce_wait > Duration::ZERO
                && coalescable(&request);
            // Before the lookup: see `Flights::join`.
            let looked = match &key {
                Some(key) if coalesce && !looked_again => Some(self.flights.stamp(key)),
                _ => None,
            };
            let stored = match &key {
                Some(key) if mode != CacheMode::Reload => self.lookup(key, request.headers()).await,
                _ => None,
            };
            let now = self.now();
            if let Some(stored) = stored {
                let status = match reuse(mode, &directives, &stored.policy, now) {
                    Reuse::Fresh => CacheStatus::Hit,
                    Reuse::StaleAllowed => CacheStatus::Stale,
                    Reuse::StaleWhileRevalidate => {
                        self.revalidate_in_background(&request, &stored);
                        CacheStatus::Stale
                    }
                    Reuse::Revalidate if directives.only_if_cached => {
                        return Ok(self.gateway_timeout(&request));
                    }
                    Reuse::Revalidate => {
                        // stale-if-error is for responses that went stale, not for a
                        // revalidation the client or the response asked for.
                        let forced = mode == CacheMode::NoCache
                            || directives.no_cache
                            || directives.max_age.is_some()
                            || directives.min_fresh.is_some()
                            || stored.policy.is_fresh(now);
                        return Box::pin(
                            self.revalidate(request, extensions, next, stored, forced),
                        )
                        .await;
                    }
                };
                return Ok(self.serve(Asked::from(&request), stored, status, false, now));
            }
            if mode == CacheMode::OnlyIfCached || directives.only_if_cached {
                return Ok(self.gateway_timeout(&request));
            }
            if coalesce && let Some(key) = &key {
                match self.flights.join(key, looked) {
                    // A leader stored its response while this request looked, maybe
                    // this very entry, just after the lookup missed it: look again
                    // (once) rather than ask the origin for what is stored.
                    Join::LookAgain => {
                        looked_again = true;
                        continue;
                    }
                    Join::Leader(guard) => {
                        return Box::pin(self.fetch(request, extensions, next, Some(guard), false))
                            .await;
                    }
                    Join::Follower(waiter) => {
                        // Then look again, and go on from what is there, like any
                        // request.
                        waiter.wait(self.settings.coalesce_wait).await;
                        waited = true;
                        continue;
                    }
                }
            }
            return Box::pin(self.fetch(
                request,
                extensions,
                next,
                None,
                mode == CacheMode::Reload,
            ))
            .await;
        }
    }

    /// Finds the stored response that may answer a request with these headers:
    /// through the variants marker when the URL has one, and only if its Vary'd
    /// fields and credentials match.
    async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Stored> {
        let entry = self.store_get(key).await?;
        let (key, entry) = match &entry.meta {
            Meta::Response(_) => (key.to_owned(), entry),
            Meta::Variants(variants) => {
                let variant = variant_of(key, variants, request);
                let entry = self.store_get(&variant).await?;
                (variant, entry)
            }
        };
        found(key, entry, request)
    }

    /// [`lookup`](Shared::lookup) from a store that answers at once; `None` for a
    /// miss, an error, or a store that would have to wait.
    fn lookup_now(&self, key: &str, request: &HeaderMap) -> Option<Stored> {
        let ready = |key: &str| match self.cache().get_now(key) {
            Poll::Ready(Ok(entry)) => entry,
            Poll::Ready(Err(_)) | Poll::Pending => None,
        };
        let entry = ready(key)?;
        let (key, entry) = match &entry.meta {
            Meta::Response(_) => (key.to_owned(), entry),
            Meta::Variants(variants) => {
                let variant = variant_of(key, variants, request);
                let entry = ready(&variant)?;
                (variant, entry)
            }
        };
        found(key, entry, request)
    }

    /// Serves a stored response: a 304 when the request's own preconditions say the
    /// client's copy is current, a 206 for a satisfiable single range, else the whole
    /// response.
    fn serve(
        &self,
        asked: Asked<'_>,
        stored: Stored,
        status: CacheStatus,
        validated: bool,
        now: u64,
    ) -> Response {
        let policy = &stored.policy;
        if policy.precondition(asked.method, asked.headers, now) == Precondition::NotModified {
            let headers = policy.not_modified_headers(now);
            let response =
                build_response(asked.url, StatusCode::NOT_MODIFIED, headers, empty_body());
            return self.mark(response, status);
        }
        let headers = policy.response_headers(now, validated);
        if asked.method == Method::HEAD {
            return self.mark(
                build_response(asked.url, policy.status(), headers, empty_body()),
                status,
            );
        }
        if policy.status() == StatusCode::OK
            && let Some(range) = asked.headers.get(header::RANGE)
            && let Some(range) = range::satisfiable(range, &headers, &stored.body)
        {
            return self.mark(
                range::partial_response(asked.url, range, headers, stored.body),
                status,
            );
        }
        let from_cache = FromCache {
            file: stored_file(&stored.body),
            from_far: stored.from_far,
        };
        let mut response = build_response(
            asked.url,
            policy.status(),
            headers,
            into_reqwest_body(stored.body),
        );
        // Only when it says something: the hit path of a memory store stays free of
        // the allocation.
        if from_cache.file.is_some() || from_cache.from_far {
            response.extensions_mut().insert(from_cache);
        }
        self.mark(response, status)
    }

    fn gateway_timeout(&self, request: &Request) -> Response {
        let response = build_response(
            request.url(),
            StatusCode::GATEWAY_TIMEOUT,
            HeaderMap::new(),
            empty_body(),
        );
        self.mark(response, CacheStatus::Miss)
    }

    fn mark(&self, mut response: Response, status: CacheStatus) -> Response {
        if self.settings.status_header {
            response
                .headers_mut()
                .insert(X_CACHE, status.header_value());
        }
        response.extensions_mut().insert(status);
        response
    }

    /// Runs a store operation within the store timeout; a failure or a timeout is
    /// logged and becomes `None`: the network will be used.
    ///
    /// The operation is polled once before the timer is made: a store that answers
    /// at once (a memory store, always) needs none.
    async fn with_store<T>(
        &self,
        operation: &str,
        key: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        let mut call = std::pin::pin!(call);
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        let outcome = match first {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => tokio::time::timeout(self.settings.store_timeout, call).await,
        };
        match outcome {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                log_store_error(operation, key, &error);
                None
            }
            Err(_) => {
                tracing::warn!(
                    operation,
                    key,
                    timeout = ?self.settings.store_timeout,
                    "cache store timed out; using the network"
                );
                None
            }
        }
    }

    async fn store_get(&self, key: &str) -> Option<Entry> {
        self.with_store("get", key, self.cache().get(key))
            .await
            .flatten()
    }

    async fn store_delete(&self, key: &str) {
        self.with_store("delete", key, self.cache().delete(key))
            .await;
    }
}

/// Whether a stored response may be used as it is, in this cache mode.
fn reuse(mode: CacheMode, directives: &RequestDirectives, policy: &CachePolicy, now: u64) -> Reuse {
    match mode {
        CacheMode::ForceCache | CacheMode::OnlyIfCached if policy.is_fresh(now) => Reuse::Fresh,
        CacheMode::ForceCache | CacheMode::OnlyIfCached => Reuse::StaleAllowed,
        CacheMode::NoCache => Reuse::Revalidate,
        _ => policy.reuse(directives, now),
    }
}

/// The key of the variant of a URL that a request with these headers selects.
fn variant_of(key: &str, variants: &Variants, request: &HeaderMap) -> String {
    let values = VaryKey::new(variants.names.clone(), request);
    variant_key(key, variants.nonce, &values)
}

/// A stored response, if it may answer a request with these headers.
fn found(key: String, entry: Entry, request: &HeaderMap) -> Option<Stored> {
    let Meta::Response(policy) = entry.meta else {
        return None;
    };
    policy.matches_request(request).then_some(Stored {
        key,
        policy,
        body: entry.body,
        from_far: entry.from_far,
    })
}

fn log_store_error(operation: &str, key: &str, error: &StoreError) {
    match error {
        StoreError::Closed => {
            tracing::debug!(operation, key, "cache store closed; using the network")
        }
        StoreError::Changed => {
            tracing::debug!(
                operation,
                key,
                "the body's file changed before it was stored"
            )
        }
        error => tracing::warn!(operation, key, %error, "cache store failed; using the network"),
    }
}

/// Methods that do not change the resource (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Requests the cache leaves to the origin: preconditions meant for the origin.
fn bypasses_cache(headers: &HeaderMap) -> bool {
    headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_UNMODIFIED_SINCE)
        || headers.contains_key(header::IF_RANGE)
}

/// Whether concurrent misses of this request may be answered by one origin request.
fn coalescable(request: &Request) -> bool {
    let headers = request.headers();
    request.method() == Method::GET
        && !headers.contains_key(header::RANGE)
        && !headers.contains_key(header::IF_NONE_MATCH)
        && !headers.contains_key(header::IF_MODIFIED_SINCE)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The same URL, ignoring the fragment (which is never sent).
fn same_resource(a: &Url, b: &Url) -> bool {
    a[..url::Position::AfterQuery] == b[..url::Position::AfterQuery]
}

fn empty_body() -> reqwest::Body {
    reqwest::Body::from(Bytes::new())
}

/// A stored body's file, for [`FromCache`]: the same open file (a duplicated
/// descriptor), so nothing is opened or read.
fn stored_file(body: &Body) -> Option<StoredFile> {
    let Body::File(file) = body else {
        return None;
    };
    match file.file().try_clone() {
        Ok(clone) => Some(StoredFile::new(clone, file.len())),
        Err(error) => {
            tracing::debug!(%error, "could not duplicate a stored body's file descriptor");
            None
        }
    }
}

fn into_reqwest_body(body: Body) -> reqwest::Body {
    match body {
        Body::Bytes(bytes) => reqwest::Body::from(bytes),
        body @ (Body::Stream(_) | Body::File(_)) => reqwest::Body::wrap_stream(body.into_stream()),
    }
}

/// An `http::Response` that carries reqwest's URL extension.
fn with_url(url: &Url) -> http::Response<()> {
    http::Response::builder()
        .url(url.clone())
        .body(())
        .unwrap_or_else(|_| http::Response::new(()))
}

fn build_response(
    url: &Url,
    status: StatusCode,
    headers: HeaderMap,
    body: reqwest::Body,
) -> Response {
    let mut response = with_url(url).map(|()| body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Response::from(response)
}

/// The key of a request, owned, for the paths that keep it.
fn owned_key(keys: &Keys, request: &Request) -> Option<String> {
    keys.of_request(request).map(Cow::into_owned)
}
