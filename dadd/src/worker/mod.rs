//! `dadd worker`: a host of the cluster, which starts the processes the master
//! assigns it and tells the master how they go.
//!
//! # Flow
//!
//! Three loops run side by side, so that none waits for another: the
//! heartbeat, forwarding the states, and putting the logs of the runs that
//! ended.
//!
//! **Heartbeat.** The worker posts a [`Heartbeat`] to the master every
//! [`HeartbeatReply::heartbeat_every_ms`] (every second until the master first
//! answers), listing every process it has recorded, and its instance id (see
//! below). Each answer names processes to start and processes to kill (see
//! [`crate::api`] for the protocol). However long forwarding takes (hundreds of
//! records after an outage of the master, a long log on a slow link), the
//! heartbeats go out on time, and the master does not take the host for down.
//!
//! **Start.** A process is recorded durably first (its spec in
//! `STATE_DIR/processes/ID/`, synced, renamed into place), then its runner is
//! started: `dadd run` detached, in a session of its own, with its pid, its
//! states and its log in the record (`--pid-file`, `--state-file`,
//! `--log-copy`) and no master of its own: the worker alone talks to the
//! master. An id that is recorded, or was forgotten within a week (a tombstone
//! in the state directory), is never started again: a master that offers a
//! forgotten id again (its database restored from a backup, a last state it
//! refused) gets a warning, once, and the id is not listed as known. No more
//! than [`WorkerConfig::max_processes`] run at once; the processes left over
//! are not recorded, and the master offers them again.
//!
//! **Forward.** Every tick (a quarter of a second) the worker reads each
//! record's state file and posts the lines the master has not acknowledged yet,
//! in order, counting the acknowledged ones in the record. Once the run ended,
//! the states before the last one go first, then the end of the run's log (at
//! most [`MAX_LOG_BYTES`], or less when the master's
//! [`HeartbeatReply::max_log_bytes`] says so), then the last state: whoever sees
//! at the master that the run ended finds its log there. The runs whose log is
//! to be put are forwarded by a loop of their own, one at a time, so that a
//! long log on a slow link (given a second more than other calls for every
//! 256 KiB) holds back the ends of other runs at most, never their other
//! states. The runner keeps the log in the record (`--log-copy`) before its
//! last state, so a success's log outlives its run directory. Once the last
//! state and the log are acknowledged, the record is removed, and a tombstone
//! of its id kept.
//!
//! **Watch.** A runner that is gone without a last state (SIGKILLed, or the
//! machine restarted) gets a `failed` state from the worker; so does a record
//! whose runner never wrote its pid within [`NEVER_STARTED_AFTER`]. A runner is
//! told from other processes by its command line (`--id ID`), since pids are
//! reused. A dead runner's command, when it still runs (told by its start
//! time, which its `running` state gives), has nobody to end it or report it:
//! the worker terminates its process group (SIGTERM, then SIGKILL after
//! [`COMMAND_GRACE`]) and says so in the `failed` state.
//!
//! **Kill.** A process the master asks to kill gets SIGTERM to its runner, which
//! terminates the command's process group and records `failed` with the signal.
//!
//! # Failures
//!
//! The record is the truth: a master that is down or fails loses nothing (the
//! worker warns once per outage and tries again on the next tick); a worker that
//! is restarted, or killed, finds every process in its state directory and goes
//! on where it was. The runners are not the worker's children: stopping or
//! killing the worker never touches a running process.
//!
//! A master that cannot be reached (the connection refused or reset, its name
//! not resolved, a gateway saying it is down) or that hangs ends the tick's
//! forwarding (of the loop that found it): every other call would fail the
//! same. A failure that concerns one record (its log timing out, a 500 for
//! its call, a refusal) holds back that record alone: it is tried again later
//! (after a pause that doubles up to [`RETRY_AT_MOST`]; a refusal is for good,
//! and the record goes on without what was refused), and the other records go
//! on.
//!
//! A worker keeps a random instance id in its state directory and sends it in
//! every heartbeat: the master refuses (409) the heartbeats of a second worker
//! that takes the name of one that is up (a cloned machine, a copied config).
//! The refused worker says so once, starts nothing, and tries again every
//! heartbeat.
//!
//! # Example
//!
//! ```no_run
//! use dadd::worker::{Worker, WorkerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let master = "http://dadd-master.example.com:8440".parse()?;
//! let config = WorkerConfig::new("node-7", master, "/var/lib/dadd/worker".into());
//! let worker = Worker::new(config)?;
//! worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

