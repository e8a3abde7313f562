//! The client side of the master's HTTP API: what `dadd submit`, `dadd ps`,
//! `dadd show`, `dadd logs`, `dadd kill`, `dadd hosts` and `dadd put` call.
//!
//! A [`MasterClient`] holds the master's URL (`http://host:port`, or a URL with
//! a path prefix when the master is behind a proxy) and the cluster's bearer
//! token, and makes one call per method, with the JSON types of [`crate::api`].
//!
//! # Errors
//!
//! A [`ClientError`] says which call failed and why in words a user can act on:
//! a master that cannot be reached ([`ClientError::Unreachable`]), a token that
//! is missing or wrong ([`ClientError::Unauthorized`]), something that does not
//! exist ([`ClientError::NotFound`]), a route an older master does not serve
//! ([`ClientError::NoRoute`]), and any other refusal with the master's own
//! `{"error": ...}` message ([`ClientError::Refused`]).
//!
//! # Example
//!
//! ```no_run
//! use dadd::client::MasterClient;
//! use dadd::spec::Format;
//!
//! # async fn run() -> Result<(), dadd::client::ClientError> {
//! let master = MasterClient::new("http://127.0.0.1:8440", Some("s3cret".into()))?;
//! let id = master.submit(r#"{"cmd": "echo hi"}"#, Format::Json).await?;
//! for process in master.list().await? {
//!     println!("{} {}", process.id, process.state);
//! }
//! # let _ = id;
//! # Ok(())
//! # }
//! ```

pub mod render;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::api::{
    self, ErrorBody, HostList, HostSummary, ProcessDetail, ProcessList, ProcessSummary, Submitted,
};
use crate::spec::Format;

/// The master's URL when none is given: the master's default listen address
/// ([`crate::master::DEFAULT_LISTEN`]) over HTTP.
pub const DEFAULT_MASTER_URL: &str = "http://127.0.0.1:8440";

