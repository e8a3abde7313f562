//! An HTTP origin server for tests: scripted responses, and a record of every request.
//!
//! It listens on a free loopback port and speaks real HTTP/1.1 (hyper), so the client
//! under test goes through its whole stack. Each path gets a handler that sees the
//! request (and how many times the path was asked before) and returns a [`Reply`]:
//! status, header lines in order (repeats allowed), a body sent whole or in chunks,
//! a delay, or a dropped connection. The server counts requests and body bytes, so
//! that a test can assert that the network was not used.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use testbed::origin::{Origin, Reply};
//! let origin = Origin::start().await?;
//! origin.route("/a", |_req| Reply::ok("hello").header("cache-control", "max-age=60"));
//! let body = reqwest::get(origin.url("/a")).await.unwrap().text().await.unwrap();
//! assert_eq!(body, "hello");
//! assert_eq!(origin.hits("/a"), 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: http::Method,
    /// The path and query.
    pub path_and_query: String,
    /// The headers, as received.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
    /// How many requests this path had received before this one (0 for the first).
    pub index: usize,
}

impl Recorded {
    /// The first value of a request header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    chunks: Option<usize>,
    delay: Option<Duration>,
    chunk_delay: Option<Duration>,
    disconnect: bool,
    cut_after: Option<usize>,
    date: bool,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Reply {
    /// A reply with this status and an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            chunks: None,
            delay: None,
            chunk_delay: None,
            disconnect: false,
            cut_after: None,
            date: true,
            gate: None,
        }
    }

    /// A 200 with this body.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200).body(body)
    }

    /// A 304 Not Modified.
    pub fn not_modified() -> Reply {
        Reply::status(304)
    }

    /// Drops the connection without answering.
    pub fn disconnect() -> Reply {
        Reply {
            disconnect: true,
            ..Reply::status(200)
        }
    }

    /// Adds a header line (a repeated name adds another line).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    /// Sends the body in `n` chunks with chunked transfer encoding (no Content-Length).
    pub fn chunked(mut self, n: usize) -> Reply {
        self.chunks = Some(n.max(1));
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Waits this long between chunks (with [`Reply::chunked`]).
    pub fn chunk_delay(mut self, delay: Duration) -> Reply {
        self.chunk_delay = Some(delay);
        self
    }

    /// Announces the whole body's length but closes the connection after `bytes`.
    pub fn cut_after(mut self, bytes: usize) -> Reply {
        self.cut_after = Some(bytes);
        self
    }

    /// With [`Reply::chunked`]: every chunk after the first waits for a permit of
    /// `gate`, so that a test decides when the rest of the body is sent.
    pub fn gate(mut self, gate: Arc<tokio::sync::Semaphore>) -> Reply {
        self.gate = Some(gate);
        self
    }

    /// Does not add a `Date` header (one is added unless the reply sets its own).
    pub fn without_date(mut self) -> Reply {
        self.date = false;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    routes: HashMap<String, Handler>,
    requests: Vec<Recorded>,
    /// How many requests each path has received: a request's index without a scan
    /// of all the requests (benches send hundreds of thousands).
    counts: HashMap<String, usize>,
}

/// A running origin. Stops when dropped.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    body_bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish()
    }
}

