//! The worker's calls to the master: heartbeat, states, logs (see [`crate::api`]).

use std::time::Duration;

use url::Url;

use crate::api::{self, Heartbeat, HeartbeatReply};

/// How long one call may take: a master that hangs must not stop the worker for
/// long (every call is made again on a later tick). A log is given more: see
/// [`log_timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes of a log a slow link is expected to carry each second, at
/// the least, on top of [`CALL_TIMEOUT`].
const LOG_BYTES_PER_SECOND: u64 = 256 * 1024;

/// How long putting a log of `bytes` may take: [`CALL_TIMEOUT`], and a second
/// more for every [`LOG_BYTES_PER_SECOND`] (an 8 MiB log gets 42 s), so that a
/// slow link carries a long log too.
pub(crate) fn log_timeout(bytes: u64) -> Duration {
    CALL_TIMEOUT + Duration::from_secs(bytes.div_ceil(LOG_BYTES_PER_SECOND))
}

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The master cannot be reached, or answers no call: the connection is
    /// refused or reset, its name does not resolve, a gateway says it is down
    /// (502, 503, 504), it asks to slow down (429), or it refuses the worker
    /// itself (401, 403: a token to fix). Every call would fail alike.
    #[error("{0}")]
    Unavailable(String),
    /// No answer within the call's timeout (or a 408).
    #[error("{0}")]
    TimedOut(String),
    /// The master failed this call (500, another 5xx): it is to be made again
    /// later, and says nothing of the other calls.
    #[error("{0}")]
    Failed(String),
    /// The master refuses this call for good (another 4xx): making it again
    /// would get the same answer.
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
            .call(reqwest::Method::POST, &path, body, "application/json", None)
            .await?;
        let body = response.bytes().await.map_err(|error| {
            CallError::Unavailable(format!(
                "the heartbeat's answer: {}",
                crate::explain(&error)
            ))
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
            None,
        )
        .await
        .map(drop)
    }

    /// `PUT /api/processes/{id}/log`, within [`log_timeout`] of its length.
    pub(crate) async fn put_log(&self, id: &str, log: Vec<u8>) -> Result<(), CallError> {
        let timeout = log_timeout(u64::try_from(log.len()).unwrap_or(u64::MAX));
        self.call(
            reqwest::Method::PUT,
            &api::log_path(id),
            log,
            "text/plain; charset=utf-8",
            Some(timeout),
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
        timeout: Option<Duration>,
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
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|error| {
            let message = format!("{method} {path}: {}", crate::explain(&error));
            if error.is_timeout() {
                CallError::TimedOut(message)
            } else {
                CallError::Unavailable(message)
            }
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
        let message = format!("{method} {path}: {status}: {said}");
        use reqwest::StatusCode;
        Err(match status {
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => CallError::Unavailable(message),
            StatusCode::REQUEST_TIMEOUT => CallError::TimedOut(message),
            status if status.is_client_error() => CallError::Refused {
                method,
                path: path.to_owned(),
                status,
                message: said,
            },
            _ => CallError::Failed(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gets_a_second_more_for_every_256_kib() {
        assert_eq!(log_timeout(0), CALL_TIMEOUT);
        assert_eq!(log_timeout(1), CALL_TIMEOUT + Duration::from_secs(1));
        assert_eq!(
            log_timeout(256 * 1024),
            CALL_TIMEOUT + Duration::from_secs(1)
        );
        assert_eq!(
            log_timeout(8 * 1024 * 1024),
            Duration::from_secs(42),
            "the longest log the worker puts"
        );
    }
}
