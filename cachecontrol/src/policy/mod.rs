//! RFC 9111 decisions, without I/O and without reading the clock.
//!
//! A response goes through three questions in its life in the cache:
//!
//! 1. **May I store it?** [`CachePolicy::new`] answers with a policy, or with the
//!    reason it may not be stored ([`NotStorable`]). It is asked once, when the
//!    response arrives; everything later decisions need is computed then and kept in
//!    the policy: the freshness lifetime and its source, the corrected initial age,
//!    the validators, the Vary'd request values, the few directives that still matter.
//! 2. **May I reuse it for this request?** [`CachePolicy::reuse`] answers from those
//!    numbers and the request's own directives ([`RequestDirectives`]): fresh, stale
//!    but acceptable, or go ask the origin. It parses no stored header and decodes
//!    nothing: it is the hit path.
//! 3. **The origin says it has not changed (304): what now?**
//!    [`CachePolicy::validated_by`] says whether the 304 speaks of this response, and
//!    [`CachePolicy::freshened_headers`] merges its headers in (§4.3.4); a new policy is
//!    then made from the result.
//!
//! Time is passed in as whole seconds since the Unix epoch, the resolution of HTTP
//! dates, so that every rule can be tested at any instant.

pub mod date;
pub mod directives;
mod structured;
pub mod vary;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::heuristics::{HEURISTICALLY_CACHEABLE, Heuristic, HeuristicInput, LastModified};
use crate::store::format::{FormatError, Reader, Writer};
pub use date::{format_http_date, parse_http_date};
pub use directives::{Delta, FieldScope, MaxStale, RequestDirectives, ResponseDirectives};
pub use vary::{Vary, VaryKey};

/// How a cache using these rules behaves.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// A shared cache (a proxy, or a client serving many users) honours `s-maxage`,
    /// `proxy-revalidate` and `private`, and does not store answers to authenticated
    /// requests unless the origin allows it. A private cache (the default) serves one
    /// user.
    pub shared: bool,
    /// Freshness for responses that do not state their own lifetime.
    pub heuristic: Arc<dyn Heuristic>,
    /// Keep responses with a validator even when they are not fresh, to revalidate
    /// them later ("equal priority", the default). With `false`, only responses that
    /// are fresh when they arrive are stored, and a stale entry is replaced, not
    /// revalidated ("time priority").
    pub cache_etags: bool,
    /// A targeted cache-control field (RFC 9213) this cache obeys instead of
    /// Cache-Control, such as `CDN-Cache-Control`. Shared caches only.
    pub targeted_field: Option<HeaderName>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            shared: false,
            heuristic: Arc::new(LastModified::default()),
            cache_etags: true,
            targeted_field: None,
        }
    }
}

/// One request and the response it got, as the policy sees them.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The request's headers.
    pub request_headers: &'a HeaderMap,
    /// The response's status.
    pub status: StatusCode,
    /// The response's headers.
    pub response_headers: &'a HeaderMap,
    /// When the request was sent (seconds since the Unix epoch).
    pub request_time: u64,
    /// When the response was received (seconds since the Unix epoch).
    pub response_time: u64,
}

/// Why a response may not be stored (RFC 9111 §3), or would be of no use stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStorable {
    /// The request method is not one this cache stores.
    Method(Method),
    /// The status is not a complete, final response (1xx, 206, 304).
    Status(StatusCode),
    /// `must-understand` on a status this cache does not implement.
    MustUnderstand(StatusCode),
    /// `no-store` in the request.
    RequestNoStore,
    /// `no-store` in the response.
    ResponseNoStore,
    /// `private`, and this is a shared cache.
    Private,
    /// The request carried Authorization, this is a shared cache, and the response
    /// does not allow sharing it (`public`, `s-maxage` or `must-revalidate`).
    Authorization,
    /// `Vary: *` (or an unreadable Vary): no later request could be shown to match.
    VaryAny,
    /// The status is not cacheable by default and nothing in the response makes it
    /// cacheable (no `max-age`, `s-maxage`, `Expires`, `public` or `private`).
    NotCacheableByDefault(StatusCode),
    /// Not fresh and no validator: the stored response could never be reused.
    Unusable,
    /// Not fresh, and this cache keeps only fresh responses (`cache_etags(false)`).
    NotFresh,
}

impl fmt::Display for NotStorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotStorable::Method(m) => write!(f, "{m} responses are not stored"),
            NotStorable::Status(s) => write!(f, "status {s} is not a complete final response"),
            NotStorable::MustUnderstand(s) => {
                write!(f, "must-understand, and status {s} is not one this cache implements")
            }
            NotStorable::RequestNoStore => f.write_str("the request says no-store"),
            NotStorable::ResponseNoStore => f.write_str("the response says no-store"),
            NotStorable::Private => f.write_str("the response is private and this cache is shared"),
            NotStorable::Authorization => f.write_str(
                "the request was authenticated and the response does not say public, s-maxage or must-revalidate",
            ),
            NotStorable::VaryAny => f.write_str("the response says Vary: *"),
            NotStorable::NotCacheableByDefault(s) => write!(
                f,
                "status {s} is not cacheable by default and the response gives no lifetime"
            ),
            NotStorable::Unusable => f.write_str(
                "the response is stale on arrival and has no validator (ETag, Last-Modified)",
            ),
            NotStorable::NotFresh => {
                f.write_str("the response is not fresh and this cache keeps only fresh responses")
            }
        }
    }
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifetimeSource {
    /// `s-maxage` (shared caches).
    SMaxAge,
    /// `max-age`.
    MaxAge,
    /// `Expires` minus `Date`.
    Expires,
    /// The configured heuristic.
    Heuristic,
    /// The response's lifetime directives are invalid or conflict: it is stale.
    Invalid,
    /// Nothing: the response is stale as soon as it arrives.
    None,
}

