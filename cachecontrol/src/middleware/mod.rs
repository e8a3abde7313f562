//! [`CacheControl`]: the middleware that puts the policy and a store together.

mod coalesce;
mod keys;
mod range;
mod record;
mod redirect;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use parking_lot::Mutex;
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::clock::{Clock, SystemClock, unix_seconds};
use crate::heuristics::Heuristic;
use crate::mode::{CacheMode, CacheStatus};
use crate::policy::{
    CachePolicy, Exchange, PolicyOptions, Precondition, RequestDirectives, Reuse, VaryKey,
};
use crate::store::{Body, Cache, Entry, Meta, StoreError, Variants};
use coalesce::{FlightGuard, Flights, Join};
use keys::{cache_key, variant_key};
use record::{CHANNEL_CAPACITY, RecordingBody, receiver_stream};

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
#[derive(Debug, Clone)]
pub struct CacheControl {
    shared: Arc<Shared>,
}

/// Configures a [`CacheControl`]; see [`CacheControl::builder`].
#[derive(Debug)]
pub struct CacheControlBuilder {
    store: Arc<dyn Cache>,
    settings: Settings,
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
    /// with a wait of at most 30 seconds.
    pub fn builder(store: impl Cache) -> CacheControlBuilder {
        CacheControlBuilder::from_arc(Arc::new(store))
    }

    /// Starts configuring a cache over a store that is already shared, for example
    /// one you keep a handle on to inspect or to share between clients.
    pub fn builder_arc(store: Arc<dyn Cache>) -> CacheControlBuilder {
        CacheControlBuilder::from_arc(store)
    }

    /// The store this cache uses.
    pub fn store(&self) -> &Arc<dyn Cache> {
        &self.shared.store
    }

    /// Closes the store: pending writes are flushed and connections released. After
    /// it, requests go straight to the network.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.shared.store.close().await
    }
}

impl CacheControlBuilder {
    fn from_arc(store: Arc<dyn Cache>) -> CacheControlBuilder {
        CacheControlBuilder {
            store,
            settings: Settings {
                policy: PolicyOptions::default(),
                cacheable_methods: vec![Method::GET],
                status_header: true,
                follow_redirects: 0,
                coalesce_wait: Duration::from_secs(30),
                clock: Arc::new(SystemClock),
            },
            background_client: None,
        }
    }

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

    /// The methods whose responses are stored. GET by default. For other methods the
    /// request body is part of the key, a body that is a stream is never cached, and
    /// a response needs an explicit lifetime to be stored.
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

    /// How long a request waits for a concurrent request of the same URL to bring
    /// the response, before going to the origin itself (30 seconds by default).
    /// `Duration::ZERO` turns coalescing off.
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.settings.coalesce_wait = wait;
        self
    }

    /// The client for background revalidations (`stale-while-revalidate`). They run
    /// after the response has been served, so they cannot use the middleware chain;
    /// by default a plain client that does not follow redirects.
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
                background,
                flights: Flights::default(),
                revalidating: Mutex::new(HashSet::new()),
                warned_client_redirects: AtomicBool::new(false),
            }),
        }
    }
}

#[async_trait]
impl Middleware for CacheControl {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if self.shared.settings.follow_redirects == 0 {
            self.shared.handle_one(request, extensions, next).await
        } else {
            redirect::follow(&self.shared, request, extensions, next).await
        }
    }
}

/// What every clone of a [`CacheControl`] shares.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn Cache>,
    settings: Settings,
    background: OnceLock<Option<reqwest::Client>>,
    flights: Flights,
    /// Storage keys with a background revalidation under way.
    revalidating: Mutex<HashSet<String>>,
    warned_client_redirects: AtomicBool,
}

/// A stored response found for a request.
#[derive(Debug)]
struct Stored {
    /// Where it is stored: the URL's key, or its variant's.
    key: String,
    policy: Arc<CachePolicy>,
    body: Body,
}

/// What the policy needs of a request once it has been sent.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    url: Url,
    headers: HeaderMap,
    time: u64,
}