mod client;
mod records;
mod runners;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::api::{self, Assignment, Heartbeat, HeartbeatReply, State};
use client::{CallError, MasterClient};
use records::{OpenError, Record, Records};
use runners::Liveness;

/// How often the worker looks at its records and forwards new states.
pub const TICK: Duration = Duration::from_millis(250);
/// How often it sends a heartbeat until the master says how often it wants one.
pub const FIRST_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a record may wait for its runner's pid before it is failed as never
/// started (its worker stopped between recording it and starting it).
pub const NEVER_STARTED_AFTER: Duration = Duration::from_secs(30);
/// The most of a run's log that is put on the master: its end.
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;
/// How long a dead runner's command is given to end on SIGTERM before SIGKILL.
pub const COMMAND_GRACE: Duration = Duration::from_secs(3);
/// The longest pause before a record whose call failed is forwarded again.
pub const RETRY_AT_MOST: Duration = Duration::from_secs(60);
/// The first pause before a record whose call failed is forwarded again.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// How a worker is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Its name on the master (see [`api::valid_host_name`]).
    pub name: String,
    /// The master.
    pub master: Url,
    /// The cluster's bearer token, also handed to the runners.
    pub token: Option<String>,
    /// Where it records its processes.
    pub state_dir: PathBuf,
    /// The runners' artifact cache (default: theirs).
    pub cache_dir: Option<PathBuf>,
    /// The Redis the runners share behind their cache.
    pub redis: Option<String>,
    /// Bytes of copies of cached artifacts the runners make ahead (default: none).
    pub prepared_copies: Option<u64>,
    /// The host's config file, passed on to the runners (for `[smtp]`).
    pub host_config: Option<PathBuf>,
    /// How many processes run at once.
    pub max_processes: u32,
    /// The `dadd` binary that runs the processes (`dadd run`); by default the
    /// current executable.
    pub program: PathBuf,
}

impl WorkerConfig {
    /// A worker named `name` for the master at `master`, recording its processes
    /// in `state_dir`, running as many processes at once as there are CPUs.
    pub fn new(name: impl Into<String>, master: Url, state_dir: PathBuf) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            master,
            token: None,
            state_dir,
            cache_dir: None,
            redis: None,
            prepared_copies: None,
            host_config: None,
            max_processes: default_max_processes(),
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dadd")),
        }
    }
}

/// The machine's host name, the default name of its worker.
pub fn default_name() -> Option<String> {
    hostname::get().ok()?.into_string().ok()
}

