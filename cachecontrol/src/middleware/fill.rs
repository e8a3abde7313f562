//! Filling the cache: fetching what is not stored, and recording what may be.

use std::sync::Arc;

use http::header;
use http::{Extensions, HeaderMap, Method};
use reqwest::{Request, Response};
use reqwest_middleware::Next;
use tokio::sync::{mpsc, oneshot};

use super::coalesce::FlightGuard;
use super::keys::variant_key;
use super::record::{CHANNEL_CAPACITY, RecordingBody, receiver_stream};
use super::{Sent, Shared, owned_key, same_origin, same_resource, with_url};
use crate::mode::{CacheStatus, PendingStore, Recording};
use crate::policy::{CachePolicy, Exchange, VaryKey, random_u64};
use crate::store::{Body, Entry, FileBody, Meta, StoreError, Variants};

impl Shared {
    /// Fetches a response the cache does not have (or must not use), and stores it
    /// when the policy allows. `replaces`: the response supersedes a stored one, which
    /// is removed if the new one cannot be stored.
    pub(super) async fn fetch(
        self: &Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        guard: Option<FlightGuard>,
        replaces: bool,
    ) -> reqwest_middleware::Result<Response> {
        let key = owned_key(&self.keys, &request);
        let sent = self.sent(&request, extensions);
        let response = next.run(request, extensions).await?;
        let now = self.now();
        Ok(match key {
            Some(key) => {
                self.store_response(&sent, response, key, now, guard, replaces)
                    .await
            }
            None => self.mark(response, CacheStatus::Miss),
        })
    }

    /// Stores a full response from the origin when the policy allows, recording its
    /// body as it streams to the caller.
    pub(super) async fn store_response(
        self: &Arc<Self>,
        sent: &Sent,
        response: Response,
        key: String,
        now: u64,
        guard: Option<FlightGuard>,
        replaces: bool,
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
            key = self.keys.of_url(response.url()).into_owned();
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
                let status = response.status();
                if replaces && (status.is_success() || status.is_redirection()) {
                    // A newer response that may not be stored supersedes the stored
                    // one: serving the old one later would go back in time.
                    self.store_delete(&key).await;
                }
                return self.mark(response, CacheStatus::Miss);
            }
        };
        // Followers can only use a fresh response of this very key: for anything
        // else, let them go now rather than when the body has been read.
        let guard = guard.filter(|_| policy.vary().is_none() && policy.is_fresh(now));
        let storage_key = match policy.vary() {
            Some(vary) => self.variant_storage_key(&key, vary).await,
            None => key.clone(),
        };
        let response = self.record(response, key, storage_key, policy, guard, sent);
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
                    nonce: random_u64(),
                };
                let nonce = variants.nonce;
                let marker = Meta::Variants(Arc::new(variants));
                self.with_store("put", key, self.cache().put(key, marker, Body::empty()))
                    .await;
                nonce
            }
        };
        variant_key(key, nonce, vary)
    }

    /// Tees the response body into the store; or, for a caller that keeps the body
    /// in a file of its own, waits for that file.
    fn record(
        self: &Arc<Self>,
        response: Response,
        key: String,
        storage_key: String,
        policy: CachePolicy,
        guard: Option<FlightGuard>,
        sent: &Sent,
    ) -> Response {
        let epoch = sent.epoch;
        let expected_len = content_length(policy.headers());
        // A redirect is recorded as usual: the middleware reads its body itself when
        // it follows it.
        if sent
            .store_from_file
            .is_some_and(|from_file| from_file.applies_to(expected_len))
            && !response.status().is_redirection()
        {
            // Followers are let go (the guard dropped): see the method.
            return self.store_when_handed_over(
                response,
                key,
                storage_key,
                policy,
                expected_len,
                epoch,
            );
        }
        let url = response.url().clone();
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let (stored, stored_signal) = oneshot::channel();
        let recording = Recording::new(stored_signal);
        let flight = guard.map(Arc::new);
        if let Some(flight) = &flight {
            // The head has arrived: followers now wait only while the body moves.
            flight.progress();
        }
        let storage_key: Arc<str> = storage_key.into();
        let body_stream = receiver_stream(receiver, Arc::clone(&storage_key), flight.clone());
        let meta = Meta::Response(Arc::new(policy));
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let _flight = flight;
            let put = shared
                .cache()
                .put(&storage_key, meta, Body::Stream(body_stream))
                .await;
            let committed = shared.committed(&key, &storage_key, epoch, put).await;
            let _ = stored.send(committed);
        });
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        // Without waiting for the store, the body's end is not held back.
        let wait = (!sent.store_in_background).then(|| recording.signal());
        let body = RecordingBody::new(
            body,
            sender,
            wait,
            expected_len,
            self.settings.store_timeout,
        );
        let mut rebuilt = with_url(&url).map(|()| reqwest::Body::wrap(body));
        *rebuilt.status_mut() = parts.status;
        *rebuilt.version_mut() = parts.version;
        *rebuilt.headers_mut() = parts.headers;
        rebuilt.extensions_mut().extend(parts.extensions);
        rebuilt.extensions_mut().insert(recording);
        Response::from(rebuilt)
    }

    /// For a [`StoreFromFile`](crate::StoreFromFile) request: the response goes to
    /// the caller as the origin sent it, with a [`PendingStore`] through which the
    /// file holding its body is handed over, then copied into the store in a task of
    /// its own. Followers of the key are let go at once: the body reaches the store
    /// only once the caller has written it.
    fn store_when_handed_over(
        self: &Arc<Self>,
        mut response: Response,
        key: String,
        storage_key: String,
        policy: CachePolicy,
        expected_len: Option<u64>,
        epoch: u64,
    ) -> Response {
        let (handed_over, file) = oneshot::channel::<FileBody>();
        let (stored, stored_signal) = oneshot::channel();
        let recording = Recording::new(stored_signal);
        let meta = Meta::Response(Arc::new(policy));
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let committed = match file.await {
                Ok(file) if expected_len.is_some_and(|len| len != file.len()) => {
                    tracing::debug!(key = %storage_key, len = file.len(), ?expected_len,
                        "body handed over of another length than announced; not stored");
                    false
                }
                Ok(file) => {
                    let put = shared
                        .cache()
                        .put(&storage_key, meta, Body::File(file))
                        .await;
                    shared.committed(&key, &storage_key, epoch, put).await
                }
                Err(_) => {
                    tracing::debug!(key = %storage_key, "no body handed over; not stored");
                    false
                }
            };
            let _ = stored.send(committed);
        });
        let extensions = response.extensions_mut();
        extensions.insert(PendingStore::new(handed_over));
        extensions.insert(recording);
        response
    }

    /// What a put of a response from the origin came to: whether it is stored (an
    /// entry committed for a URL invalidated while the response was on its way is
    /// removed again).
    async fn committed(
        &self,
        key: &str,
        storage_key: &str,
        epoch: u64,
        put: Result<(), StoreError>,
    ) -> bool {
        match put {
            Ok(()) if self.invalidations.since(key, epoch) => {
                self.store_delete(storage_key).await;
                false
            }
            Ok(()) => {
                self.flights.note_stored(key);
                tracing::trace!(key = %storage_key, "stored");
                true
            }
            Err(StoreError::Incomplete { .. }) => {
                tracing::debug!(key = %storage_key, "body incomplete; not stored");
                false
            }
            Err(error) => {
                super::log_store_error("put", storage_key, &error);
                false
            }
        }
    }

    fn warn_client_redirects(&self, asked: &url::Url, got: &url::Url) {
        use std::sync::atomic::Ordering;
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
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