impl Sent {
    fn of(request: &Request, time: u64) -> Sent {
        Sent {
            method: request.method().clone(),
            url: request.url().clone(),
            headers: request.headers().clone(),
            time,
        }
    }
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

/// The outcome of a 304 for a stored response.
enum Freshened {
    /// The entry was freshened; serve it with this policy.
    Stored(Arc<CachePolicy>),
    /// The 304 is about this response, but the result may not be stored: serve it
    /// once with these headers.
    Unstorable(HeaderMap),
    /// The 304 is about another response.
    Mismatch,
}

impl Shared {
    fn now(&self) -> u64 {
        unix_seconds(self.settings.clock.now())
    }

    async fn handle_one(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mode = extensions.get::<CacheMode>().copied().unwrap_or_default();
        let method = request.method();
        if !is_safe(method) && !self.settings.cacheable_methods.contains(method) {
            return self.forward_unsafe(request, extensions, next).await;
        }
        let cacheable = method == Method::HEAD || self.settings.cacheable_methods.contains(method);
        let key = cacheable.then(|| cache_key(&request)).flatten();
        let Some(key) =
            key.filter(|_| mode != CacheMode::NoStore && !bypasses_cache(request.headers()))
        else {
            let response = next.run(request, extensions).await?;
            return Ok(self.mark(response, CacheStatus::Bypass));
        };

        let directives = RequestDirectives::from_headers(request.headers());
        let stored = if mode == CacheMode::Reload {
            None
        } else {
            self.lookup(&key, request.headers()).await
        };
        let now = self.now();
        if let Some(stored) = stored {
            let reuse = match mode {
                CacheMode::ForceCache | CacheMode::OnlyIfCached if stored.policy.is_fresh(now) => {
                    Reuse::Fresh
                }
                CacheMode::ForceCache | CacheMode::OnlyIfCached => Reuse::StaleAllowed,
                CacheMode::NoCache => Reuse::Revalidate,
                _ => stored.policy.reuse(&directives, now),
            };
            let status = match reuse {
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
                    return self
                        .revalidate(request, extensions, next, key, stored)
                        .await;
                }
            };
            return Ok(self.serve(Asked::from(&request), stored, status, false, now));
        }
        if mode == CacheMode::OnlyIfCached || directives.only_if_cached {
            return Ok(self.gateway_timeout(&request));
        }
        self.fetch(request, extensions, next, key).await
    }

    /// Finds the stored response that may answer a request with these headers:
    /// through the variants marker when the URL has one, and only if its Vary'd
    /// fields and credentials match.
    async fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Stored> {
        let entry = self.store_get(key).await?;
        let (key, entry) = match &entry.meta {
            Meta::Response(_) => (key.to_owned(), entry),
            Meta::Variants(variants) => {
                let values = VaryKey::new(variants.names.clone(), request);
                let variant = variant_key(key, variants.nonce, &values);
                let entry = self.store_get(&variant).await?;
                (variant, entry)
            }
        };
        let Meta::Response(policy) = entry.meta else {
            return None;
        };
        policy.matches_request(request).then_some(Stored {
            key,
            policy,
            body: entry.body,
        })
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
        let body = stored.body;
        self.mark(
            build_response(asked.url, policy.status(), headers, into_reqwest_body(body)),
            status,
        )
    }