/// The number of CPUs, the default of [`WorkerConfig::max_processes`].
pub fn default_max_processes() -> u32 {
    std::thread::available_parallelism()
        .map(|count| u32::try_from(count.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// `$XDG_STATE_HOME/dadd/worker`, else `~/.local/state/dadd/worker`.
pub fn default_state_dir() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let state = nonempty("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|home| PathBuf::from(home).join(".local/state")))?;
    Some(state.join("dadd/worker"))
}

/// Why a worker cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The name cannot be used in the master's URLs.
    #[error(
        "host name {0:?}: use 1 to 128 ASCII letters, digits, `-`, `_` and `.` (not only dots)"
    )]
    BadName(String),
    /// Zero processes at once.
    #[error("max_processes must be at least 1")]
    NoProcesses,
    /// The state directory cannot be made or read.
    #[error("the state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another worker uses the state directory.
    #[error("the state directory {}: another worker uses it", .0.display())]
    StateDirInUse(PathBuf),
    /// The HTTP client cannot be built (its TLS roots, typically).
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A worker: see the [module documentation](self).
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    records: Records,
    master: MasterClient,
    /// Processes whose runner was sent SIGTERM by this worker.
    terminated: Mutex<HashSet<String>>,
    /// Whether the master is known to be unreachable (its outage was logged).
    master_down: AtomicBool,
    /// Whether the master refuses the heartbeats (the refusal was logged).
    heartbeat_refused: AtomicBool,
    /// The most of a log the master takes, as its last heartbeat reply said
    /// (at most [`MAX_LOG_BYTES`]).
    max_log_bytes: AtomicU64,
    /// Whether a heartbeat has been answered, and with it the master's limits
    /// ([`max_log_bytes`](Self::max_log_bytes)) are known.
    limits_known: AtomicBool,
    /// Forgotten ids the master offered again (each was warned of once).
    offered_again: Mutex<HashMap<String, Instant>>,
    /// The records whose forwarding failed, and when each is tried again.
    retries: Mutex<Retries>,
    /// The records [`ending`](Worker::ending) forwards now.
    putting_logs: Mutex<HashSet<String>>,
}

