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
//! `GET` for a hit from Redis ([`crate::contender`]); and for the fetcher, plain
//! reqwest writing a body to one file or two ([`download_to_files`]).

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

/// Plain reqwest streaming the body of `url` to `artifact.bin` in `dir` and, with
/// `copy_dir`, to a second `artifact.bin` there too, written by a thread of its own
/// from the same chunks (the least a fetch that leaves the job a copy of its own and
/// keeps one must write, on a file system without reflinks): the fetcher's floors.
/// Returns the time from the request until the files are written, and the body's
/// length.
pub async fn download_to_files(
    client: &reqwest::Client,
    url: &str,
    dir: &std::path::Path,
    copy_dir: Option<&std::path::Path>,
) -> anyhow::Result<(std::time::Duration, u64)> {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut file = std::fs::File::create(dir.join("artifact.bin"))?;
    let second = match copy_dir {
        Some(copy_dir) => {
            let mut copy = std::fs::File::create(copy_dir.join("artifact.bin"))?;
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Bytes>(32);
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                while let Ok(chunk) = receiver.recv() {
                    copy.write_all(&chunk)?;
                }
                Ok(())
            });
            Some((sender, writer))
        }
        None => None,
    };
    let mut len = 0u64;
    while let Some(chunk) = response.chunk().await? {
        len += chunk.len() as u64;
        if let Some((sender, _)) = &second {
            sender.send(chunk.clone())?;
        }
        file.write_all(&chunk)?;
    }
    drop(file);
    if let Some((sender, writer)) = second {
        drop(sender);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the second writer panicked"))??;
    }
    Ok((start.elapsed(), len))
}
