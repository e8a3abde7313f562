//! The master's HTTP API: [`routes`] is its table of contents, one handler per
//! endpoint below it. The JSON types are in [`crate::api`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use super::files::{FileError, FileStore, Put};
use super::store::{Store, StoreError};
use crate::api::{
    self, ErrorBody, Heartbeat, HeartbeatReply, HostList, ProcessDetail, ProcessList,
    ProcessSummary, StateChange, Submitted,
};
use crate::spec::{Format, Spec, SpecError};

/// The largest spec `POST /api/processes` takes.
const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) files: FileStore,
    pub(crate) token: Option<String>,
    pub(crate) max_log_bytes: usize,
    pub(crate) heartbeat_every: std::time::Duration,
}

type Master = State<Arc<Shared>>;

/// The web page (`GET /`) and the API, with the bearer token checked in front
/// of every API route when one is configured.
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    let max_log_bytes = shared.max_log_bytes;
    let api = Router::new()
        .route("/api/processes", post(submit).get(list))
        .route("/api/processes/{id}", get(show))
        .route("/api/processes/{id}/states", post(report_state))
        .route("/api/processes/{id}/kill", post(kill))
        .route("/api/hosts", get(hosts))
        .route("/api/hosts/{name}", delete(remove_host))
        .route("/api/hosts/{name}/heartbeat", post(heartbeat))
        .route(
            "/api/processes/{id}/log",
            put(put_log)
                .layer(DefaultBodyLimit::max(max_log_bytes))
                .get(get_log),
        )
        .route("/files/{*path}", put(put_file).get(get_file))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(MAX_SPEC_BYTES))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    // The page holds no data (its script reads the API with the token the user
    // gives it), so it is served without the token: it is where the user types
    // it.
    Router::new()
        .route("/", get(page).fallback(no_method))
        .merge(api)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            refuse_other_sites,
        ))
        .with_state(shared)
}

/// Refuses what a web page of another site could make a browser send: a
/// request whose `Origin` is not the master's own (a form or a `fetch` that
/// needs no preflight, such as a `text/plain` submit or a kill), and, when the
/// master has no token, a request for a host name that is not loopback (DNS
/// rebinding: another site's name resolving to 127.0.0.1, so that its pages
/// are same-origin with the master). Clients that are not browsers send
/// neither header, or send them right.
async fn refuse_other_sites(State(master): Master, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        if origin_authority(origin).as_deref() != host {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a page from {origin} cannot call this master: only its own page ({}) can",
                    host.unwrap_or("its address")
                ),
            )
            .into_response();
        }
    }
    if master.token.is_none()
        && let Some(host) = host
        && !is_loopback_name(host)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this master has no token, so it answers only to a loopback address \
                 (127.0.0.1, [::1], localhost), not to {host:?}"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// `host[:port]` of an origin (`http://127.0.0.1:8440`), as a `Host` header
/// names it (the port only when it is not the scheme's default).
fn origin_authority(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Whether the host of a `Host` header (`127.0.0.1:8440`, `[::1]:8440`,
/// `localhost`) is a loopback address or `localhost`.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NoProcess(_) | StoreError::NoHost(_) => {
                ApiError::new(StatusCode::NOT_FOUND, error.to_string())
            }
            StoreError::CannotKill { .. } | StoreError::HostTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, error.to_string())
            }
            _ => {
                tracing::error!(%error, "storage failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }
        }
    }
}

impl From<FileError> for ApiError {
    fn from(error: FileError) -> ApiError {
        let status = match &error {
            FileError::BadPath { .. } => StatusCode::BAD_REQUEST,
            FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FileError::Body(_) => StatusCode::BAD_REQUEST,
            FileError::Conflict(_) => StatusCode::CONFLICT,
            FileError::NotFound(_) => StatusCode::NOT_FOUND,
            FileError::Io { .. } => {
                tracing::error!(%error, "file store failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

/// The process id in the path, when it is one the API takes.
fn process_id(id: String) -> Result<String, ApiError> {
    if api::valid_process_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!(
            "process id {id:?}: use 1 to 128 ASCII letters, digits, `-`, `_` and `.` (not only dots)"
        )))
    }
}

/// The host name in the path, when it is one the API takes.
fn host_name(name: String) -> Result<String, ApiError> {
    if api::valid_host_name(&name) {
        Ok(name)
    } else {
        Err(ApiError::bad_request(format!(
            "host name {name:?}: use 1 to 128 ASCII letters, digits, `-`, `_` and `.` (not only dots)"
        )))
    }
}

/// A JSON body of the wrong shape is as bad a request as one that does not
/// parse: one status for both, and a message that says which body.
fn json_body<T>(what: &str, body: Result<axum::Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => {
            let status = match rejection {
                JsonRejection::JsonDataError(_) => StatusCode::BAD_REQUEST,
                _ => rejection.status(),
            };
            Err(ApiError::new(
                status,
                format!("{what}: {}", rejection.body_text()),
            ))
        }
    }
}

/// Refuses a call without the configured bearer token.
async fn require_token(State(master): Master, request: Request, next: Next) -> Response {
    let Some(token) = &master.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if same_secret(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is wrong").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this master needs a bearer token: send `Authorization: Bearer TOKEN`",
        )
        .into_response(),
    }
}