    /// Asks the origin about a stored response that may not be reused as it is.
    async fn revalidate(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        key: String,
        stored: Stored,
    ) -> reqwest_middleware::Result<Response> {
        let conditional = self.settings.policy.cache_etags && stored.policy.has_validator();
        let replay = request.try_clone();
        let sent = Sent::of(&request, self.now());
        let mut upstream = request;
        if conditional {
            // The client's own validators are evaluated here, against the stored
            // response, once it is known to be current.
            make_conditional(upstream.headers_mut(), &stored.policy);
        }
        let result = next.clone().run(upstream, &mut *extensions).await;
        let now = self.now();
        let response = match result {
            Err(error) if stored.policy.serves_stale_on_error(now) => {
                tracing::warn!(url = %sent.url, %error, "origin failed; serving stale (stale-if-error)");
                return Ok(self.serve(Asked::from(&sent), stored, CacheStatus::Stale, false, now));
            }
            Err(error) => return Err(error),
            Ok(response) => response,
        };
        if response.status() == StatusCode::NOT_MODIFIED && conditional {
            match self
                .freshen(&stored.key, &stored.policy, &sent, response.headers(), now)
                .await
            {
                Freshened::Stored(policy) => {
                    let stored = Stored { policy, ..stored };
                    return Ok(self.serve(
                        Asked::from(&sent),
                        stored,
                        CacheStatus::Revalidated,
                        true,
                        now,
                    ));
                }
                Freshened::Unstorable(headers) => {
                    let status = stored.policy.status();
                    let body = if sent.method == Method::HEAD {
                        empty_body()
                    } else {
                        into_reqwest_body(stored.body)
                    };
                    return Ok(self.mark(
                        build_response(&sent.url, status, headers, body),
                        CacheStatus::Revalidated,
                    ));
                }
                Freshened::Mismatch => {
                    // Not about what we have: ask again, without conditions.
                    if let Some(replay) = replay {
                        drop(response);
                        return self.fetch(replay, extensions, next, key).await;
                    }
                    return Ok(self.mark(response, CacheStatus::Miss));
                }
            }
        }
        if response.status().is_server_error() && stored.policy.serves_stale_on_error(now) {
            tracing::warn!(url = %sent.url, status = %response.status(), "origin failed; serving stale (stale-if-error)");
            return Ok(self.serve(Asked::from(&sent), stored, CacheStatus::Stale, false, now));
        }
        Ok(self.store_response(&sent, response, key, now, None).await)
    }

    /// Applies a 304 to a stored response (RFC 9111 §4.3.4).
    async fn freshen(
        &self,
        key: &str,
        stored: &CachePolicy,
        sent: &Sent,
        not_modified: &HeaderMap,
        now: u64,
    ) -> Freshened {
        if !stored.validated_by(not_modified) {
            return Freshened::Mismatch;
        }
        let headers = stored.freshened_headers(not_modified);
        let exchange = Exchange {
            method: &Method::GET,
            request_headers: &sent.headers,
            status: stored.status(),
            response_headers: &headers,
            request_time: sent.time,
            response_time: now,
        };
        match CachePolicy::new(&exchange, &self.settings.policy) {
            Ok(policy) => {
                let policy = Arc::new(policy.with_body_of(stored));
                match self.store.update(key, Arc::clone(&policy)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(key, "entry replaced meanwhile; not freshened"),
                    Err(error) => log_store_error("update", key, &error),
                }
                Freshened::Stored(policy)
            }
            Err(reason) => {
                tracing::debug!(key, %reason, "freshened response may not be stored; removed");
                self.store_delete(key).await;
                let mut headers = headers;
                headers.insert(header::AGE, HeaderValue::from(0));
                Freshened::Unstorable(headers)
            }
        }
    }

    /// Fetches a response the cache does not have, coalescing concurrent misses.
    async fn fetch(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        key: String,
    ) -> reqwest_middleware::Result<Response> {
        let mut guard = None;
        if self.settings.coalesce_wait > Duration::ZERO && coalescable(&request) {
            match self.flights.join(&key) {
                Join::Leader(leader) => guard = Some(leader),
                Join::Follower(waiter) => {
                    waiter.wait(self.settings.coalesce_wait).await;
                    let now = self.now();
                    let directives = RequestDirectives::from_headers(request.headers());
                    if let Some(stored) = self.lookup(&key, request.headers()).await
                        && stored.policy.reuse(&directives, now) == Reuse::Fresh
                    {
                        return Ok(self.serve(
                            Asked::from(&request),
                            stored,
                            CacheStatus::Hit,
                            false,
                            now,
                        ));
                    }
                }
            }
        }
        let sent = Sent::of(&request, self.now());
        let response = next.run(request, extensions).await?;
        let now = self.now();
        Ok(self.store_response(&sent, response, key, now, guard).await)
    }