impl Worker {
    /// A worker set up as `config` says; its state directory is made (and the
    /// leftovers of a worker stopped mid-way cleared).
    pub fn new(mut config: WorkerConfig) -> Result<Worker, WorkerError> {
        if !api::valid_host_name(&config.name) {
            return Err(WorkerError::BadName(config.name));
        }
        if config.max_processes == 0 {
            return Err(WorkerError::NoProcesses);
        }
        let state_dir_error = |path: &Path| {
            let path = path.to_owned();
            move |source| WorkerError::StateDir { path, source }
        };
        // The runners run in /: every path they are given is absolute.
        config.state_dir =
            std::path::absolute(&config.state_dir).map_err(state_dir_error(&config.state_dir))?;
        for path in [&mut config.cache_dir, &mut config.host_config]
            .into_iter()
            .flatten()
        {
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
        let records = Records::open(&config.state_dir).map_err(|error| match error {
            OpenError::Locked(_) => WorkerError::StateDirInUse(config.state_dir.clone()),
            OpenError::Io(source) => WorkerError::StateDir {
                path: config.state_dir.clone(),
                source,
            },
        })?;
        let master = MasterClient::new(config.master.clone(), config.token.clone())
            .map_err(WorkerError::Client)?;
        Ok(Worker {
            config,
            records,
            master,
            terminated: Mutex::default(),
            master_down: AtomicBool::new(false),
            heartbeat_refused: AtomicBool::new(false),
            max_log_bytes: AtomicU64::new(MAX_LOG_BYTES),
            limits_known: AtomicBool::new(false),
            offered_again: Mutex::default(),
            retries: Mutex::default(),
            putting_logs: Mutex::default(),
        })
    }

    /// The worker's config (paths made absolute).
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs until `shutdown` completes, then returns, leaving the runners alone.
    /// A process being recorded and started when `shutdown` completes is started
    /// first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        tracing::info!(
            name = %self.config.name,
            instance = %self.records.instance(),
            master = %self.master.url(),
            state_dir = %self.config.state_dir.display(),
            max_processes = self.config.max_processes,
            "worker started"
        );
        let stop = CancellationToken::new();
        let mut work = std::pin::pin!(self.work(&stop));
        tokio::select! {
            result = &mut work => return result,
            () = shutdown => stop.cancel(),
        }
        let result = work.await;
        tracing::info!("worker stopped; its runners go on");
        result
    }

    /// The heartbeat, forwarding, and the logs, side by side, until `stop` is
    /// cancelled (or the state directory cannot be read).
    async fn work(&self, stop: &CancellationToken) -> Result<(), WorkerError> {
        tokio::try_join!(self.beat(stop), self.forwarding(stop), self.ending(stop)).map(drop)
    }

    /// Sends a heartbeat every time the master wants one, and starts and kills
    /// what it answers.
    async fn beat(&self, stop: &CancellationToken) -> Result<(), WorkerError> {
        let mut every = FIRST_HEARTBEAT_EVERY;
        while !stop.is_cancelled() {
            // From when the heartbeat goes: a slow answer does not delay the next.
            let sent = Instant::now();
            let known = self.ids()?;
            // Not interrupted by `stop` either: the master may have handed out
            // processes in its answer, which would otherwise wait for this host
            // to come back (the call has a timeout).
            if let Some(reply) = self.heartbeat(known.clone()).await {
                every = Duration::from_millis(reply.heartbeat_every_ms)
                    .clamp(Duration::from_millis(50), Duration::from_secs(3600));
                let max_log_bytes = reply.max_log_bytes.unwrap_or(MAX_LOG_BYTES);
                self.max_log_bytes
                    .store(max_log_bytes.min(MAX_LOG_BYTES), Ordering::Relaxed);
                self.limits_known.store(true, Ordering::Release);
                // Not interrupted by `stop`: a process recorded is started.
                self.start(reply.start, self.active(&known)).await;
                self.kill(&reply.kill);
            }
            until(stop, tokio::time::sleep_until(sent + every)).await;
        }
        Ok(())
    }

    /// Every tick, watches the records and forwards what the master lacks.
    /// The runs whose log is to be put are left to [`ending`](Worker::ending).
    async fn forwarding(&self, stop: &CancellationToken) -> Result<(), WorkerError> {
        while !stop.is_cancelled() {
            let records = self.watch().await?;
            lock(&self.retries).keep_only(&records);
            let records = records
                .into_iter()
                .filter(|(id, record)| {
                    !needs_log(record)
                        && !lock(&self.putting_logs).contains(id)
                        && lock(&self.retries).due(id)
                })
                .collect();
            until(stop, self.forward(records)).await;
            until(stop, tokio::time::sleep(TICK)).await;
        }
        Ok(())
    }

    /// Every tick, forwards the runs that ended and whose log is to be put:
    /// one at a time, beside [`forwarding`](Worker::forwarding), so that a long
    /// log on a slow link holds back the ends of other runs (for as long as its
    /// timeout), never their other states.
    async fn ending(&self, stop: &CancellationToken) -> Result<(), WorkerError> {
        while !stop.is_cancelled() {
            // Not before the master said how large a log it takes: a longer one
            // would be refused, for good.
            if !self.limits_known.load(Ordering::Acquire) {
                until(stop, tokio::time::sleep(TICK)).await;
                continue;
            }
            let mut records = Vec::new();
            for id in self.ids()? {
                if !lock(&self.retries).due(&id) {
                    continue;
                }
                // Marked before it is read: forwarding leaves it alone from then on.
                lock(&self.putting_logs).insert(id.clone());
                match Record::read(self.records.dir(&id)) {
                    Ok(record) if needs_log(&record) => records.push((id, record)),
                    // Forwarding reads it, and says so when it cannot.
                    _ => {
                        lock(&self.putting_logs).remove(&id);
                    }
                }
            }
            until(stop, self.forward(records)).await;
            lock(&self.putting_logs).clear();
            until(stop, tokio::time::sleep(TICK)).await;
        }
        Ok(())
    }

    /// The ids of every record.
    fn ids(&self) -> Result<Vec<String>, WorkerError> {
        self.records.ids().map_err(|source| WorkerError::StateDir {
            path: self.config.state_dir.clone(),
            source,
        })
    }

    /// How many of the records `ids` have not ended (one that cannot be read
    /// counts: it may be running).
    fn active(&self, ids: &[String]) -> usize {
        ids.iter()
            .filter(|id| Record::read(self.records.dir(id)).is_ok_and(|record| !record.ended()))
            .count()
    }

    /// Reads every record, and gives a `failed` state to those whose runner is
    /// gone without one.
    async fn watch(&self) -> Result<Vec<(String, Record)>, WorkerError> {
        let ids = self.ids()?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            match self.read_and_watch(&id).await {
                Ok(record) => records.push((id, record)),
                Err(error) => tracing::warn!(%id, %error, "cannot read the process's record"),
            }
        }
        Ok(records)
    }

    async fn read_and_watch(&self, id: &str) -> std::io::Result<Record> {
        let record = Record::read(self.records.dir(id))?;
        if record.ended() {
            return Ok(record);
        }
        let runner = record.runner_pid();
        match runner {
            Some(pid) if runners::liveness(pid, id) != Liveness::Gone => return Ok(record),
            Some(_) => {}
            None => {
                let age = record
                    .recorded_at()
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                    .unwrap_or_default();
                if age < NEVER_STARTED_AFTER {
                    return Ok(record);
                }
            }
        }
        // The runner writes its last state before it exits: read again, now that
        // it is gone, before saying it has none.
        let record = Record::read(self.records.dir(id))?;
        if record.ended() {
            return Ok(record);
        }
        let reason = match runner {
            Some(pid) => {
                let died = format!(
                    "the runner died: pid {pid} is gone without a final state (killed, or the machine restarted)"
                );
                match record.command() {
                    // Nobody else would end it, or say how it ended.
                    Some((command, at)) if runners::is_command(command, at) => {
                        tracing::warn!(%id, command, "the runner died: terminating its command");
                        runners::terminate_group(command, COMMAND_GRACE).await;
                        format!("{died}; its command (pid {command}) was terminated")
                    }
                    _ => died,
                }
            }
            None => format!(
                "never started: no runner wrote its pid within {}",
                humantime::format_duration(NEVER_STARTED_AFTER)
            ),
        };
        tracing::warn!(%id, %reason, "process failed");
        record.append(failed(reason)).await
    }

    /// Posts a heartbeat listing the records `known`; `None` when the master
    /// did not answer it, or refused it.
    async fn heartbeat(&self, known: Vec<String>) -> Option<HeartbeatReply> {
        let heartbeat = Heartbeat {
            max_processes: self.config.max_processes,
            known,
            instance: Some(self.records.instance().to_owned()),
        };
        match self.master.heartbeat(&self.config.name, &heartbeat).await {
            Ok(reply) => {
                self.answered();
                if self.heartbeat_refused.swap(false, Ordering::Relaxed) {
                    tracing::info!(master = %self.master.url(), "the master takes the heartbeats again");
                }
                Some(reply)
            }
            Err(CallError::Refused {
                status, message, ..
            }) => {
                self.answered();
                if !self.heartbeat_refused.swap(true, Ordering::Relaxed) {
                    let why = if status == reqwest::StatusCode::CONFLICT {
                        "the master refuses the heartbeats: another worker is up under this name; starting nothing, trying again"
                    } else {
                        "the master refuses the heartbeats: starting nothing, trying again"
                    };
                    tracing::error!(master = %self.master.url(), %status, %message, "{why}");
                }
                None
            }
            Err(error) => {
                self.unavailable(&error);
                None
            }
        }
    }

    /// Records and starts the assignments not recorded yet (nor forgotten),
    /// while fewer than `max_processes` are `active`.
    async fn start(&self, assignments: Vec<Assignment>, mut active: usize) {
        let max = usize::try_from(self.config.max_processes).unwrap_or(usize::MAX);
        for assignment in assignments {
            let id = &assignment.id;
            if !api::valid_process_id(id) {
                tracing::warn!(%id, "the master assigned a process whose id is not one: ignored");
                continue;
            }
            // In this order: a record is forgotten after its tombstone is written.
            if self.records.is_recorded(id) {
                continue;
            }
            if self.records.is_forgotten(id) {
                let refreshed = lock(&self.offered_again).get(id).copied();
                if refreshed.is_none() {
                    tracing::warn!(%id, "the master offers a process this worker ran and forgot: not started again");
                }
                // Dated again (once a day at most) while it is offered: its
                // tombstone must outlive the offers, not a week after the run.
                if refreshed.is_none_or(|at| at.elapsed() >= Duration::from_secs(24 * 3600)) {
                    match self.records.refresh_tombstone(id) {
                        Ok(()) => {
                            lock(&self.offered_again).insert(id.clone(), Instant::now());
                        }
                        Err(error) => {
                            tracing::warn!(%id, %error, "cannot date the tombstone again")
                        }
                    }
                }
                continue;
            }
            if active >= max {
                tracing::debug!(%id, active, "at max_processes: left for the master to offer again");
                continue;
            }
            let dir = self.records.dir(id);
            if let Err(error) = self.records.record(&assignment) {
                // Not recorded, not started: the master offers it again.
                tracing::error!(%id, %error, "cannot record the process");
                continue;
            }
            active += 1;
            match runners::start(&self.config, id, &dir).await {
                Ok(()) => tracing::info!(%id, "process started"),
                Err(reason) => {
                    tracing::warn!(%id, %reason, "cannot start the process");
                    let appended = match Record::read(dir) {
                        // Started after all, when its runner wrote its pid.
                        Ok(record)
                            if record.runner_pid().is_some_and(|pid| {
                                runners::liveness(pid, id) != Liveness::Gone
                            }) =>
                        {
                            Ok(())
                        }
                        Ok(record) => record
                            .append(failed(format!("the runner could not be started: {reason}")))
                            .await
                            .map(drop),
                        Err(error) => Err(error),
                    };
                    if let Err(error) = appended {
                        // Failed as never started later on.
                        tracing::warn!(%id, %error, "cannot record the failure");
                    }
                }
            }
        }
    }

    /// Sends SIGTERM to the runners of the processes in `kill` that are ours and
    /// running.
    fn kill(&self, kill: &[String]) {
        for id in kill {
            if !api::valid_process_id(id) || !self.records.is_recorded(id) {
                continue;
            }
            // Once: the runner stops at the first, and says so in its states.
            if lock(&self.terminated).contains(id) {
                continue;
            }
            let Ok(record) = Record::read(self.records.dir(id)) else {
                continue;
            };
            if record.ended() {
                continue;
            }
            if let Some(pid) = record.runner_pid()
                && runners::terminate(pid, id)
            {
                tracing::info!(%id, pid, "killing the process: SIGTERM to its runner");
                lock(&self.terminated).insert(id.clone());
            }
        }
    }

    /// Forwards `records` in turn, and forgets those the master has whole.
    /// Stops at the first call that finds the master unavailable.
    async fn forward(&self, records: Vec<(String, Record)>) {
        let retries = &self.retries;
        for (id, record) in records {
            match self.forward_one(&id, &record).await {
                Ok(true) => {
                    lock(retries).succeeded(&id);
                    match self.records.forget(&id) {
                        Ok(()) => tracing::info!(%id, "delivered: forgotten"),
                        Err(error) => tracing::warn!(%id, %error, "cannot remove the record"),
                    }
                    lock(&self.terminated).remove(&id);
                }
                Ok(false) => lock(retries).succeeded(&id),
                Err(Failure::Record(error)) => {
                    let after = lock(retries).failed(&id);
                    tracing::warn!(%id, %error, retry_in = %humantime::format_duration(after), "cannot forward the process: trying again later");
                }
                Err(Failure::Master) => return,
            }
        }
    }

    /// Forwards one record; whether it is delivered whole. Once the run ended,
    /// its states go before its log, and its last state after it, so that
    /// whoever sees at the master that it ended finds the log there too.
    async fn forward_one(&self, id: &str, record: &Record) -> Result<bool, Failure> {
        let Some(last) = record.last_state_line() else {
            self.post_states(id, record, record.lines.len()).await?;
            return Ok(false);
        };
        self.post_states(id, record, last).await?;
        if !record.log_delivered() {
            self.put_log(id, record).await?;
            if let Err(error) = record.set_log_delivered() {
                tracing::warn!(%id, %error, "cannot mark the log delivered");
            }
        }
        self.post_states(id, record, record.lines.len()).await?;
        Ok(true)
    }

    /// Posts the lines of `record` the master has not acknowledged, up to line
    /// `end` (not included).
    async fn post_states(&self, id: &str, record: &Record, end: usize) -> Result<(), Failure> {
        let mut delivered = record.delivered();
        for line in record.lines.iter().take(end).skip(delivered) {
            if serde_json::from_str::<api::StateChange>(line).is_err() {
                tracing::warn!(%id, %line, "not a state (a cut write?): skipped");
            } else {
                let result = self.master.post_state(id, line).await;
                // Refused for good: the next ones are still worth sending.
                self.outcome(result)?;
            }
            delivered += 1;
            if let Err(error) = record.set_delivered(delivered) {
                tracing::warn!(%id, %error, "cannot count the delivered states");
            }
        }
        Ok(())
    }

    /// Puts the end of the run's log on the master. Done, too, when there is no
    /// log, or it cannot be read, or the master refuses it for good.
    async fn put_log(&self, id: &str, record: &Record) -> Result<(), Failure> {
        let Some(log) = record.log() else {
            return Ok(());
        };
        let max = self.max_log_bytes.load(Ordering::Relaxed);
        match log_tail(&log, max) {
            Ok(Some(tail)) => {
                let bytes = tail.len();
                let result = match self.master.put_log(id, tail).await {
                    // Its timeout is its own (a long log on a slow link), not a
                    // master that hangs: this record waits, the others go on.
                    Err(CallError::TimedOut(message)) => return Err(Failure::Record(message)),
                    result => result,
                };
                if self.outcome(result)?.is_some() {
                    tracing::info!(%id, bytes, "log delivered");
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%id, log = %log.display(), %error, "cannot read the log")
            }
        }
        Ok(())
    }

    /// The value of a call; `None` when the master refused it for good (logged
    /// each time).
    fn outcome<T>(&self, result: Result<T, CallError>) -> Result<Option<T>, Failure> {
        match result {
            Ok(value) => {
                self.answered();
                Ok(Some(value))
            }
            Err(CallError::Failed(error)) => {
                self.answered();
                Err(Failure::Record(error))
            }
            Err(error @ CallError::Refused { .. }) => {
                self.answered();
                tracing::error!(master = %self.master.url(), %error, "the master refused");
                Ok(None)
            }
            Err(error @ (CallError::Unavailable(_) | CallError::TimedOut(_))) => {
                self.unavailable(&error);
                Err(Failure::Master)
            }
        }
    }

    /// The master answered: the end of an outage is logged.
    fn answered(&self) {
        if self.master_down.swap(false, Ordering::Relaxed) {
            tracing::info!(master = %self.master.url(), "the master answers again");
        }
    }

    /// The master did not answer: an outage is logged once.
    fn unavailable(&self, error: &CallError) {
        if !self.master_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(master = %self.master.url(), %error, "the master is unavailable: keeping everything, trying again");
        }
    }
}

