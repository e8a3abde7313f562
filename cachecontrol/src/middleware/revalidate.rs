//! Asking the origin about stored responses: revalidation in the foreground and in
//! the background, 304s (RFC 9111 §4.3.4), and HEAD responses (§4.3.5).

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::Next;

use super::{
    Asked, Sent, Shared, Stored, build_response, empty_body, into_reqwest_body, owned_key,
};
use crate::mode::CacheStatus;
use crate::policy::{CachePolicy, Exchange, format_http_date};

/// How long a background revalidation may take with the default client.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of a 304 for a stored response.
pub(super) enum Freshened {
    /// The entry was freshened; serve it with this policy.
    Stored(Arc<CachePolicy>),
    /// The 304 is about this response, but the result may not be stored: serve it
    /// once with these headers.
    Unstorable(HeaderMap),
    /// The 304 is about another response.
    Mismatch,
}

impl Shared {
    /// Asks the origin about a stored response that may not be reused as it is.
    /// `forced`: the revalidation was asked for (by the request, the mode, or
    /// `no-cache`) rather than made necessary by staleness, so `stale-if-error` does
    /// not apply.
    pub(super) async fn revalidate(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        stored: Stored,
        forced: bool,
    ) -> reqwest_middleware::Result<Response> {
        let conditional = self.settings.policy.cache_etags && stored.policy.has_validator();
        let replay = request.try_clone();
        let sent = self.sent(&request, extensions);
        let key = owned_key(&self.keys, &request);
        let mut upstream = request;
        if conditional {
            // The client's own validators are evaluated here, against the stored
            // response, once it is known to be current.
            make_conditional(upstream.headers_mut(), &stored.policy);
        }
        let result = next.clone().run(upstream, &mut *extensions).await;
        let now = self.now();
        let stale_if_error = !forced && stored.policy.serves_stale_on_error(now);
        let response = match result {
            Err(error) if stale_if_error => {
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
                    let status = CacheStatus::Revalidated;
                    return Ok(self.serve(Asked::from(&sent), stored, status, true, now));
                }
                Freshened::Unstorable(headers) => {
                    let status = stored.policy.status();
                    let body = if sent.method == Method::HEAD {
                        empty_body()
                    } else {
                        into_reqwest_body(stored.body)
                    };
                    let response = build_response(&sent.url, status, headers, body);
                    return Ok(self.mark(response, CacheStatus::Revalidated));
                }
                Freshened::Mismatch => {
                    // Not about what we have: ask again, without conditions.
                    if let Some(replay) = replay {
                        drop(response);
                        return self.fetch(replay, extensions, next, None, true).await;
                    }
                    return Ok(self.mark(response, CacheStatus::Miss));
                }
            }
        }
        if response.status().is_server_error() && stale_if_error {
            tracing::warn!(url = %sent.url, status = %response.status(), "origin failed; serving stale (stale-if-error)");
            return Ok(self.serve(Asked::from(&sent), stored, CacheStatus::Stale, false, now));
        }
        Ok(match key {
            Some(key) => {
                self.store_response(&sent, response, key, now, None, true)
                    .await
            }
            None => self.mark(response, CacheStatus::Miss),
        })
    }

    /// Applies a 304 to a stored response (RFC 9111 §4.3.4).
    pub(super) async fn freshen(
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
        let mut headers = stored.freshened_headers(not_modified);
        if !not_modified.contains_key(header::DATE)
            && let Ok(date) = HeaderValue::try_from(format_http_date(now))
        {
            // RFC 9110 §6.6.1: a response without Date gets the time it was received;
            // keeping the old one would make the freshened entry look old at once.
            headers.insert(header::DATE, date);
        }
        let exchange = Exchange {
            method: &sent.method,
            request_headers: &sent.headers,
            status: stored.status(),
            response_headers: &headers,
            request_time: sent.time,
            response_time: now,
        };
        match CachePolicy::new(&exchange, &self.settings.policy) {
            Ok(policy) => {
                let policy = Arc::new(policy.with_body_of(stored));
                let update = self.cache().update(key, Arc::clone(&policy));
                if self.with_store("update", key, update).await == Some(false) {
                    tracing::debug!(key, "entry replaced meanwhile; not freshened");
                }
                Freshened::Stored(policy)
            }
            Err(reason) => {
                tracing::debug!(key, %reason, "freshened response may not be stored; removed");
                self.store_delete(key).await;
                headers.insert(header::AGE, HeaderValue::from(0));
                Freshened::Unstorable(headers)
            }
        }
    }

    /// A HEAD response updates the stored GET response when it matches it, and
    /// invalidates it otherwise (RFC 9111 §4.3.5).
    pub(super) async fn update_from_head(
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
            method: Method::GET,
            url: response.url().clone(),
            headers: request_headers.clone(),
            time: request_time,
            epoch: self.invalidations.epoch(),
            store_in_background: false,
            store_from_file: None,
        };
        let _ = self
            .freshen(&stored.key, &stored.policy, &sent, response.headers(), now)
            .await;
    }

    /// Revalidates in the background, at most one revalidation per entry at a time.
    pub(super) fn revalidate_in_background(self: &Arc<Self>, request: &Request, stored: &Stored) {
        if !self.revalidating.lock().insert(stored.key.clone()) {
            return;
        }
        let running = Revalidating {
            shared: Arc::clone(self),
            key: stored.key.clone(),
        };
        let (Some(mut upstream), Some(key)) = (request.try_clone(), owned_key(&self.keys, request))
        else {
            return;
        };
        // The whole response, as a GET: a range or a HEAD would refresh nothing.
        *upstream.method_mut() = Method::GET;
        upstream.headers_mut().remove(header::RANGE);
        upstream.headers_mut().remove(header::IF_RANGE);
        make_conditional(upstream.headers_mut(), &stored.policy);
        let policy = Arc::clone(&stored.policy);
        tokio::spawn(async move {
            let shared = Arc::clone(&running.shared);
            shared
                .background_revalidation(upstream, key, &running.key, &policy)
                .await;
            drop(running);
        });
    }

    async fn background_revalidation(
        self: &Arc<Self>,
        request: Request,
        key: String,
        storage_key: &str,
        policy: &CachePolicy,
    ) {
        let client = self.background.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(BACKGROUND_TIMEOUT)
                .build()
                .map_err(|error| tracing::warn!(%error, "no client for background revalidation"))
                .ok()
        });
        let Some(client) = client else { return };
        let sent = self.sent(&request, &Extensions::new());
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
                .freshen(storage_key, policy, &sent, response.headers(), now)
                .await;
            return;
        }
        if response.status().is_server_error() {
            return;
        }
        // A new response: store it, reading the body (and dropping it piece by
        // piece) so that it gets committed.
        let mut response = self
            .store_response(&sent, response, key, now, None, true)
            .await;
        loop {
            match response.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(url = %sent.url, %error, "background revalidation body failed");
                    break;
                }
            }
        }
    }
}

/// Marks an entry as being revalidated in the background, until dropped, whatever
/// happens to the task.
struct Revalidating {
    shared: Arc<Shared>,
    key: String,
}

impl Drop for Revalidating {
    fn drop(&mut self) {
        self.shared.revalidating.lock().remove(&self.key);
    }
}

/// Replaces the request's own validators with those of the stored response.
fn make_conditional(headers: &mut HeaderMap, policy: &CachePolicy) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    for (name, value) in policy.conditional_headers() {
        headers.insert(name, value);
    }
}
