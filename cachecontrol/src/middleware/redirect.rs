//! Following redirects inside the middleware, so that each hop is cached under its
//! own URL ([`CacheControlBuilder::follow_redirects`](super::CacheControlBuilder::follow_redirects)).

use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{Extensions, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::Next;

use super::{Shared, same_origin};
use crate::error::Error;

/// A redirect body is read to its end (so that a cacheable redirect gets stored) up to
/// this size; a larger one is dropped, and simply not cached.
const MAX_REDIRECT_BODY: usize = 64 * 1024;

/// Headers that must not follow a redirect to another origin.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

pub(super) async fn follow(
    shared: &Arc<Shared>,
    request: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    let mut request = request;
    let mut hops = 0;
    loop {
        let replay = request.try_clone();
        let url = request.url().clone();
        let method = request.method().clone();
        let response = shared
            .handle_one(request, &mut *extensions, next.clone())
            .await?;
        let status = response.status();
        let target = match status {
            StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT => response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|location| url.join(location).ok()),
            _ => None,
        };
        let (Some(target), Some(mut next_request)) = (target, replay) else {
            // Not a redirect, or one we cannot replay (a streamed body): the caller
            // gets it as it is.
            return Ok(response);
        };
        if hops == shared.settings.follow_redirects {
            return Err(reqwest_middleware::Error::middleware(
                Error::TooManyRedirects {
                    url: url.to_string(),
                    max: shared.settings.follow_redirects,
                },
            ));
        }
        drain(response).await;

        // RFC 9110 §15.4: 303 turns every method but HEAD into GET; 301 and 302 turn
        // POST into GET, as browsers do; 307 and 308 keep method and body.
        let to_get = match status {
            StatusCode::SEE_OTHER => method != Method::HEAD,
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => method == Method::POST,
            _ => false,
        };
        if to_get {
            *next_request.method_mut() = Method::GET;
            *next_request.body_mut() = None;
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
            ] {
                next_request.headers_mut().remove(name);
            }
        }
        if !same_origin(&url, &target) {
            for name in &CREDENTIALS {
                next_request.headers_mut().remove(name);
            }
        }
        tracing::debug!(from = %url, to = %target, %status, "following redirect");
        *next_request.url_mut() = target;
        request = next_request;
        hops += 1;
    }
}

/// Reads a redirect's body so that, when it is being recorded, it gets committed.
async fn drain(mut response: Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_REDIRECT_BODY {
            return;
        }
    }
}
