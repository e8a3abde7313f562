//! The worker's calls to the master: heartbeat, states, logs (see [`crate::api`]).

use std::time::Duration;

use url::Url;

use crate::api::{self, Heartbeat, HeartbeatReply};

/// How long one call may take: a master that hangs must not stop the worker for
/// long (every call is made again on a later tick).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The master is down, hangs, fails (5xx), or refuses the worker itself
    /// (401, 403: a token to fix): the same call is to be made again later.
    #[error("{0}")]
    Unavailable(String),
    /// The master refuses this call for good (another 4xx): making it again would
    /// get the same answer.
    #[error("{method} {path}: {status}: {message}")]
    Refused {
        /// The call's method.
        method: reqwest::Method,
        /// The call's path.
        path: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// What the master said: its [`api::ErrorBody`]'s message, else the
        /// answer's text.
        message: String,
    },
}

/// The master, as a worker calls it.
#[derive(Debug, Clone)]
pub(crate) struct MasterClient {
    client: reqwest::Client,
    master: Url,
    token: Option<String>,
}

impl MasterClient {
    /// A client of the master at `master`, with the cluster's `token`.
    pub(crate) fn new(master: Url, token: Option<String>) -> Result<MasterClient, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        Ok(MasterClient {
            client,
            master,
            token,
        })
    }

    /// The master's URL.
    pub(crate) fn url(&self) -> &Url {
        &self.master
    }

    /// `POST /api/hosts/{host}/heartbeat`.
    pub(crate) async fn heartbeat(
        &self,
        host: &str,
        heartbeat: &Heartbeat,
    ) -> Result<HeartbeatReply, CallError> {
        let path = api::heartbeat_path(host);
        let body = serde_json::to_vec(heartbeat).map_err(|error| CallError::Refused {
            method: reqwest::Method::POST,
            path: path.clone(),
            status: reqwest::StatusCode::BAD_REQUEST,
            message: error.to_string(),
        })?;
        let response = self
            .call(reqwest::Method::POST, &path, body, "application/json")
            .await?;
        let body = response.bytes().await.map_err(|error| {
            CallError::Unavailable(format!("the heartbeat's answer: {}", chain(&error)))
        })?;
        serde_json::from_slice(&body)
            .map_err(|error| CallError::Unavailable(format!("the heartbeat's answer: {error}")))
    }

    /// `POST /api/processes/{id}/states` with one line of a state file, as is.
    pub(crate) async fn post_state(&self, id: &str, line: &str) -> Result<(), CallError> {
        self.call(
            reqwest::Method::POST,
            &api::states_path(id),
            line.as_bytes().to_vec(),
            "application/json",
        )
        .await
        .map(drop)
    }

    /// `PUT /api/processes/{id}/log`.
    pub(crate) async fn put_log(&self, id: &str, log: Vec<u8>) -> Result<(), CallError> {
        self.call(
            reqwest::Method::PUT,
            &api::log_path(id),
            log,
            "text/plain; charset=utf-8",
        )
        .await
        .map(drop)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<reqwest::Response, CallError> {
        let url = api::endpoint(&self.master, path).map_err(|error| CallError::Refused {
            method: method.clone(),
            path: path.to_owned(),
            status: reqwest::StatusCode::BAD_REQUEST,
            message: error.to_string(),
        })?;
        let mut request = self
            .client
            .request(method.clone(), url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| {
            CallError::Unavailable(format!("{method} {path}: {}", chain(&error)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let said = response.text().await.unwrap_or_default();
        let said = match serde_json::from_str::<api::ErrorBody>(&said) {
            Ok(body) => body.error,
            Err(_) => said.trim().to_owned(),
        };
        Err(
            if status.is_client_error()
                && !matches!(
                    status,
                    reqwest::StatusCode::UNAUTHORIZED
                        | reqwest::StatusCode::FORBIDDEN
                        | reqwest::StatusCode::REQUEST_TIMEOUT
                        | reqwest::StatusCode::TOO_MANY_REQUESTS
                )
            {
                CallError::Refused {
                    method,
                    path: path.to_owned(),
                    status,
                    message: said,
                }
            } else {
                CallError::Unavailable(format!("{method} {path}: {status}: {said}"))
            },
        )
    }
}

/// An error and its sources, `: `-separated (reqwest's own message leaves out
/// why: refused, reset, timed out).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
