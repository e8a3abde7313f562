//! The floors: the work of a cache hit or revalidation without any cache logic.
//!
//! Each is a `reqwest-middleware` middleware in the same place as ours, handed a
//! response prepared from the origin's once ([`Prepared`]): its status, its headers
//! and its body. What it does per request is the least a cache must do to answer:
//!
//! - [`FromMemory`]: build a response around the prepared bytes (shared, not copied);
//! - [`FromFile`]: the same, with the body read from a file each time;
//! - [`Revalidating`]: send the request with `If-None-Match` to the origin and, on its
//!   `304`, answer with the prepared response: the round trip any revalidation needs,
//!   and nothing else.
//!
//! The other floors are not middleware: plain reqwest for a miss, and a bare Redis
//! `GET` for a hit from Redis ([`crate::contender`]).

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use reqwest::{Request, Response, ResponseBuilderExt, Url};
use reqwest_middleware::{Middleware, Next};

/// A response as the origin sent it, kept to be handed out again.
#[derive(Debug, Clone)]
pub struct Prepared {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Prepared {
    /// Fetches `url` once with plain reqwest and keeps the response.
    pub async fn capture(url: &str) -> anyhow::Result<Prepared> {
        let response = reqwest::get(url).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Prepared {
            status,
            headers,
            body,
        })
    }

    /// Its body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A new response with these status and headers and `body`, for `url`.
    fn response(&self, url: &Url, body: Bytes) -> Response {
        let mut response = http::Response::builder()
            .status(self.status)
            .url(url.clone())
            .body(reqwest::Body::from(body))
            .unwrap_or_else(|_| http::Response::new(reqwest::Body::from(Bytes::new())));
        *response.headers_mut() = self.headers.clone();
        Response::from(response)
    }
}

/// Answers every request with the prepared response, from memory.
#[derive(Debug, Clone)]
pub struct FromMemory(pub Prepared);

#[async_trait]
impl Middleware for FromMemory {
    async fn handle(
        &self,
        request: Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        Ok(self.0.response(request.url(), self.0.body.clone()))
    }
}

/// Answers every request with the prepared status and headers and the body read
/// from `path` (with `tokio::fs`, as an async service would).
#[derive(Debug, Clone)]
pub struct FromFile {
    /// The status and headers.
    pub prepared: Prepared,
    /// Where the body is.
    pub path: PathBuf,
}

#[async_trait]
impl Middleware for FromFile {
    async fn handle(
        &self,
        request: Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let body = tokio::fs::read(&self.path)
            .await
            .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))?;
        Ok(self.prepared.response(request.url(), Bytes::from(body)))
    }
}

/// Asks the origin with `If-None-Match: <etag>`; a `304` is answered with the
/// prepared response, anything else is passed on.
#[derive(Debug, Clone)]
pub struct Revalidating {
    /// The response to serve on a `304`.
    pub prepared: Prepared,
    /// The validator to send.
    pub etag: HeaderValue,
}

#[async_trait]
impl Middleware for Revalidating {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let url = request.url().clone();
        request
            .headers_mut()
            .insert(header::IF_NONE_MATCH, self.etag.clone());
        let response = next.run(request, extensions).await?;
        if response.status() != StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        Ok(self.prepared.response(&url, self.prepared.body.clone()))
    }
}