impl Origin {
    /// Starts an origin on a free loopback port.
    pub async fn start() -> std::io::Result<Origin> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&state), Arc::clone(&body_bytes)));
        Ok(Origin {
            addr,
            state,
            body_bytes,
            task,
        })
    }

    /// The URL of `path` on this origin.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests for `path` (without the query) with `handler`.
    pub fn route(&self, path: &str, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.state
            .lock()
            .routes
            .insert(path.to_owned(), Arc::new(handler));
    }

    /// Answers every request for `path` with `reply`.
    pub fn always(&self, path: &str, reply: Reply) {
        self.route(path, move |_| reply.clone());
    }

    /// Answers the n-th request for `path` with the n-th reply, and later ones with
    /// the last.
    pub fn sequence(&self, path: &str, replies: Vec<Reply>) {
        self.route(path, move |req| {
            replies
                .get(req.index)
                .or_else(|| replies.last())
                .cloned()
                .unwrap_or_else(|| Reply::status(500))
        });
    }

    /// The requests received for `path` (without the query), in order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .requests
            .iter()
            .filter(|r| path_of(&r.path_and_query) == path)
            .cloned()
            .collect()
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    /// How many requests the origin received in all.
    pub fn total_hits(&self) -> usize {
        self.state.lock().requests.len()
    }

    /// How many response body bytes the origin has sent.
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn path_of(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or(path_and_query)
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, body_bytes: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let body_bytes = Arc::clone(&body_bytes);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                let body_bytes = Arc::clone(&body_bytes);
                async move { answer(request, state, body_bytes).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type ReplyBody = BoxBody<Bytes, std::io::Error>;

async fn answer(
    request: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    body_bytes: Arc<AtomicU64>,
) -> Result<Response<ReplyBody>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let (reply, _) = {
        let mut state = state.lock();
        let path = path_of(&path_and_query).to_owned();
        let count = state.counts.entry(path.clone()).or_default();
        let index = *count;
        *count += 1;
        let recorded = Recorded {
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            headers: parts.headers.clone(),
            body,
            index,
        };
        let reply = match state.routes.get(&path) {
            Some(handler) => handler(&recorded),
            None => Reply::status(404).body("no route"),
        };
        state.requests.push(recorded);
        (reply, index)
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if reply.disconnect {
        // An error from the service makes hyper close the connection unanswered.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "scripted disconnect",
        ));
    }
    let head = parts.method == http::Method::HEAD;
    let mut builder = Response::builder().status(reply.status);
    let mut has_date = false;
    for (name, value) in &reply.headers {
        has_date |= name.eq_ignore_ascii_case("date");
        builder = builder.header(name.as_str(), value.as_str());
    }
    if reply.date && !has_date {
        builder = builder.header("date", httpdate::fmt_http_date(SystemTime::now()));
    }
    let sent = if head || reply.status == 304 || reply.status == 204 {
        0
    } else {
        reply.body.len()
    };
    body_bytes.fetch_add(sent as u64, Ordering::Relaxed);
    let body: ReplyBody = match (reply.chunks, reply.cut_after) {
        (_, Some(cut)) => {
            builder = builder.header("content-length", reply.body.len().to_string());
            let first = reply.body.slice(..cut.min(reply.body.len()));
            // The pause lets hyper send the head and the first part before the error
            // aborts the connection; without it the client would see no response.
            let frames = futures_util::stream::unfold(Some(Some(first)), |state| async move {
                match state? {
                    Some(first) => Some((Ok(Frame::data(first)), Some(None))),
                    None => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let cut = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "scripted cut",
                        );
                        Some((Err(cut), None))
                    }
                }
            });
            BodyExt::boxed(StreamBody::new(frames))
        }
        (Some(n), None) => {
            let size = reply.body.len().div_ceil(n).max(1);
            let pieces: Vec<Bytes> = (0..reply.body.len())
                .step_by(size)
                .map(|start| {
                    reply
                        .body
                        .slice(start..(start + size).min(reply.body.len()))
                })
                .collect();
            let delay = reply.chunk_delay;
            let gate = reply.gate.clone();
            let stream = futures_util::stream::unfold(
                (pieces.into_iter(), 0usize),
                move |(mut pieces, sent)| {
                    let gate = gate.clone();
                    async move {
                        let piece = pieces.next()?;
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        // Every chunk after the first takes a permit of the gate; a
                        // closed gate cuts the body (an error, not a shorter body).
                        if let Some(gate) = gate.filter(|_| sent > 0) {
                            match gate.acquire().await {
                                Ok(permit) => permit.forget(),
                                Err(_) => {
                                    let cut = std::io::Error::other("the gate was closed");
                                    return Some((Err(cut), (Vec::new().into_iter(), sent)));
                                }
                            }
                        }
                        Some((Ok(Frame::data(piece)), (pieces, sent + 1)))
                    }
                },
            );
            BodyExt::boxed(StreamBody::new(stream))
        }
        (None, None) => {
            BodyExt::boxed(Full::new(reply.body).map_err(|never: Infallible| match never {}))
        }
    };
    builder
        .body(body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// An HTTP date `offset` seconds from now (negative: in the past).
pub fn http_date(offset: i64) -> String {
    let now = SystemTime::now();
    let at = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}