/// How long connecting to the master may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the master may stay silent in the middle of an answer. There is no
/// limit on a whole call: an upload or a log may be large.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to the master failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The master's URL is not one the client can call.
    #[error("master URL {url:?}: {reason}")]
    BadUrl {
        /// The URL, as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A process id or host name that cannot go into a URL path.
    #[error(
        "{what} {value:?}: use 1 to 128 ASCII letters, digits, `-`, `_` and `.` (not only dots)"
    )]
    BadName {
        /// `process id` or `host name`.
        what: &'static str,
        /// The value, as given.
        value: String,
    },
    /// A path in the file store that has an empty, `.` or `..` part.
    #[error("file path {0:?}: every `/`-separated part must be a name (not empty, `.` or `..`)")]
    BadFilePath(String),
    /// The HTTP client cannot be built (its TLS roots, typically).
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Nothing answers at the master's address.
    #[error(
        "cannot reach the master at {url} ({what}: {reason}); is `dadd up` or `dadd master` \
         running at {url}?"
    )]
    Unreachable {
        /// The master's URL.
        url: String,
        /// The call.
        what: String,
        /// Why the connection failed, in the system's words.
        reason: String,
    },
    /// The master answered 401.
    #[error("the master at {url} refused {what}: {message}; {hint}")]
    Unauthorized {
        /// The master's URL.
        url: String,
        /// The call.
        what: String,
        /// The master's message.
        message: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The master answered 404: no such process, log, host or file.
    #[error("{what}: {message}")]
    NotFound {
        /// The call.
        what: String,
        /// The master's message.
        message: String,
    },
    /// The master does not serve this route: it is older than this client.
    #[error("{what}: the master at {url} does not serve {path} (is it older than this dadd?)")]
    NoRoute {
        /// The master's URL.
        url: String,
        /// The call.
        what: String,
        /// The route's path.
        path: String,
    },
    /// The master answered another error status, with its message.
    #[error("{what}: the master answered {status}: {message}")]
    Refused {
        /// The call.
        what: String,
        /// The status.
        status: StatusCode,
        /// The master's message (its `{"error": ...}`, else the body's text).
        message: String,
    },
    /// The call failed on the way (a timeout, a connection cut mid-answer).
    #[error("{what}: {source}")]
    Http {
        /// The call.
        what: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The master's answer is not the JSON this client expects.
    #[error("{what}: the master's answer does not read: {source}")]
    BadAnswer {
        /// The call.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A local file cannot be read.
    #[error("{action} {}: {source}", path.display())]
    File {
        /// What the client was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A file [`MasterClient::put_file`] stored on the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Where a spec's `download_urls` can fetch it from.
    pub url: Url,
    /// How many bytes were sent.
    pub bytes: u64,
    /// Whether it replaced a file already at that path.
    pub replaced: bool,
}

/// A client of one master: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct MasterClient {
    client: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl MasterClient {
    /// A client of the master at `url` (`http://host:port`, optionally with a
    /// path prefix), sending `token` as a bearer token when given.
    pub fn new(url: &str, token: Option<String>) -> Result<MasterClient, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(url).map_err(|error| bad(&error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("use http:// or https://"));
        }
        if base.host().is_none() {
            return Err(bad("it names no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("a master's URL has no query and no fragment"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(ClientError::Client)?;
        Ok(MasterClient {
            client,
            base,
            token: token.filter(|token| !token.is_empty()),
        })
    }

    /// The master's URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// `POST /api/processes`: submits a spec (its text, as written in `format`)
    /// and returns the new process's id, with a warning when it may wait (no
    /// worker is up, or the host it names is not). The master checks the spec;
    /// its message says what is wrong with one it refuses.
    pub async fn submit(&self, spec_text: &str, format: Format) -> Result<Submitted, ClientError> {
        let content_type = match format {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
            Format::Detect => "text/plain; charset=utf-8",
        };
        let request = self
            .request(Method::POST, &["api", "processes"])
            .header(CONTENT_TYPE, content_type)
            .body(spec_text.to_owned());
        self.json("submitting the spec", request).await
    }

    /// `GET /api/processes`: every process, newest first.
    pub async fn list(&self) -> Result<Vec<ProcessSummary>, ClientError> {
        let request = self.request(Method::GET, &["api", "processes"]);
        let list: ProcessList = self.json("listing the processes", request).await?;
        Ok(list.processes)
    }

    /// `GET /api/processes/{id}`: a process, its spec and its state history.
    pub async fn show(&self, id: &str) -> Result<ProcessDetail, ClientError> {
        let id = process_id(id)?;
        let request = self.request(Method::GET, &["api", "processes", id]);
        self.json(&format!("showing process {id}"), request).await
    }

    /// `GET /api/processes/{id}/log`: a run's log, as its worker put it
    /// (bytes: a command's output need not be UTF-8).
    pub async fn log(&self, id: &str) -> Result<Bytes, ClientError> {
        let id = process_id(id)?;
        let what = format!("getting the log of process {id}");
        let request = self.request(Method::GET, &["api", "processes", id, "log"]);
        let response = self.send(&what, request).await?;
        response
            .bytes()
            .await
            .map_err(|source| ClientError::Http { what, source })
    }

    /// `POST /api/processes/{id}/kill`: asks the master to kill a process; the
    /// answer is the process as it is now (its host kills it at its next
    /// heartbeat).
    pub async fn kill(&self, id: &str) -> Result<ProcessSummary, ClientError> {
        let id = process_id(id)?;
        let request = self.request(Method::POST, &["api", "processes", id, "kill"]);
        self.json(&format!("killing process {id}"), request).await
    }

    /// `GET /api/hosts`: the workers the master knows, by name.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, ClientError> {
        let request = self.request(Method::GET, &["api", "hosts"]);
        let list: HostList = self.json("listing the hosts", request).await?;
        Ok(list.hosts)
    }

    /// `DELETE /api/hosts/{name}`: makes the master forget a host.
    pub async fn remove_host(&self, name: &str) -> Result<(), ClientError> {
        if !api::valid_host_name(name) {
            return Err(ClientError::BadName {
                what: "host name",
                value: name.to_owned(),
            });
        }
        let request = self.request(Method::DELETE, &["api", "hosts", name]);
        self.send(&format!("removing host {name}"), request)
            .await
            .map(drop)
    }

    /// `PUT /files/{remote_path}`: uploads a local file to the master's file
    /// store, streamed (it never sits whole in memory), and returns the URL a
    /// spec can download it from. `remote_path` is `/`-separated (a leading `/`
    /// is dropped); each part is sent percent-encoded, and must be a name: not
    /// empty, `.` or `..`.
    pub async fn put_file(
        &self,
        local_path: &Path,
        remote_path: &str,
    ) -> Result<Uploaded, ClientError> {
        let parts: Vec<&str> = remote_path.trim_start_matches('/').split('/').collect();
        if parts
            .iter()
            .any(|part| part.is_empty() || *part == "." || *part == "..")
        {
            return Err(ClientError::BadFilePath(remote_path.to_owned()));
        }
        let file_error = |action| {
            move |source| ClientError::File {
                action,
                path: local_path.to_owned(),
                source,
            }
        };
        let file = tokio::fs::File::open(local_path)
            .await
            .map_err(file_error("opening"))?;
        let metadata = file.metadata().await.map_err(file_error("reading"))?;
        if !metadata.is_file() {
            return Err(ClientError::File {
                action: "uploading",
                path: local_path.to_owned(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let bytes = metadata.len();
        let mut segments = vec!["files"];
        segments.extend(parts);
        let url = self.endpoint(&segments);
        let request = self
            .authorized(self.client.put(url.clone()))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, bytes)
            .body(reqwest::Body::from(file));
        let what = format!("uploading {} to {url}", local_path.display());
        let response = self.send(&what, request).await?;
        let replaced = response.status() == StatusCode::NO_CONTENT;
        tracing::debug!(%url, bytes, replaced, "file uploaded");
        Ok(Uploaded {
            url,
            bytes,
            replaced,
        })
    }

    /// The URL of `segments` under the master's URL, each segment
    /// percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` checked that the URL has a host, so it can have segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The master's URL as a user writes it: without the slash of an empty path.
    fn shown_url(&self) -> String {
        let url = self.base.as_str();
        if self.base.path() == "/" {
            url.trim_end_matches('/').to_owned()
        } else {
            url.to_owned()
        }
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.authorized(self.client.request(method, self.endpoint(segments)))
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and reads its JSON answer.
    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(what, request).await?;
        let body = response.bytes().await.map_err(|source| ClientError::Http {
            what: what.to_owned(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|source| ClientError::BadAnswer {
            what: what.to_owned(),
            source,
        })
    }

    /// Sends `request`; a 2xx answer is returned, anything else is the error
    /// that says what went wrong.
    async fn send(&self, what: &str, request: RequestBuilder) -> Result<Response, ClientError> {
        tracing::debug!(what, "calling the master");
        let response = request.send().await.map_err(|source| {
            if source.is_connect() {
                ClientError::Unreachable {
                    url: self.shown_url(),
                    what: what.to_owned(),
                    reason: root_cause(&source),
                }
            } else {
                ClientError::Http {
                    what: what.to_owned(),
                    source,
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let path = response.url().path().to_owned();
        let text = response.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) if text.trim().is_empty() => {
                status.canonical_reason().unwrap_or("no message").to_owned()
            }
            Err(_) => text.trim().to_owned(),
        };
        let what = what.to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                url: self.shown_url(),
                what,
                message,
                hint: if self.token.is_some() {
                    "check the token given with --token or DADD_TOKEN"
                } else {
                    "give the cluster's token with --token or DADD_TOKEN"
                },
            },
            // The master's answer to a path it has no route for.
            StatusCode::NOT_FOUND if message.starts_with("no such route") => ClientError::NoRoute {
                url: self.shown_url(),
                what,
                path,
            },
            StatusCode::NOT_FOUND => ClientError::NotFound { what, message },
            _ => ClientError::Refused {
                what,
                status,
                message,
            },
        })
    }
}

/// The last error in `error`'s chain of sources: what the system said.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// `id`, when it can go into a URL path.
fn process_id(id: &str) -> Result<&str, ClientError> {
    if api::valid_process_id(id) {
        Ok(id)
    } else {
        Err(ClientError::BadName {
            what: "process id",
            value: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_masters_default_listen_address() {
        assert_eq!(
            DEFAULT_MASTER_URL,
            format!("http://{}", crate::master::DEFAULT_LISTEN)
        );
    }

    #[test]
    fn endpoints_keep_the_prefix_and_encode_each_part() -> Result<(), ClientError> {
        let client = MasterClient::new("http://127.0.0.1:8440/dadd", None)?;
        assert_eq!(
            client.endpoint(&["api", "processes", "job-1"]).as_str(),
            "http://127.0.0.1:8440/dadd/api/processes/job-1"
        );
        let client = MasterClient::new("http://127.0.0.1:8440/", None)?;
        assert_eq!(
            client.endpoint(&["files", "a b", "c?d#e"]).as_str(),
            "http://127.0.0.1:8440/files/a%20b/c%3Fd%23e"
        );
        Ok(())
    }

    #[test]
    fn urls_a_client_cannot_call_are_refused() {
        for url in [
            "127.0.0.1:8440",
            "ftp://host/",
            "http://host/?q=1",
            "nonsense",
        ] {
            assert!(
                matches!(
                    MasterClient::new(url, None),
                    Err(ClientError::BadUrl { .. })
                ),
                "{url}"
            );
        }
    }
}