/// Why forwarding a record stopped.
enum Failure {
    /// The master is unavailable: forwarding stops until the next tick.
    Master,
    /// A call about this record failed (said how): the record waits, the
    /// others go on.
    Record(String),
}

/// The records whose forwarding failed, and when each is tried again.
#[derive(Debug, Default)]
struct Retries {
    /// By id: when it is due, and the pause it was given.
    waiting: HashMap<String, (Instant, Duration)>,
}

impl Retries {
    /// Whether `id` may be forwarded now.
    fn due(&self, id: &str) -> bool {
        self.waiting
            .get(id)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    /// Notes that forwarding `id` failed: it waits [`RETRY_FIRST`], then twice
    /// as long each time, up to [`RETRY_AT_MOST`]. Returns the pause.
    fn failed(&mut self, id: &str) -> Duration {
        let pause = match self.waiting.get(id) {
            Some((_, pause)) => (*pause * 2).min(RETRY_AT_MOST),
            None => RETRY_FIRST,
        };
        self.waiting
            .insert(id.to_owned(), (Instant::now() + pause, pause));
        pause
    }

    /// Notes that forwarding `id` went through.
    fn succeeded(&mut self, id: &str) {
        self.waiting.remove(id);
    }

    /// Drops the records that are gone.
    fn keep_only(&mut self, records: &[(String, Record)]) {
        let ids: HashSet<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
        self.waiting.retain(|id, _| ids.contains(id.as_str()));
    }
}

/// The value in `mutex`, whether or not another thread panicked with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `record`'s run ended and its log is still to be put.
fn needs_log(record: &Record) -> bool {
    record.ended() && !record.log_delivered()
}

/// `future`'s output, unless `stop` is cancelled first.
async fn until<T>(stop: &CancellationToken, future: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        output = future => Some(output),
        () = stop.cancelled() => None,
    }
}