/// Compares two secrets in a time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `POST /api/processes`: a spec (JSON, or YAML by its content type) becomes a
/// queued process, assigned to a host when one has room.
async fn submit(
    State(master): Master,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Submitted>), ApiError> {
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|error| ApiError::bad_request(format!("the spec is not UTF-8: {error}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let format = if content_type.contains("json") {
        Format::Json
    } else if content_type.contains("yaml") {
        Format::Yaml
    } else {
        Format::Detect
    };
    let spec = Spec::parse(text, format)
        .map_err(|error: SpecError| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    let id = master.store.submit(&spec).await?;
    tracing::info!(%id, name = spec.name.as_deref(), "process submitted");
    let warning = match master.store.hosts().await {
        Ok(hosts) => match &spec.host {
            Some(name) if !hosts.iter().any(|host| &host.name == name) => Some(format!(
                "no host {name} has registered with this master: the process waits for it"
            )),
            Some(name) if !hosts.iter().any(|host| &host.name == name && host.up) => {
                Some(format!("host {name} is down: the process waits for it"))
            }
            None if !hosts.iter().any(|host| host.up) => Some(
                "no worker is up: the process waits in the queue until one sends a heartbeat \
                 (dadd worker, or dadd up)"
                    .to_owned(),
            ),
            _ => None,
        },
        Err(error) => {
            tracing::warn!(%error, "cannot list the hosts to warn a submit");
            None
        }
    };
    Ok((StatusCode::CREATED, axum::Json(Submitted { id, warning })))
}

/// `GET /api/processes`: every process, newest first.
async fn list(State(master): Master) -> Result<axum::Json<ProcessList>, ApiError> {
    let processes = master.store.list().await?;
    Ok(axum::Json(ProcessList { processes }))
}

/// `GET /api/processes/{id}`: a process, its spec and its states.
async fn show(
    State(master): Master,
    Path(id): Path<String>,
) -> Result<axum::Json<ProcessDetail>, ApiError> {
    let id = process_id(id)?;
    match master.store.show(&id).await? {
        Some(detail) => Ok(axum::Json(detail)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no process {id}"),
        )),
    }
}

/// `POST /api/processes/{id}/states`: a runner's state report.
async fn report_state(
    State(master): Master,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    change: Result<axum::Json<StateChange>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let id = process_id(id)?;
    let change = json_body("the state change", change)?;
    let host = peer.ip().to_string();
    master.store.record_state(&id, &change, &host).await?;
    tracing::info!(%id, state = change.state.name(), %host, "state reported");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/processes/{id}/kill`: a kill, done now or by the process's worker
/// at its next heartbeat; the process as it is now.
async fn kill(
    State(master): Master,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<ProcessSummary>), ApiError> {
    let id = process_id(id)?;
    let process = master.store.kill(&id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(process)))
}

/// `GET /api/hosts`: every host, by name.
async fn hosts(State(master): Master) -> Result<axum::Json<HostList>, ApiError> {
    let hosts = master.store.hosts().await?;
    Ok(axum::Json(HostList { hosts }))
}

/// `DELETE /api/hosts/{name}`: forgets a host; its unstarted work moves on.
async fn remove_host(
    State(master): Master,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = host_name(name)?;
    master.store.remove_host(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/hosts/{name}/heartbeat`: a worker is alive; what it is to start
/// and kill.
async fn heartbeat(
    State(master): Master,
    Path(name): Path<String>,
    body: Result<axum::Json<Heartbeat>, JsonRejection>,
) -> Result<axum::Json<HeartbeatReply>, ApiError> {
    let name = host_name(name)?;
    let heartbeat = json_body("the heartbeat", body)?;
    let reply = master
        .store
        .heartbeat(
            &name,
            &heartbeat,
            master.heartbeat_every,
            u64::try_from(master.max_log_bytes).unwrap_or(u64::MAX),
        )
        .await?;
    if !reply.start.is_empty() || !reply.kill.is_empty() {
        tracing::info!(
            host = %name,
            start = reply.start.len(),
            kill = reply.kill.len(),
            "work for a host"
        );
    }
    Ok(axum::Json(reply))
}

/// `PUT /api/processes/{id}/log`: a run's log.
async fn put_log(
    State(master): Master,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let id = process_id(id)?;
    let body = body?;
    master.store.put_log(&id, &body).await?;
    tracing::info!(%id, bytes = body.len(), "log stored");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/processes/{id}/log`: the log, as the runner put it.
async fn get_log(State(master): Master, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = process_id(id)?;
    match master.store.log(&id).await? {
        Some(log) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
        }
        None if master.store.show(&id).await?.is_none() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no process {id}"),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("process {id} has no log (yet: it is put there when its run ends)"),
        )),
    }
}

/// `PUT /files/{path}`: stores a file, streamed to disk.
async fn put_file(
    State(master): Master,
    Path(path): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    Ok(
        match master.files.put(&path, body.into_data_stream()).await? {
            Put::Created => StatusCode::CREATED,
            Put::Replaced => StatusCode::NO_CONTENT,
        },
    )
}

/// `GET /files/{path}`: a stored file, streamed from disk.
async fn get_file(State(master): Master, Path(path): Path<String>) -> Result<Response, ApiError> {
    let (file, length) = master.files.open(&path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// The web page: processes, hosts, a process's states and log.
const PAGE: &str = include_str!("page.html");

/// What the page may do: run its own inline script and style, and call this
/// master; nothing from elsewhere, and no framing by other sites.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `GET /`: the web page.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// A method the path does not take.
async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Any other path.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {}", uri.path()),
    )
}
