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
//! command ended with one). When the run ends, before its last state, the
//! runner (or the worker forwarding for it) puts the command's output:
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
//! POST /api/processes/{id}/kill                        -> ProcessSummary
//! GET  /api/hosts                                      -> HostList
//! DELETE /api/hosts/{name}                             -> 204
//! POST /api/hosts/{name}/heartbeat  Heartbeat          -> HeartbeatReply
//! GET  /                                               -> the web page
//! ```
//!
//! # Workers
//!
//! A worker (`dadd worker`) is a host of the cluster. It registers, and stays
//! alive, by posting a [`Heartbeat`] every [`HeartbeatReply::heartbeat_every_ms`]
//! (the first one registers it under its name). The master answers with the
//! processes the worker is to start ([`HeartbeatReply::start`]) and those it is
//! to kill ([`HeartbeatReply::kill`]).
//!
//! A process is offered to its host until the host lists it in
//! [`Heartbeat::known`]: the worker records a process durably before it starts
//! it, and never starts an id it has recorded, so an answer that was lost on the
//! way is offered again and nothing starts twice. The worker then forwards the
//! states its runners record to `POST /api/processes/{id}/states` (a state the
//! master already has is ignored, so resending after a restart is safe) and puts
//! the run's log when it ends, and forgets the process once both are
//! acknowledged.
//!
//! On the master, a process goes `queued` (no live host can take it) ->
//! `assigned` (a host is chosen) -> `dispatched` (offered to that host) -> the
//! runner's states (`init`, `setup`, `running`, then `success` or `failed`). A
//! host that has not sent a heartbeat for the master's host timeout is down: its
//! `assigned` processes go to another host, and its `dispatched` or started ones
//! show as `lost` until it reports again (they are never started elsewhere).
//!
//! Every error is an [`ErrorBody`]: `{"error": "what was wrong"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `path` (one of the paths below) on the master at `master`, which may have a
/// path prefix of its own (`http://host/dadd` and `http://host/dadd/` are the
/// same master).
pub fn endpoint(master: &url::Url, path: &str) -> Result<url::Url, url::ParseError> {
    // A base without a trailing slash would lose its last segment on join.
    let mut base = master.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(path)
}

/// The path, under the master's URL, where a process's states are posted.
pub fn states_path(id: &str) -> String {
    format!("api/processes/{id}/states")
}

/// The path, under the master's URL, where a failed process's log is put.
pub fn log_path(id: &str) -> String {
    format!("api/processes/{id}/log")
}

/// The path, under the master's URL, where a worker posts its heartbeat.
pub fn heartbeat_path(host: &str) -> String {
    format!("api/hosts/{host}/heartbeat")
}

/// Whether `name` is usable as a host name in a URL path: the same rule as
/// [`valid_process_id`].
pub fn valid_host_name(name: &str) -> bool {
    valid_process_id(name)
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
    /// Why it may wait: no worker is up, or the host its spec names is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A process as `GET /api/processes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// Its id.
    pub id: String,
    /// The spec's name, when it has one.
    pub name: Option<String>,
    /// Where it stands: `queued`, `assigned` or `dispatched` before its runner
    /// reports, then the last state its runner reported (a state reported late
    /// never moves it back), or [`LOST`] while its host is down.
    pub state: String,
    /// The host (worker) it is assigned to; for a run started by hand with
    /// `dadd run --master`, the address its states came from.
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

/// The state a process shows while its host is down after it was offered to it
/// or started there: it may be running, and is never started elsewhere.
pub const LOST: &str = "lost";

/// The body of `POST /api/hosts/{name}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// How many processes the worker runs at once; the master assigns it no
    /// more.
    pub max_processes: u32,
    /// Every process the worker has recorded and not yet forgotten: started,
    /// running, or ended with its states or log not yet acknowledged.
    #[serde(default)]
    pub known: Vec<String>,
    /// What tells this worker from another that takes the same name (a cloned
    /// machine, a copied config): a random id kept in its state directory. The
    /// master refuses a heartbeat of another instance while the host is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The answer to a [`Heartbeat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Processes to start (offered again until the worker lists them as known).
    pub start: Vec<Assignment>,
    /// Processes of this worker to kill (sent again until they end).
    pub kill: Vec<String>,
    /// How often the master wants a heartbeat, in milliseconds; a host silent
    /// for several of these is marked down.
    pub heartbeat_every_ms: u64,
    /// The largest log the master takes (`PUT /api/processes/{id}/log`): a
    /// worker puts the end of a longer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_bytes: Option<u64>,
}

/// A process offered to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Its id: the runner reports under it.
    pub id: String,
    /// The spec, as submitted (normalized): what `dadd run` takes.
    pub spec: Value,
}

/// A host as `GET /api/hosts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Its name.
    pub name: String,
    /// Whether its last heartbeat is within the master's host timeout.
    pub up: bool,
    /// When it first registered.
    pub registered_at: jiff::Timestamp,
    /// When its last heartbeat came.
    pub last_heartbeat: jiff::Timestamp,
    /// How many processes it runs at once.
    pub max_processes: u32,
    /// Its processes that have not ended (assigned, dispatched or started).
    pub processes: Vec<String>,
}

/// The answer to `GET /api/hosts`: by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostList {
    /// The hosts.
    pub hosts: Vec<HostSummary>,
}