impl LifetimeSource {
    fn code(self) -> u8 {
        match self {
            LifetimeSource::SMaxAge => 1,
            LifetimeSource::MaxAge => 2,
            LifetimeSource::Expires => 3,
            LifetimeSource::Heuristic => 4,
            LifetimeSource::Invalid => 5,
            LifetimeSource::None => 6,
        }
    }

    fn from_code(code: u8) -> Option<LifetimeSource> {
        Some(match code {
            1 => LifetimeSource::SMaxAge,
            2 => LifetimeSource::MaxAge,
            3 => LifetimeSource::Expires,
            4 => LifetimeSource::Heuristic,
            5 => LifetimeSource::Invalid,
            6 => LifetimeSource::None,
            _ => return None,
        })
    }
}

/// How long a response stays fresh, and why (RFC 9111 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessLifetime {
    /// Seconds.
    pub seconds: u64,
    /// Where the number came from.
    pub source: LifetimeSource,
}

impl fmt::Display for FreshnessLifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        match self.source {
            LifetimeSource::SMaxAge => write!(f, "{s}s from s-maxage"),
            LifetimeSource::MaxAge => write!(f, "{s}s from max-age"),
            LifetimeSource::Expires => write!(f, "{s}s from Expires minus Date"),
            LifetimeSource::Heuristic => write!(f, "{s}s from the heuristic"),
            LifetimeSource::Invalid => {
                f.write_str("0s: invalid or conflicting lifetime directives")
            }
            LifetimeSource::None => f.write_str("0s: no lifetime given"),
        }
    }
}

/// May a stored response be reused for a request? (RFC 9111 §4)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh: serve it without contacting the origin.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`): serve it.
    StaleAllowed,
    /// Stale within its `stale-while-revalidate` window: serve it, and revalidate in
    /// the background.
    StaleWhileRevalidate,
    /// Ask the origin: conditionally when there is a validator.
    Revalidate,
}

/// The result of evaluating a request's own preconditions (If-None-Match,
/// If-Modified-Since) against a stored response (RFC 9111 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The request is not conditional (or not in a way a cache evaluates).
    None,
    /// The client's copy is current: answer 304.
    NotModified,
    /// The client's copy is not current: answer with the full response.
    Modified,
}

/// Everything the cache keeps to decide about one stored response.
///
/// Built once when the response arrives ([`CachePolicy::new`]); reading it on the hit
/// path parses nothing.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    status: StatusCode,
    headers: HeaderMap,
    response_time: u64,
    corrected_initial_age: u64,
    lifetime: FreshnessLifetime,
    no_cache: bool,
    no_cache_fields: Vec<HeaderName>,
    must_revalidate: bool,
    immutable: bool,
    stale_while_revalidate: u64,
    stale_if_error: u64,
    etag: Option<HeaderValue>,
    last_modified: Option<u64>,
    /// When the response was last modified, as far as a cache can tell (§4.3.2):
    /// Last-Modified, else Date, else when it was received.
    modified_at: u64,
    vary: Option<VaryKey>,
    credential: Option<[u8; 32]>,
    body_id: u64,
}

/// Status codes whose caching semantics this cache implements, for `must-understand`
/// (RFC 9111 §5.2.2.3). 206 is absent: partial responses are not stored.
const UNDERSTOOD: [u16; 37] = [
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308, 400, 401, 402, 403, 404, 405, 406,
    407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503,
];

/// Headers that are about one connection, not the response (RFC 9110 §7.6.1), and so
/// are never stored (RFC 9111 §3.1), plus `Age`, which the cache recomputes.
const NOT_STORED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
    "age",
];

/// Headers a 304 must not replace in the stored response (RFC 9111 §3.2): they
/// describe the stored body, which the 304 did not carry.
const NOT_UPDATED: [&str; 3] = ["content-length", "content-encoding", "content-range"];

