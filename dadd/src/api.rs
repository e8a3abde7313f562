//! The runner's side of the master's HTTP API: the JSON it sends, and where.
//!
//! A runner started with `--master URL` reports each state of a run as one
//! [`StateChange`], the same JSON object it writes as a line of `state.jsonl`:
//!
//! ```text
//! POST {master}/api/processes/{id}/states
//! Content-Type: application/json
//! Authorization: Bearer TOKEN            (when the cluster has a token)
//!
//! {"at": "2026-11-28T01:02:03.456Z", "state": "running", "pid": 4242}
//! ```
//!
//! `state` is one of `init` (with `dir`), `setup`, `running` (with `pid`),
//! `success`, `failed` (with `reason`, and `exit_code` or `signal` when the
//! command ended with one). After a failure the runner uploads the command's
//! output:
//!
//! ```text
//! PUT {master}/api/processes/{id}/log
//! Content-Type: text/plain; charset=utf-8
//!
//! <output.log, as it is>
//! ```
//!
//! Any 2xx answer is a success; the body of the answer is not read. The master
//! (`dadd master`, see [`crate::master`]) serves these routes with the same types,
//! and the ones clients read:
//!
//! ```text
//! POST /api/processes           a spec (JSON or YAML)  -> 201 Submitted
//! GET  /api/processes                                  -> ProcessList
//! GET  /api/processes/{id}                             -> ProcessDetail
//! GET  /api/processes/{id}/log                         -> the log, text/plain
//! PUT  /files/{path}            the file's bytes       -> 201 (204 when replaced)
//! GET  /files/{path}                                   -> the file's bytes
//! ```
//!
//! Every error is an [`ErrorBody`]: `{"error": "what was wrong"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The path, under the master's URL, where a process's states are posted.
pub fn states_path(id: &str) -> String {
    format!("api/processes/{id}/states")
}

/// The path, under the master's URL, where a failed process's log is put.
pub fn log_path(id: &str) -> String {
    format!("api/processes/{id}/log")
}

/// Whether `id` is usable as a process id in a URL path: 1 to 128 ASCII letters,
/// digits, `-`, `_` and `.`, not only dots.
pub fn valid_process_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.chars().any(|c| c != '.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A state of a run, in the order they happen: [`Init`](State::Init),
/// [`Setup`](State::Setup), [`Running`](State::Running), then
/// [`Success`](State::Success) or [`Failed`](State::Failed) (which may come
/// straight after any other when setup fails).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
#[non_exhaustive]
pub enum State {
    /// The run directory exists.
    Init {
        /// The run directory.
        dir: PathBuf,
    },
    /// Writing the spec and config, fetching the artifacts.
    Setup,
    /// The command started.
    Running {
        /// Its process id (also its process group's).
        pid: u32,
    },
    /// The command exited with status 0.
    Success,
    /// Setup failed, or the command exited with another status, was killed by a
    /// signal, or ran out of time.
    Failed {
        /// The command's exit status, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// The signal that ended it, when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Why, in words.
        reason: String,
    },
}

impl State {
    /// Its lower-case name, as written in `state`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Init { .. } => "init",
            State::Setup => "setup",
            State::Running { .. } => "running",
            State::Success => "success",
            State::Failed { .. } => "failed",
        }
    }
}

/// A state and when the run entered it: one line of `state.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// When.
    pub at: jiff::Timestamp,
    /// The state.
    #[serde(flatten)]
    pub state: State,
}

impl StateChange {
    /// `state`, now.
    pub fn now(state: State) -> StateChange {
        StateChange {
            at: jiff::Timestamp::now(),
            state,
        }
    }
}

/// The answer to `POST /api/processes`: the new process's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The process id, for `GET /api/processes/{id}`.
    pub id: String,
}

/// A process as `GET /api/processes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// Its id.
    pub id: String,
    /// The spec's name, when it has one.
    pub name: Option<String>,
    /// Its last state: `init` when submitted, then the last one its runner
    /// reported.
    pub state: String,
    /// The address its states came from.
    pub host: Option<String>,
    /// Its command's pid, once running.
    pub pid: Option<u32>,
    /// When the master first knew of it.
    pub created_at: jiff::Timestamp,
    /// When it last changed.
    pub updated_at: jiff::Timestamp,
    /// Its command's exit status, once it exited (0 on success).
    pub exit_code: Option<i32>,
    /// The signal that ended its command, when one did.
    pub signal: Option<i32>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

/// The answer to `GET /api/processes`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    /// The processes.
    pub processes: Vec<ProcessSummary>,
}

/// The answer to `GET /api/processes/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub process: ProcessSummary,
    /// The spec, as submitted (normalized); none for a process first known by
    /// its states.
    pub spec: Option<Value>,
    /// Every state its runner reported, in the order the master received them.
    pub states: Vec<StateChange>,
    /// Whether its log is at `GET /api/processes/{id}/log`.
    pub has_log: bool,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}