fn failed(reason: String) -> State {
    State::Failed {
        exit_code: None,
        signal: None,
        reason,
    }
}

/// The end of the log at `path`, at most `max` bytes, from the start of a line
/// when it is cut; `None` when there is no log.
fn log_tail(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    let start = length.saturating_sub(max);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(max).read_to_end(&mut tail)?;
    if start > 0
        && let Some(newline) = tail.iter().position(|&byte| byte == b'\n')
    {
        tail.drain(..=newline);
    }
    Ok(Some(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_is_cut_to_its_end_from_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let line = "x".repeat(99) + "\n";
        let lines = usize::try_from(MAX_LOG_BYTES).unwrap() / line.len() + 10;
        let mut text: String = (0..lines).map(|_| line.as_str()).collect();
        text.push_str("the end\n");
        std::fs::write(&path, &text).unwrap();
        let tail = log_tail(&path, MAX_LOG_BYTES).unwrap().unwrap();
        assert!(tail.len() as u64 <= MAX_LOG_BYTES);
        assert!(tail.starts_with(line.as_bytes()));
        assert!(tail.ends_with(b"x\nthe end\n"));
        assert_eq!(
            log_tail(&dir.path().join("none"), MAX_LOG_BYTES).unwrap(),
            None
        );
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(log_tail(&path, MAX_LOG_BYTES).unwrap().unwrap(), b"short\n");
        // A master that takes less gets less.
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(log_tail(&path, 14).unwrap().unwrap(), b"second\nthird\n");
        assert_eq!(log_tail(&path, 12).unwrap().unwrap(), b"third\n");
    }

    #[test]
    fn a_record_whose_forwarding_fails_waits_twice_as_long_each_time_up_to_a_minute() {
        let mut retries = Retries::default();
        assert!(retries.due("p-1"));
        let pauses: Vec<u64> = (0..9).map(|_| retries.failed("p-1").as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!retries.due("p-1"));
        assert!(retries.due("p-2"), "the others go on");
        retries.succeeded("p-1");
        assert!(retries.due("p-1"));
        assert_eq!(retries.failed("p-1"), RETRY_FIRST, "from the start again");
    }

    #[test]
    fn a_worker_can_be_spawned_on_a_runtime() {
        fn spawnable(_: impl Future<Output = Result<(), WorkerError>> + Send + 'static) {}
        let dir = tempfile::tempdir().unwrap();
        let master: Url = "http://127.0.0.1:1".parse().unwrap();
        let worker = Worker::new(WorkerConfig::new("node-1", master, dir.path().into())).unwrap();
        spawnable(worker.run(std::future::pending()));
    }

    #[test]
    fn a_bad_name_or_no_capacity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master: Url = "http://127.0.0.1:1".parse().unwrap();
        let config = WorkerConfig::new("a/b", master.clone(), dir.path().into());
        assert!(matches!(Worker::new(config), Err(WorkerError::BadName(_))));
        let mut config = WorkerConfig::new("node-1", master, dir.path().into());
        config.max_processes = 0;
        assert!(matches!(Worker::new(config), Err(WorkerError::NoProcesses)));
    }
}