impl CachePolicy {
    /// Decides whether the response of `exchange` may be stored (RFC 9111 §3) and, if
    /// so, computes what later decisions need.
    pub fn new(
        exchange: &Exchange<'_>,
        options: &PolicyOptions,
    ) -> Result<CachePolicy, NotStorable> {
        let response = exchange.response_headers;
        let status = exchange.status;
        let request = RequestDirectives::from_headers(exchange.request_headers);
        let targeted = options
            .targeted_field
            .as_ref()
            .filter(|_| options.shared)
            .and_then(|name| ResponseDirectives::from_targeted_field(response, name));
        let uses_targeted = targeted.is_some();
        let directives = targeted.unwrap_or_else(|| ResponseDirectives::from_headers(response));
        let understood = UNDERSTOOD.contains(&status.as_u16());

        if status.is_informational()
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Err(NotStorable::Status(status));
        }
        if directives.must_understand && !understood {
            return Err(NotStorable::MustUnderstand(status));
        }
        if request.no_store {
            return Err(NotStorable::RequestNoStore);
        }
        // §5.2.2.3: a cache that understands the status ignores no-store when
        // must-understand is present.
        if directives.no_store && !(directives.must_understand && understood) {
            return Err(NotStorable::ResponseNoStore);
        }
        if options.shared && directives.private.is_all() {
            return Err(NotStorable::Private);
        }
        let authorized = exchange.request_headers.contains_key(header::AUTHORIZATION);
        let shared_consent =
            directives.public || directives.s_maxage.is_some() || directives.must_revalidate;
        if options.shared && authorized && !shared_consent {
            return Err(NotStorable::Authorization);
        }
        let vary = match Vary::from_response(response) {
            Vary::Any => return Err(NotStorable::VaryAny),
            Vary::None => None,
            Vary::Fields(names) => Some(VaryKey::new(names, exchange.request_headers)),
        };