    /// Stores a full response from the origin when the policy allows, recording its
    /// body as it streams to the caller.
    async fn store_response(
        &self,
        sent: &Sent,
        response: Response,
        key: String,
        now: u64,
        guard: Option<FlightGuard>,
    ) -> Response {
        let mut key = key;
        let mut headers_sent = &sent.headers;
        let without_credentials;
        if !same_resource(response.url(), &sent.url) {
            // reqwest followed a redirect inside the client: this response is not
            // for the URL that was asked, but for the one it ended at.
            self.warn_client_redirects(&sent.url, response.url());
            if sent.method != Method::GET {
                return self.mark(response, CacheStatus::Miss);
            }
            key = keys::url_key(response.url());
            if !same_origin(response.url(), &sent.url) {
                // reqwest does not forward credentials to another origin.
                let mut headers = sent.headers.clone();
                headers.remove(header::AUTHORIZATION);
                without_credentials = headers;
                headers_sent = &without_credentials;
            }
        }
        if sent.method == Method::HEAD {
            self.update_from_head(&key, headers_sent, &response, sent.time, now)
                .await;
            return self.mark(response, CacheStatus::Miss);
        }
        let exchange = Exchange {
            method: &sent.method,
            request_headers: headers_sent,
            status: response.status(),
            response_headers: response.headers(),
            request_time: sent.time,
            response_time: now,
        };
        let policy = match CachePolicy::new(&exchange, &self.settings.policy) {
            Ok(policy) => policy,
            Err(reason) => {
                tracing::debug!(url = %response.url(), %reason, "response not stored");
                return self.mark(response, CacheStatus::Miss);
            }
        };
        let key = match policy.vary() {
            Some(vary) => self.variant_storage_key(&key, vary).await,
            None => key,
        };
        let response = self.record(response, key, policy, guard);
        self.mark(response, CacheStatus::Miss)
    }

    /// The key a variant is stored under, creating the URL's variants marker when it
    /// has none for these field names.
    async fn variant_storage_key(&self, key: &str, vary: &VaryKey) -> String {
        let existing = match self.store_get(key).await {
            Some(Entry {
                meta: Meta::Variants(variants),
                ..
            }) if variants.names == vary.names() => Some(variants.nonce),
            _ => None,
        };
        let nonce = match existing {
            Some(nonce) => nonce,
            None => {
                let variants = Variants {
                    names: vary.names().to_vec(),
                    nonce: keys::random_u64(),
                };
                let nonce = variants.nonce;
                if let Err(error) = self
                    .store
                    .put(key, Meta::Variants(Arc::new(variants)), Body::empty())
                    .await
                {
                    log_store_error("put", key, &error);
                }
                nonce
            }
        };
        variant_key(key, nonce, vary)
    }

    /// Tees the response body into the store.
    fn record(
        &self,
        response: Response,
        key: String,
        policy: CachePolicy,
        guard: Option<FlightGuard>,
    ) -> Response {
        let expected_len = policy
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let url = response.url().clone();
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let (stored, stored_signal) = oneshot::channel();
        let store = Arc::clone(&self.store);
        let key: Arc<str> = key.into();
        let meta = Meta::Response(Arc::new(policy));
        tokio::spawn(async move {
            let _guard = guard;
            let body = Body::Stream(receiver_stream(receiver, Arc::clone(&key)));
            match store.put(&key, meta, body).await {
                Ok(()) => tracing::trace!(%key, "stored"),
                Err(StoreError::Incomplete { .. }) => {
                    tracing::debug!(%key, "body incomplete; not stored")
                }
                Err(error) => log_store_error("put", &key, &error),
            }
            let _ = stored.send(());
        });
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = reqwest::Body::wrap(RecordingBody::new(
            body,
            sender,
            stored_signal,
            expected_len,
        ));
        let mut rebuilt = with_url(&url).map(|()| body);
        *rebuilt.status_mut() = parts.status;
        *rebuilt.version_mut() = parts.version;
        *rebuilt.headers_mut() = parts.headers;
        rebuilt.extensions_mut().extend(parts.extensions);
        Response::from(rebuilt)
    }

    /// A HEAD response updates the stored GET response when it matches it, and
    /// invalidates it otherwise (RFC 9111 §4.3.5).
    async fn update_from_head(
        &self,
        key: &str,
        request_headers: &HeaderMap,
        response: &Response,
        request_time: u64,
        now: u64,
    ) {
        if response.status() != StatusCode::OK {
            return;
        }
        let Some(stored) = self.lookup(key, request_headers).await else {
            return;
        };
        if !stored.policy.updatable_by_head(response.headers()) {
            self.store_delete(&stored.key).await;
            return;
        }
        let sent = Sent {
            method: Method::HEAD,
            url: response.url().clone(),
            headers: request_headers.clone(),
            time: request_time,
        };
        let _ = self
            .freshen(&stored.key, &stored.policy, &sent, response.headers(), now)
            .await;
    }

