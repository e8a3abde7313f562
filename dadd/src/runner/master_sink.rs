//! Reporting a run to the master over HTTP: see [`crate::api`] for the calls.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use super::{SinkError, StateChange, StateSink};
use crate::api;

/// How long one call to the master may take: a master that hangs must not hold a
/// run's states (or its end) for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Posts each state of a run to the master, and puts the log of a failed run
/// there: `POST {master}/api/processes/{id}/states`, `PUT
/// {master}/api/processes/{id}/log`, with the cluster's bearer token when there
/// is one.
///
/// A call that fails (the master down, a non-2xx answer) is an error the runner
/// logs; the run goes on, and its log stays in the kept run directory.
#[derive(Debug, Clone)]
pub struct MasterSink {
    client: reqwest::Client,
    states: Url,
    log: Url,
    token: Option<String>,
}

/// Why a [`MasterSink`] cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterSinkError {
    /// The process id cannot go into a URL path.
    #[error(
        "process id {0:?}: use 1 to 128 ASCII letters, digits, `-`, `_` and `.` (not only dots)"
    )]
    BadId(String),
    /// The master's URL cannot be joined with the API's paths.
    #[error("master URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: Url,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client cannot be built (its TLS roots, typically).
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl MasterSink {
    /// A sink for the process `id` on the master at `master` (`http://host:port`
    /// or a URL with a path prefix), sending `token` as a bearer token when given.
    pub fn new(
        master: &Url,
        id: &str,
        token: Option<String>,
    ) -> Result<MasterSink, MasterSinkError> {
        if !api::valid_process_id(id) {
            return Err(MasterSinkError::BadId(id.to_owned()));
        }
        let join = |path: String| {
            api::endpoint(master, &path).map_err(|error| MasterSinkError::BadUrl {
                url: master.clone(),
                reason: error.to_string(),
            })
        };
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(MasterSinkError::Client)?;
        Ok(MasterSink {
            client,
            states: join(api::states_path(id))?,
            log: join(api::log_path(id))?,
            token,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

#[async_trait]
impl StateSink for MasterSink {
    async fn record(&self, change: &StateChange) -> Result<(), SinkError> {
        let body = serde_json::to_vec(change)?;
        self.authorized(self.client.post(self.states.clone()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn upload_log(&self, log: &Path) -> Result<(), SinkError> {
        let file = tokio::fs::File::open(log).await?;
        let length = file.metadata().await?.len();
        self.authorized(self.client.put(self.log.clone()))
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::from(file))
            .send()
            .await?
            .error_for_status()?;
        tracing::info!(url = %self.log, bytes = length, "log uploaded to the master");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_masters_path_prefix() {
        let master = Url::parse("http://127.0.0.1:8080/dadd").unwrap();
        let sink = MasterSink::new(&master, "job-1", None).unwrap();
        assert_eq!(
            sink.states.as_str(),
            "http://127.0.0.1:8080/dadd/api/processes/job-1/states"
        );
        assert_eq!(
            sink.log.as_str(),
            "http://127.0.0.1:8080/dadd/api/processes/job-1/log"
        );
    }

    #[test]
    fn an_id_that_could_change_the_path_is_refused() {
        let master = Url::parse("http://127.0.0.1:8080/").unwrap();
        for id in ["../x", "a/b", "", "..", "a b"] {
            assert!(
                matches!(
                    MasterSink::new(&master, id, None),
                    Err(MasterSinkError::BadId(_))
                ),
                "{id:?}"
            );
        }
    }
}