        let now_ish = exchange.response_time;
        let date = single_date(response, header::DATE, now_ish).unwrap_or(exchange.response_time);
        let last_modified = single_date(response, header::LAST_MODIFIED, now_ish);
        let explicit = explicit_lifetime(
            &directives,
            response,
            options.shared,
            uses_targeted,
            date,
            now_ish,
        );
        let heuristic = options.heuristic.freshness(&HeuristicInput {
            status,
            headers: response,
            date,
            last_modified,
            explicit_lifetime: explicit.map(|l| l.seconds),
            public: directives.public,
        });
        let lifetime = match (&heuristic, explicit) {
            (Some(h), _) => FreshnessLifetime {
                seconds: h.lifetime.as_secs(),
                source: LifetimeSource::Heuristic,
            },
            (None, Some(explicit)) => explicit,
            (None, None) => FreshnessLifetime {
                seconds: 0,
                source: LifetimeSource::None,
            },
        };
        // §3 and §9.3.3 of RFC 9110: other methods only with an explicit lifetime.
        let safe_method = exchange.method == Method::GET || exchange.method == Method::HEAD;
        if !safe_method && explicit.is_none() {
            return Err(NotStorable::Method(exchange.method.clone()));
        }
        let has_explicit_storage_permission = directives.public
            || (!options.shared && directives.private.is_all())
            || explicit.is_some()
            || heuristic.is_some();
        if !has_explicit_storage_permission && !HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) {
            return Err(NotStorable::NotCacheableByDefault(status));
        }

        let corrected_initial_age = corrected_initial_age(exchange, date);
        let etag = response.get(header::ETAG).cloned();
        let has_validator = etag.is_some() || last_modified.is_some();
        let fresh_on_arrival = lifetime.seconds > corrected_initial_age;
        let stale_while_revalidate = directives
            .stale_while_revalidate
            .and_then(Delta::seconds)
            .map_or(0, u64::from);
        let stale_if_error = directives
            .stale_if_error
            .and_then(Delta::seconds)
            .map_or(0, u64::from);
        if !fresh_on_arrival {
            if !options.cache_etags {
                return Err(NotStorable::NotFresh);
            }
            let usable_stale = corrected_initial_age
                < lifetime.seconds + stale_while_revalidate.max(stale_if_error);
            if !has_validator && !usable_stale {
                return Err(NotStorable::Unusable);
            }
        }

        let mut headers = HeaderMap::with_capacity(response.len() + 1);
        let connection_listed = connection_fields(response);
        for (name, value) in response {
            if NOT_STORED.contains(&name.as_str())
                || connection_listed.contains(name)
                || (options.shared && directives.private.fields().contains(name))
            {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if let Some(warning) = heuristic.and_then(|h| h.warning) {
            headers.append(header::WARNING, warning);
        }

        let must_revalidate = directives.must_revalidate
            || (options.shared && (directives.proxy_revalidate || directives.s_maxage.is_some()));
        let credential = (authorized && !(options.shared && shared_consent))
            .then(|| credential_digest(exchange.request_headers));

        Ok(CachePolicy {
            status,
            headers,
            response_time: exchange.response_time,
            corrected_initial_age,
            lifetime,
            no_cache: directives.no_cache.is_all(),
            no_cache_fields: directives.no_cache.fields().to_vec(),
            must_revalidate,
            immutable: directives.immutable,
            stale_while_revalidate,
            stale_if_error,
            etag,
            last_modified,
            modified_at: last_modified.unwrap_or(date),
            vary,
            credential,
            body_id: random_u64(),
        })
    }

    /// Writes the policy for a store ([`crate::store::format`]).
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u64(u64::from(self.status.as_u16()));
        w.len(self.headers.len());
        for (name, value) in &self.headers {
            w.blob(name.as_str().as_bytes());
            w.blob(value.as_bytes());
        }
        w.u64(self.response_time);
        w.u64(self.corrected_initial_age);
        w.u64(self.lifetime.seconds);
        w.u8(self.lifetime.source.code());
        w.bool(self.no_cache);
        w.len(self.no_cache_fields.len());
        for name in &self.no_cache_fields {
            w.blob(name.as_str().as_bytes());
        }
        w.bool(self.must_revalidate);
        w.bool(self.immutable);
        w.u64(self.stale_while_revalidate);
        w.u64(self.stale_if_error);
        w.option(self.etag.as_ref(), |w, etag| w.blob(etag.as_bytes()));
        w.option(self.last_modified, Writer::u64);
        w.u64(self.modified_at);
        w.option(self.vary.as_ref(), |w, vary| {
            w.len(vary.names().len());
            for (name, value) in vary.names().iter().zip(vary.values()) {
                w.blob(name.as_str().as_bytes());
                w.option(value.as_deref(), Writer::blob);
            }
        });
        w.option(self.credential.as_ref(), |w, digest| w.blob(digest));
        w.u64(self.body_id);
    }

    /// Reads a policy written by [`CachePolicy::encode`], checking every field.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<CachePolicy, FormatError> {
        let status = u16::try_from(r.u64()?)
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or(FormatError::Malformed("a status code"))?;
        let count = r.len()?;
        let mut headers = HeaderMap::with_capacity(count.min(256));
        for _ in 0..count {
            let name = r.header_name()?;
            let value = r.header_value()?;
            headers.append(name, value);
        }
        let response_time = r.u64()?;
        let corrected_initial_age = r.u64()?;
        let lifetime = FreshnessLifetime {
            seconds: r.u64()?,
            source: LifetimeSource::from_code(r.u8()?)
                .ok_or(FormatError::Malformed("a lifetime source"))?,
        };
        let no_cache = r.bool()?;
        let fields = r.len()?;
        let mut no_cache_fields = Vec::with_capacity(fields.min(64));
        for _ in 0..fields {
            no_cache_fields.push(r.header_name()?);
        }
        let must_revalidate = r.bool()?;
        let immutable = r.bool()?;
        let stale_while_revalidate = r.u64()?;
        let stale_if_error = r.u64()?;
        let etag = r.option(Reader::header_value)?;
        let last_modified = r.option(Reader::u64)?;
        let modified_at = r.u64()?;
        let vary = r.option(|r| {
            let count = r.len()?;
            let mut names = Vec::with_capacity(count.min(64));
            let mut values = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                names.push(r.header_name()?);
                values.push(r.option(|r| r.blob().map(<[u8]>::to_vec))?);
            }
            VaryKey::from_parts(names, values).ok_or(FormatError::Malformed("a Vary key"))
        })?;
        let credential = r.option(|r| {
            <[u8; 32]>::try_from(r.blob()?)
                .map_err(|_| FormatError::Malformed("a credential digest"))
        })?;
        let body_id = r.u64()?;
        Ok(CachePolicy {
            status,
            headers,
            response_time,
            corrected_initial_age,
            lifetime,
            no_cache,
            no_cache_fields,
            must_revalidate,
            immutable,
            stale_while_revalidate,
            stale_if_error,
            etag,
            last_modified,
            modified_at,
            vary,
            credential,
            body_id,
        })
    }

    /// When the response was received (seconds since the Unix epoch).
    pub fn response_time(&self) -> u64 {
        self.response_time
    }

    /// The stored status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored headers (hop-by-hop fields and `Age` removed).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// How long the response stays fresh, and why.
    pub fn freshness_lifetime(&self) -> FreshnessLifetime {
        self.lifetime
    }

    /// The response's current age (RFC 9111 §4.2.3), in seconds.
    pub fn current_age(&self, now: u64) -> u64 {
        self.corrected_initial_age
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// Whether the response is fresh at `now` (§4.2).
    pub fn is_fresh(&self, now: u64) -> bool {
        self.lifetime.seconds > self.current_age(now)
    }

    /// Until when (seconds since the epoch) the entry could still be of use: fresh,
    /// within its stale windows, or forever (`None`) when it has a validator and can
    /// be revalidated. Stores use this to expire entries.
    pub fn useful_until(&self) -> Option<u64> {
        if self.has_validator() {
            return None;
        }
        let windows = self.stale_while_revalidate.max(self.stale_if_error);
        let remaining = self
            .lifetime
            .seconds
            .saturating_add(windows)
            .saturating_sub(self.corrected_initial_age);
        Some(self.response_time.saturating_add(remaining))
    }

    /// Whether the response has a validator (ETag or Last-Modified) to revalidate
    /// with.
    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// The response's `ETag`, when it has one.
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.etag.as_ref()
    }

    /// The response's `Last-Modified`, when it has a valid one.
    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.last_modified
            .and(self.headers.get(header::LAST_MODIFIED))
    }

    /// Whether every reuse needs revalidation (`no-cache` without field names).
    pub fn requires_revalidation(&self) -> bool {
        self.no_cache
    }

    /// The `stale-while-revalidate` window, in seconds (0 when absent).
    pub fn stale_while_revalidate(&self) -> u64 {
        self.stale_while_revalidate
    }

    /// The `stale-if-error` window, in seconds (0 when absent).
    pub fn stale_if_error(&self) -> u64 {
        self.stale_if_error
    }

    /// The stored response's Vary'd request values, when it has a Vary.
    pub fn vary(&self) -> Option<&VaryKey> {
        self.vary.as_ref()
    }

    /// An identifier of the stored body: it stays the same when a 304 freshens the
    /// headers, and differs for every new body. Stores use it to refuse a freshening
    /// that would land on another body than the one it was validated for.
    pub fn body_id(&self) -> u64 {
        self.body_id
    }

    /// `must-revalidate`, or in a shared cache `proxy-revalidate` or `s-maxage`: never
    /// served stale.
    pub fn must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// Whether this stored response may answer a request with these headers at all:
    /// its Vary'd fields match (§4.1), and, when it was stored for an authenticated
    /// request, the request carries the same credentials.
    pub fn matches_request(&self, request: &HeaderMap) -> bool {
        if let Some(vary) = &self.vary
            && !vary.matches(request)
        {
            return false;
        }
        match &self.credential {
            None => true,
            Some(digest) => {
                request.contains_key(header::AUTHORIZATION) && credential_digest(request) == *digest
            }
        }
    }

    /// May this stored response be reused for a request with these directives at
    /// `now`? (RFC 9111 §4.2, §5.2.1, RFC 5861, RFC 8246)
    pub fn reuse(&self, request: &RequestDirectives, now: u64) -> Reuse {
        if self.no_cache || request.no_cache {
            return Reuse::Revalidate;
        }
        let age = self.current_age(now);
        let fresh = self.lifetime.seconds > age;
        if let Some(max_age) = request.max_age {
            // RFC 8246: a fresh immutable response is not revalidated because a client
            // asked for a recent one (what browsers send on reload); `no-cache` above
            // still forces it.
            // Ages are counted in whole seconds, but a stored response is always some
            // fraction of a second old: `max-age=0` never accepts it.
            let too_old = match max_age {
                Delta::Seconds(max) => max == 0 || age > u64::from(max),
                Delta::Invalid => false,
            };
            if too_old && !(self.immutable && fresh) {
                return Reuse::Revalidate;
            }
        }
        if let Some(Delta::Seconds(min_fresh)) = request.min_fresh
            && self.lifetime.seconds.saturating_sub(age) < u64::from(min_fresh)
        {
            // §5.2.1.3: the client wants a response that stays fresh a while yet; a
            // stale one never does, whatever max-stale would allow.
            return Reuse::Revalidate;
        }
        if fresh {
            return Reuse::Fresh;
        }
        if self.must_revalidate {
            return Reuse::Revalidate;
        }
        let staleness = age - self.lifetime.seconds;
        match request.max_stale {
            Some(MaxStale::Any) => return Reuse::StaleAllowed,
            Some(MaxStale::Seconds(max)) if staleness <= u64::from(max) => {
                return Reuse::StaleAllowed;
            }
            _ => {}
        }
        if staleness < self.stale_while_revalidate {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Revalidate
    }

    /// Whether the response may be served, stale, when the origin fails (5xx or no
    /// answer) at `now` (`stale-if-error`, RFC 5861 §4).
    pub fn serves_stale_on_error(&self, now: u64) -> bool {
        if self.must_revalidate || self.no_cache || self.stale_if_error == 0 {
            return false;
        }
        let age = self.current_age(now);
        age < self.lifetime.seconds.saturating_add(self.stale_if_error)
    }

    /// The headers of a request that revalidates this response (§4.3.1):
    /// `If-None-Match` with its ETag, `If-Modified-Since` with its Last-Modified.
    pub fn conditional_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(2);
        if let Some(etag) = &self.etag {
            out.push((header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(value) = self.headers.get(header::LAST_MODIFIED)
            && self.last_modified.is_some()
        {
            out.push((header::IF_MODIFIED_SINCE, value.clone()));
        }
        out
    }

    /// Whether a 304 with these headers speaks of this stored response (§4.3.4): same
    /// strong ETag; or same weak ETag; or, without an ETag, the same Last-Modified; or
    /// no validator at all in the 304, which answers the conditional request we made
    /// from this response's validators.
    pub fn validated_by(&self, not_modified: &HeaderMap) -> bool {
        if let Some(new) = not_modified.get(header::ETAG) {
            let Some(old) = &self.etag else { return false };
            return if is_weak(new.as_bytes()) {
                opaque_tag(new.as_bytes()) == opaque_tag(old.as_bytes())
            } else {
                !is_weak(old.as_bytes()) && old.as_bytes() == new.as_bytes()
            };
        }
        match not_modified.get(header::LAST_MODIFIED) {
            Some(new) => self.headers.get(header::LAST_MODIFIED) == Some(new),
            None => true,
        }
    }

    /// The stored headers updated with those of a 304 or of a HEAD response (§3.2,
    /// §4.3.4, §4.3.5): each field the new response has replaces the stored one,
    /// except those that describe the stored body.
    pub fn freshened_headers(&self, update: &HeaderMap) -> HeaderMap {
        let mut headers = self.headers.clone();
        let connection_listed = connection_fields(update);
        for name in update.keys() {
            if NOT_UPDATED.contains(&name.as_str())
                || NOT_STORED.contains(&name.as_str()) && name != header::AGE
                || connection_listed.contains(name)
            {
                continue;
            }
            headers.remove(name);
            for value in update.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    /// Keeps the identity of this stored body in a policy made from freshened headers.
    pub fn with_body_of(mut self, stored: &CachePolicy) -> CachePolicy {
        self.body_id = stored.body_id;
        self
    }

    /// Whether a HEAD response with these headers may update this stored GET response
    /// (§4.3.5): its validators and, when it has one, its Content-Length match.
    pub fn updatable_by_head(&self, head: &HeaderMap) -> bool {
        // §4.3.4's selection: the stored response's validators must be matched; only
        // a stored response without any may be chosen by a response without any.
        let etag_ok = match (&self.etag, head.get(header::ETAG)) {
            (Some(old), Some(new)) => old == new,
            (Some(_), None) => false,
            (None, new) => new.is_none(),
        };
        let stored_modified = self.last_modified().filter(|_| self.etag.is_none());
        let last_modified_ok = match (stored_modified, head.get(header::LAST_MODIFIED)) {
            (Some(old), Some(new)) => old == new,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let length_ok = match head.get(header::CONTENT_LENGTH) {
            Some(new) => self.headers.get(header::CONTENT_LENGTH) == Some(new),
            None => true,
        };
        etag_ok && last_modified_ok && length_ok
    }

    /// Evaluates the request's own If-None-Match / If-Modified-Since against this
    /// stored response, as a cache may (§4.3.2). Only for GET and HEAD, and only for a
    /// stored 200.
    pub fn precondition(&self, method: &Method, request: &HeaderMap, now: u64) -> Precondition {
        if !(method == Method::GET || method == Method::HEAD) || self.status != StatusCode::OK {
            return Precondition::None;
        }
        if request.contains_key(header::IF_NONE_MATCH) {
            let matched = request.get_all(header::IF_NONE_MATCH).iter().any(|value| {
                value.as_bytes().split(|b| *b == b',').any(|candidate| {
                    let candidate = candidate.trim_ascii();
                    candidate == b"*"
                        || self.etag.as_ref().is_some_and(|etag| {
                            opaque_tag(etag.as_bytes()) == opaque_tag(candidate)
                        })
                })
            });
            return if matched {
                Precondition::NotModified
            } else {
                Precondition::Modified
            };
        }
        if let Some(since) = request.get(header::IF_MODIFIED_SINCE)
            && let Some(since) = parse_http_date(since.as_bytes(), now)
        {
            let modified = self.modified_at;
            return if modified <= since {
                Precondition::NotModified
            } else {
                Precondition::Modified
            };
        }
        Precondition::None
    }

    /// The headers to serve this stored response with at `now`: the stored ones, with
    /// `Age`, and without the fields listed in a qualified `no-cache` unless the
    /// response was just validated (§5.2.2.4).
    pub fn response_headers(&self, now: u64, validated: bool) -> HeaderMap {
        let mut headers = self.headers.clone();
        if !validated {
            for name in &self.no_cache_fields {
                headers.remove(name);
            }
        }
        headers.insert(header::AGE, age_value(self.current_age(now)));
        headers
    }

    /// The headers of a 304 answering a conditional request from this stored response
    /// (RFC 9110 §15.4.5).
    pub fn not_modified_headers(&self, now: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for value in self.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::AGE, age_value(self.current_age(now)));
        headers
    }
}

/// The decimal numbers 0 to 999, back to back: `Age` values from a table.
static AGE_DIGITS: [u8; 2890] = age_digits();

const fn age_digits() -> [u8; 2890] {
    let mut digits = [0u8; 2890];
    let (mut n, mut at) = (0, 0);
    while n < 1000 {
        if n >= 100 {
            digits[at] = b'0' + (n / 100) as u8;
            at += 1;
        }
        if n >= 10 {
            digits[at] = b'0' + (n / 10 % 10) as u8;
            at += 1;
        }
        digits[at] = b'0' + (n % 10) as u8;
        at += 1;
        n += 1;
    }
    digits
}

/// An `Age` value. One under 1000 seconds (most hits) is a slice of a static
/// table: no formatting and no allocation on the hit path.
fn age_value(age: u64) -> HeaderValue {
    let place = match age {
        0..10 => Some((age as usize, 1)),
        10..100 => Some((10 + 2 * (age as usize - 10), 2)),
        100..1000 => Some((190 + 3 * (age as usize - 100), 3)),
        _ => None,
    };
    place
        .and_then(|(start, len)| {
            let digits = bytes::Bytes::from_static(&AGE_DIGITS[start..start + len]);
            HeaderValue::from_maybe_shared(digits).ok()
        })
        .unwrap_or_else(|| HeaderValue::from(age))
}

/// §4.2.1: s-maxage (shared), then max-age, then Expires minus Date.
fn explicit_lifetime(
    directives: &ResponseDirectives,
    response: &HeaderMap,
    shared: bool,
    targeted: bool,
    date: u64,
    now: u64,
) -> Option<FreshnessLifetime> {
    let invalid = FreshnessLifetime {
        seconds: 0,
        source: LifetimeSource::Invalid,
    };
    if directives.conflicting_max_age || (shared && directives.conflicting_s_maxage) {
        return Some(invalid);
    }
    let from_delta = |delta: Delta, source| match delta {
        Delta::Seconds(s) => FreshnessLifetime {
            seconds: u64::from(s),
            source,
        },
        Delta::Invalid => invalid,
    };
    if shared && let Some(s_maxage) = directives.s_maxage {
        return Some(from_delta(s_maxage, LifetimeSource::SMaxAge));
    }
    if let Some(max_age) = directives.max_age {
        return Some(from_delta(max_age, LifetimeSource::MaxAge));
    }
    // RFC 9213 §2.2: a cache that obeys a targeted field ignores Expires.
    if targeted {
        return None;
    }
    let mut expires = response.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    // §5.3: an invalid date means "already expired"; two Expires fields too (§4.2.1).
    let seconds = match (parse_http_date(first.as_bytes(), now), expires.next()) {
        (Some(expires), None) => expires.saturating_sub(date),
        _ => 0,
    };
    Some(FreshnessLifetime {
        seconds,
        source: LifetimeSource::Expires,
    })
}

/// §4.2.3: the age the response already had when it arrived.
fn corrected_initial_age(exchange: &Exchange<'_>, date: u64) -> u64 {
    let apparent_age = exchange.response_time.saturating_sub(date);
    let response_delay = exchange.response_time.saturating_sub(exchange.request_time);
    let age_value = age_header(exchange.response_headers).unwrap_or(0);
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// The Age field (§5.1): the first member of the first line, when it is
/// delta-seconds. Anything else (`abc`, `-1`, `1.5`) is ignored; an overflowing value
/// is the maximum (§1.2.2), which makes the response stale rather than fresh.
fn age_header(headers: &HeaderMap) -> Option<u64> {
    let first_line = headers.get(header::AGE)?.as_bytes();
    let first = first_line.split(|b| *b == b',').next()?.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let max = u64::from(directives::DELTA_SECONDS_MAX);
    Some(
        first
            .iter()
            .try_fold(0u64, |acc, d| {
                let next = acc * 10 + u64::from(d - b'0');
                if next >= max { Err(max) } else { Ok(next) }
            })
            .unwrap_or_else(|max| max),
    )
}

/// A date header that appears exactly once and parses.
fn single_date(headers: &HeaderMap, name: HeaderName, now: u64) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_http_date(first.as_bytes(), now)
}

fn connection_fields(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

fn credential_digest(request: &HeaderMap) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for value in request.get_all(header::AUTHORIZATION) {
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().into()
}

fn is_weak(etag: &[u8]) -> bool {
    etag.starts_with(b"W/")
}

/// The quoted part of an entity tag, for the weak comparison (RFC 9110 §8.8.3.2).
fn opaque_tag(etag: &[u8]) -> &[u8] {
    etag.strip_prefix(b"W/").unwrap_or(etag)
}

/// A number unique across processes with high probability, for body identifiers and
/// variants markers: a random per-process seed (the standard library's hasher keys)
/// plus a counter, mixed.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    // SplitMix64's finalizer: consecutive counters give unrelated identifiers.
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn age_values_are_the_decimal_numbers() {
        for age in (0..1100).chain([u64::MAX]) {
            assert_eq!(
                super::age_value(age).to_str().ok(),
                Some(age.to_string().as_str())
            );
        }
    }

    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn policy(
        response: &[(&str, &str)],
        options: &PolicyOptions,
    ) -> Result<CachePolicy, NotStorable> {
        let response = headers(response);
        CachePolicy::new(
            &Exchange {
                method: &Method::GET,
                request_headers: &HeaderMap::new(),
                status: StatusCode::OK,
                response_headers: &response,
                request_time: T0,
                response_time: T0 + 2,
            },
            options,
        )
    }

    #[test]
    fn current_age_adds_the_response_delay_to_the_age_header() {
        // §4.2.3: corrected_age_value = age_value + response_delay (2 s here).
        let p = policy(
            &[("cache-control", "max-age=100"), ("age", "10")],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert_eq!(p.current_age(T0 + 2), 12);
        assert_eq!(p.current_age(T0 + 12), 22);
    }

    #[test]
    fn apparent_age_from_date_counts_when_larger() {
        let date = format_http_date(T0 - 50);
        let p = policy(
            &[("cache-control", "max-age=100"), ("date", &date)],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert_eq!(p.current_age(T0 + 2), 52);
        assert!(p.is_fresh(T0 + 49));
        assert!(!p.is_fresh(T0 + 50));
    }

    #[test]
    fn expires_is_measured_from_date_not_from_now() {
        let date = format_http_date(T0 + 400);
        let expires = format_http_date(T0 + 300);
        let p = policy(
            &[("date", &date), ("expires", &expires), ("etag", "\"e\"")],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert_eq!(p.freshness_lifetime().seconds, 0);
    }

    #[test]
    fn s_maxage_counts_only_in_a_shared_cache_and_forbids_serving_stale_there() {
        let shared = PolicyOptions {
            shared: true,
            ..PolicyOptions::default()
        };
        let private = PolicyOptions::default();
        let p = policy(&[("cache-control", "max-age=10, s-maxage=1000")], &shared).unwrap();
        assert_eq!(
            p.freshness_lifetime(),
            FreshnessLifetime {
                seconds: 1000,
                source: LifetimeSource::SMaxAge
            }
        );
        assert!(p.must_revalidate());
        let p = policy(&[("cache-control", "max-age=10, s-maxage=1000")], &private).unwrap();
        assert_eq!(p.freshness_lifetime().seconds, 10);
        assert!(!p.must_revalidate());
    }

    #[test]
    fn useless_responses_are_not_stored() {
        assert_eq!(
            policy(&[("cache-control", "max-age=0")], &PolicyOptions::default()).unwrap_err(),
            NotStorable::Unusable
        );
        assert!(
            policy(
                &[("cache-control", "max-age=0"), ("etag", "\"x\"")],
                &PolicyOptions::default()
            )
            .is_ok()
        );
        let time_priority = PolicyOptions {
            cache_etags: false,
            ..PolicyOptions::default()
        };
        assert_eq!(
            policy(
                &[("cache-control", "max-age=0"), ("etag", "\"x\"")],
                &time_priority
            )
            .unwrap_err(),
            NotStorable::NotFresh
        );
    }

    #[test]
    fn useful_until_covers_the_stale_windows_and_is_open_with_a_validator() {
        let p = policy(
            &[("cache-control", "max-age=10, stale-if-error=100")],
            &PolicyOptions::default(),
        )
        .unwrap();
        // Received at T0 + 2, already 2 s old (the response delay counts as age).
        assert_eq!(p.useful_until(), Some(T0 + 110));
        let p = policy(
            &[("cache-control", "max-age=10"), ("etag", "\"x\"")],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert_eq!(p.useful_until(), None);
    }

    #[test]
    fn a_304_replaces_fields_but_not_the_content_length() {
        let p = policy(
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"x\""),
                ("content-length", "5"),
                ("x-a", "1"),
                ("x-a", "2"),
            ],
            &PolicyOptions::default(),
        )
        .unwrap();
        let merged = p.freshened_headers(&headers(&[
            ("x-a", "3"),
            ("content-length", "0"),
            ("cache-control", "max-age=9"),
        ]));
        assert_eq!(merged.get_all("x-a").iter().collect::<Vec<_>>(), vec!["3"]);
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["cache-control"], "max-age=9");
    }

    #[test]
    fn strong_and_weak_validators_of_a_304() {
        let p = policy(
            &[("cache-control", "max-age=1"), ("etag", "\"x\"")],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert!(p.validated_by(&headers(&[("etag", "\"x\"")])));
        assert!(p.validated_by(&headers(&[("etag", "W/\"x\"")])));
        assert!(!p.validated_by(&headers(&[("etag", "\"y\"")])));
        assert!(
            p.validated_by(&HeaderMap::new()),
            "a 304 without validators answers our conditional request"
        );
        let weak = policy(
            &[("cache-control", "max-age=1"), ("etag", "W/\"x\"")],
            &PolicyOptions::default(),
        )
        .unwrap();
        assert!(
            !weak.validated_by(&headers(&[("etag", "\"x\"")])),
            "a strong validator does not select a weak one"
        );
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        proptest::collection::vec(prop_oneof![32u8..127, Just(b'\t'), 128u8..=255], 0..40)
            .prop_filter_map("a valid header value", |bytes| {
                HeaderValue::from_bytes(&bytes).ok()
            })
    }

    proptest! {
        #[test]
        fn no_header_value_makes_the_policy_panic(
            values in proptest::collection::vec(header_value(), 10),
            status in 100u16..600,
            shared in any::<bool>(),
            now in T0..T0 + 10_000_000,
        ) {
            let names = ["cache-control", "expires", "date", "age", "last-modified", "etag", "vary", "pragma", "authorization", "cdn-cache-control"];
            let mut response = HeaderMap::new();
            let mut request = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                response.append(*name, value.clone());
                request.append(*name, value.clone());
            }
            let options = PolicyOptions {
                shared,
                targeted_field: Some(HeaderName::from_static("cdn-cache-control")),
                ..PolicyOptions::default()
            };
            let exchange = Exchange {
                method: &Method::GET,
                request_headers: &request,
                status: StatusCode::from_u16(status).unwrap(),
                response_headers: &response,
                request_time: T0,
                response_time: T0,
            };
            if let Ok(policy) = CachePolicy::new(&exchange, &options) {
                let _ = policy.reuse(&RequestDirectives::from_headers(&request), now);
                let _ = policy.precondition(&Method::GET, &request, now);
                let _ = policy.freshened_headers(&response);
                let _ = policy.serves_stale_on_error(now);
                let _ = policy.response_headers(now, false);
                let _ = policy.matches_request(&request);
                let _ = policy.useful_until();
            }
        }
    }
}