    /// Serves stale now and revalidates in the background, at most one revalidation
    /// per entry at a time.
    fn revalidate_in_background(self: &Arc<Self>, request: &Request, stored: &Stored) {
        if !self.revalidating.lock().insert(stored.key.clone()) {
            return;
        }
        let shared = Arc::clone(self);
        let storage_key = stored.key.clone();
        let policy = Arc::clone(&stored.policy);
        let Some(mut upstream) = request.try_clone() else {
            self.revalidating.lock().remove(&storage_key);
            return;
        };
        *upstream.method_mut() = Method::GET;
        make_conditional(upstream.headers_mut(), &policy);
        tokio::spawn(async move {
            shared
                .background_revalidation(upstream, storage_key.clone(), policy)
                .await;
            shared.revalidating.lock().remove(&storage_key);
        });
    }

    async fn background_revalidation(
        &self,
        request: Request,
        storage_key: String,
        policy: Arc<CachePolicy>,
    ) {
        let client = self.background.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|error| tracing::warn!(%error, "no client for background revalidation"))
                .ok()
        });
        let Some(client) = client else { return };
        let Some(key) = cache_key(&request) else {
            return;
        };
        let sent = Sent::of(&request, self.now());
        let response = match client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(url = %sent.url, %error, "background revalidation failed");
                return;
            }
        };
        let now = self.now();
        if response.status() == StatusCode::NOT_MODIFIED {
            let _ = self
                .freshen(&storage_key, &policy, &sent, response.headers(), now)
                .await;
            return;
        }
        if response.status().is_server_error() {
            return;
        }
        // A new response: store it, reading the body so that it gets committed.
        let response = self.store_response(&sent, response, key, now, None).await;
        if let Err(error) = response.bytes().await {
            tracing::debug!(url = %sent.url, %error, "background revalidation body failed");
        }
    }

    /// Forwards a request with an unsafe method; a non-error response invalidates
    /// the URL, and its same-origin Location and Content-Location (RFC 9111 §4.4).
    async fn forward_unsafe(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let url = request.url().clone();
        let response = next.run(request, extensions).await?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            self.store_delete(&keys::url_key(&url)).await;
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let target = response
                    .headers()
                    .get(&name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| url.join(v).ok());
                if let Some(target) = target
                    && same_origin(&target, &url)
                {
                    self.store_delete(&keys::url_key(&target)).await;
                }
            }
        }
        Ok(self.mark(response, CacheStatus::Bypass))
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

    fn warn_client_redirects(&self, asked: &Url, got: &Url) {
        if !self.warned_client_redirects.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %asked,
                %got,
                "the reqwest client followed a redirect, so the cache saw only the final response and \
                 stored it under its own URL; to cache each hop, build the client with \
                 .redirect(reqwest::redirect::Policy::none()) and CacheControl with .follow_redirects(10)"
            );
        }
    }

    async fn store_get(&self, key: &str) -> Option<Entry> {
        match self.store.get(key).await {
            Ok(entry) => entry,
            Err(error) => {
                log_store_error("get", key, &error);
                None
            }
        }
    }

    async fn store_delete(&self, key: &str) {
        if let Err(error) = self.store.delete(key).await {
            log_store_error("delete", key, &error);
        }
    }
}

fn log_store_error(operation: &str, key: &str, error: &StoreError) {
    match error {
        StoreError::Closed => {
            tracing::debug!(operation, key, "cache store closed; using the network")
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

/// Replaces the request's own validators with those of the stored response.
fn make_conditional(headers: &mut HeaderMap, policy: &CachePolicy) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    for (name, value) in policy.conditional_headers() {
        headers.insert(name, value);
    }
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

fn into_reqwest_body(body: Body) -> reqwest::Body {
    match body {
        Body::Bytes(bytes) => reqwest::Body::from(bytes),
        Body::Stream(stream) => reqwest::Body::wrap_stream(stream),
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
