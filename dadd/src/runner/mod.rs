//! The runner: a spec's whole life on one host.
//!
//! # Flow
//!
//! [`make_run_dir`] makes the run directory (a new temporary one, or one the
//! caller names, which must be empty). [`Runner::run`] then, reporting each
//! [`State`] to a [`StateSink`] as it goes:
//!
//! 1. **init**: writes the spec (`spec.json`) and its config (`config.json`);
//! 2. **setup**: fetches the artifacts into the run directory (the
//!    [`Fetcher`] it was given decides the cache and the shared tier); when the
//!    spec has `python_deps`, makes a virtualenv ([`VENV_DIR`]) with the host's
//!    `python3 -m venv` and installs each dep string with its pip (from
//!    `python_cheeseshop` when given; pip options in a dep string apply to it),
//!    pip's output going to the log;
//! 3. **running**: starts `cmd` in the run directory, in a process group of its
//!    own, with the spec's `env` and `APP_SETTINGS_JSON` (the config file's
//!    absolute path) added to the environment (and the virtualenv's `bin` first
//!    on `PATH`, `VIRTUAL_ENV` set, when there is one), standard input from `/dev/null`,
//!    and standard output and error appended to `output.log`;
//! 4. **success** or **failed**: when it exits, is killed, or outlives the
//!    spec's `timeout` (its group then gets SIGTERM, and SIGKILL after a grace
//!    period), or when the runner is asked to stop ([`Runner::run_until`]: the
//!    same for its group). A setup failure goes straight to **failed**, with the
//!    reason.
//!
//! Once the run ended, and before its last state is reported, the log is handed
//! to the sink ([`StateSink::upload_log`]:
//! the [`MasterSink`] puts it on the master, a [`FileStateSink`] can keep a copy
//! beside its states). On success the run directory is then removed, unless the
//! spec says `keep_dir`; on failure it is kept, with the log, for whoever looks
//! into it, and, when the runner was given an [`ErrorEmail`]
//! ([`Runner::mail_failures`]), the failure is mailed. The
//! [`RunOutcome`] says how it ended and gives the exit status for a foreground
//! `dadd run` ([`RunOutcome::exit_code`]).
//!
//! A run never fails because of its sink or its mail: their errors are logged and
//! the run goes on, so the log and the states in the run directory are what to
//! trust.

mod master_sink;
mod process;
mod python;
mod state;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use erroremail::{ErrorEmail, ProcessFailure};
use fetcher::{FetchError, Fetcher};

use crate::spec::Spec;
pub use master_sink::{MasterSink, MasterSinkError};
use process::{Exit, signal_name};
pub use python::VENV_DIR;
pub use state::{FileStateSink, SinkError, State, StateChange, StateSink};

/// The file the spec is written to, in the run directory.
pub const SPEC_FILE: &str = "spec.json";
/// The file the config is written to; its absolute path is in `APP_SETTINGS_JSON`.
pub const CONFIG_FILE: &str = "config.json";
/// The command's standard output and error.
pub const LOG_FILE: &str = "output.log";
/// The states, one JSON line each, when a [`FileStateSink`] records them.
pub const STATE_FILE: &str = "state.jsonl";
/// The environment variable with the config file's absolute path.
pub const APP_SETTINGS_JSON: &str = "APP_SETTINGS_JSON";

/// The grace period between SIGTERM and SIGKILL when a run times out, unless
/// [`Runner::kill_grace`] says otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// Why a run could not be set up: its directory, its files, its artifacts, or
/// starting its command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The run directory could not be made or used.
    #[error("run directory {}: {reason}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// An artifact could not be fetched (boxed: it is large, and rare).
    #[error("fetching the artifacts: {0}")]
    Fetch(#[source] Box<FetchError>),
    /// The Python environment could not be built.
    #[error("building the Python environment: {step}: {reason}")]
    PythonEnv {
        /// The step that failed (`python3 -m venv`, `pip install DEP`).
        step: String,
        /// Why.
        reason: String,
    },
    /// The command could not be started.
    #[error("cannot start {program:?}: {source}")]
    Start {
        /// The program.
        program: OsString,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for the command: {0}")]
    Wait(#[source] std::io::Error),
}

/// How a run ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended {
    /// The command exited with this status (0 is success).
    Exited {
        /// The status.
        code: i32,
    },
    /// A signal killed the command.
    Signaled {
        /// The signal.
        signal: i32,
    },
    /// The command outlived the spec's timeout and was terminated.
    TimedOut {
        /// The timeout.
        after: Duration,
        /// Whether SIGKILL was needed after SIGTERM.
        killed: bool,
    },
    /// The runner was asked to stop (see [`Runner::run_until`]) by this signal:
    /// during setup, or while the command ran, whose group was then terminated as
    /// on a timeout.
    Stopped {
        /// The signal the runner received.
        signal: i32,
        /// Whether SIGKILL was needed after SIGTERM.
        killed: bool,
    },
    /// Setup failed; the command never ran (or could not be waited for).
    SetupFailed(RunError),
}

impl Ended {
    /// How the command ended, as a shell would see it: its status, or the signal
    /// that ended it (SIGKILL or SIGTERM after a timeout, the runner's own signal
    /// when it was stopped); `None` when it never ran.
    pub fn exit(&self) -> Option<erroremail::Exit> {
        use erroremail::Exit;
        match self {
            Ended::Exited { code } => Some(Exit::Code(*code)),
            Ended::Signaled { signal } | Ended::Stopped { signal, .. } => {
                Some(Exit::Signal(*signal))
            }
            Ended::TimedOut { killed, .. } => Some(Exit::Signal(if *killed { 9 } else { 15 })),
            Ended::SetupFailed(_) => None,
        }
    }
}

/// What a run did.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The run directory (gone unless [`kept`](RunOutcome::kept)).
    pub dir: PathBuf,
    /// Whether the run directory is still there.
    pub kept: bool,
    /// How it ended.
    pub ended: Ended,
}

impl RunOutcome {
    /// Whether the command ran and exited with status 0.
    pub fn succeeded(&self) -> bool {
        matches!(self.ended, Ended::Exited { code: 0 })
    }

    /// The exit status a foreground `dadd run` ends with, as a shell would report
    /// the command's: its own status; 128 + the signal that killed it; 124 when it
    /// timed out (as `timeout(1)`); 127 when the program was not found and 126
    /// when it could not be executed; 125 when setup failed otherwise.
    pub fn exit_code(&self) -> i32 {
        match &self.ended {
            Ended::Exited { code } => *code,
            Ended::Signaled { signal } => 128 + signal,
            Ended::TimedOut { .. } => 124,
            Ended::Stopped { signal, .. } => 128 + signal,
            Ended::SetupFailed(RunError::Start { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                127
            }
            Ended::SetupFailed(RunError::Start { .. }) => 126,
            Ended::SetupFailed(_) => 125,
        }
    }

    /// Why it failed, in words; `None` when it succeeded.
    pub fn failure(&self) -> Option<String> {
        match &self.ended {
            Ended::Exited { code: 0 } => None,
            Ended::Exited { code } => Some(format!("the command exited with status {code}")),
            Ended::Signaled { signal } => Some(format!(
                "the command was killed by {}",
                signal_name(*signal)
            )),
            Ended::TimedOut { after, killed } => Some(format!(
                "the command ran longer than its timeout ({}): its process group was terminated with SIGTERM{}",
                humantime::format_duration(*after),
                if *killed {
                    ", then killed with SIGKILL"
                } else {
                    ""
                }
            )),
            Ended::Stopped { signal, killed } => Some(format!(
                "dadd received {}: the command's process group was terminated with SIGTERM{}",
                signal_name(*signal),
                if *killed {
                    ", then killed with SIGKILL"
                } else {
                    ""
                }
            )),
            Ended::SetupFailed(error) => Some(format!("setup failed: {error}")),
        }
    }

    /// The final state, as recorded.
    fn state(&self) -> State {
        let Some(reason) = self.failure() else {
            return State::Success;
        };
        let (exit_code, signal) = match self.ended.exit() {
            Some(erroremail::Exit::Code(code)) => (Some(code), None),
            Some(erroremail::Exit::Signal(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        State::Failed {
            exit_code,
            signal,
            reason,
        }
    }
}

/// Makes the run directory: a new temporary one (`dadd-…` in the system's
/// temporary directory) when `dir` is `None`, else `dir`, created if missing and
/// required to be empty (it is removed after a successful run). Returns its
/// absolute path.
pub fn make_run_dir(dir: Option<&Path>) -> Result<PathBuf, RunError> {
    let refuse = |path: &Path, reason: String| RunError::Dir {
        path: path.to_owned(),
        reason,
    };
    let path = match dir {
        None => tempfile::Builder::new()
            .prefix("dadd-")
            .tempdir()
            .map_err(|error| refuse(&std::env::temp_dir(), format!("cannot create: {error}")))?
            .keep(),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|error| refuse(dir, format!("cannot create: {error}")))?;
            let mut entries = std::fs::read_dir(dir)
                .map_err(|error| refuse(dir, format!("cannot read: {error}")))?;
            if entries.next().is_some() {
                return Err(refuse(
                    dir,
                    "is not empty (a run directory is removed after a successful run)".to_owned(),
                ));
            }
            dir.to_owned()
        }
    };
    std::fs::canonicalize(&path).map_err(|error| refuse(&path, error.to_string()))
}

/// Runs specs: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Runner {
    fetcher: Fetcher,
    kill_grace: Duration,
    mail: Option<ErrorEmail>,
}

impl Runner {
    /// A runner fetching artifacts with `fetcher`. The cache's copies of what the
    /// fetcher downloads are stored in the background: close it
    /// ([`Fetcher::close`], through [`fetcher`](Self::fetcher)) before the process
    /// ends, or they are lost.
    pub fn new(fetcher: Fetcher) -> Runner {
        Runner {
            fetcher,
            kill_grace: DEFAULT_KILL_GRACE,
            mail: None,
        }
    }

    /// Mails each failure with `mail`: one [`ProcessFailure`] with the command,
    /// how it ended, the host, start, duration, run directory, the end of the
    /// log inline and the log attached. A mail that cannot be sent is logged; it
    /// never changes the run's outcome.
    pub fn mail_failures(mut self, mail: ErrorEmail) -> Runner {
        self.mail = Some(mail);
        self
    }

    /// The fetcher it fetches artifacts with.
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// How long a timed-out process group has between SIGTERM and SIGKILL.
    /// Default: [`DEFAULT_KILL_GRACE`].
    pub fn kill_grace(mut self, grace: Duration) -> Runner {
        self.kill_grace = grace;
        self
    }

    /// Runs `spec` in `dir` (see [`make_run_dir`]), reporting its states to
    /// `sink`, and cleans up after it.
    pub async fn run(&self, spec: &Spec, dir: &Path, sink: &dyn StateSink) -> RunOutcome {
        self.run_until(spec, dir, sink, std::future::pending())
            .await
    }

    /// As [`run`](Runner::run), and stops when `stop` completes with the number of
    /// the signal that asked (typically SIGTERM or SIGINT to the runner): the
    /// command's process group is terminated as on a timeout, and the run ends
    /// [`Stopped`](Ended::Stopped), a failure.
    pub async fn run_until(
        &self,
        spec: &Spec,
        dir: &Path,
        sink: &dyn StateSink,
        stop: impl Future<Output = i32>,
    ) -> RunOutcome {
        let started = (SystemTime::now(), Instant::now());
        report(
            sink,
            State::Init {
                dir: dir.to_owned(),
            },
        )
        .await;
        let ended = match self.run_in(spec, dir, sink, stop).await {
            Ok(ended) => ended,
            Err(error) => Ended::SetupFailed(error),
        };
        let mut outcome = RunOutcome {
            dir: dir.to_owned(),
            kept: true,
            ended,
        };
        // The log before the last state: whoever sees the run ended finds it.
        let log = dir.join(LOG_FILE);
        if let Err(error) = sink.upload_log(&log).await {
            tracing::warn!(%error, log = %log.display(), "cannot upload the log");
        }
        report(sink, outcome.state()).await;
        if !outcome.succeeded() {
            self.after_failure(spec, &outcome, started).await;
        }
        if outcome.succeeded() && !spec.keep_dir {
            // The cache copies the files it downloaded from this directory after the
            // fetch: removing them first would make it download them again.
            self.fetcher.stored().await;
            match tokio::fs::remove_dir_all(dir).await {
                Ok(()) => outcome.kept = false,
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot remove the run directory");
                }
            }
        }
        outcome
    }

    /// Mails the failure; what fails here is logged, and the run directory (with
    /// the log) is kept whatever happens.
    async fn after_failure(
        &self,
        spec: &Spec,
        outcome: &RunOutcome,
        (started_at, started): (SystemTime, Instant),
    ) {
        let log = outcome.dir.join(LOG_FILE);
        let Some(mail) = &self.mail else { return };
        let command: Vec<String> = spec
            .command(&outcome.dir.join(CONFIG_FILE))
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let process = match (&outcome.ended, outcome.ended.exit()) {
            (_, Some(exit)) => ProcessFailure::new(command, exit),
            (Ended::SetupFailed(RunError::Start { source, .. }), None) => {
                ProcessFailure::not_started(command, source)
            }
            (ended, None) => {
                let reason = match ended {
                    Ended::SetupFailed(error) => format!("setup failed: {error}"),
                    _ => "setup failed".to_owned(),
                };
                ProcessFailure::not_started(command, &std::io::Error::other(reason))
            }
        };
        let mut failure: erroremail::Failure = process
            .started(started_at)
            .duration(started.elapsed())
            .working_dir(&outcome.dir)
            .log_file(&log)
            .into();
        if let Some(reason) = outcome.failure() {
            failure = failure.fact("Why", reason);
        }
        if let Some(name) = &spec.name {
            failure = failure.fact("Spec", name.clone());
        }
        failure = failure.fact("Run directory (kept)", outcome.dir.display().to_string());
        // erroremail logs why a mail was not sent; the outcome stays the run's.
        if let Ok(sent) = mail.send(&failure).await {
            tracing::info!(?sent, "failure mail");
        }
    }

    /// Setup, then the command; an error is a setup failure.
    async fn run_in(
        &self,
        spec: &Spec,
        dir: &Path,
        sink: &dyn StateSink,
        stop: impl Future<Output = i32>,
    ) -> Result<Ended, RunError> {
        report(sink, State::Setup).await;
        let mut stop = std::pin::pin!(stop);
        let prepared = tokio::select! {
            setup = self.setup(spec, dir) => setup?,
            signal = &mut stop => return Ok(Ended::Stopped { signal, killed: false }),
        };
        self.start(spec, dir, sink, prepared, stop).await
    }

    /// Writes the spec and config, fetches the artifacts, opens the log, builds the
    /// Python environment when the spec has `python_deps`; returns the config's
    /// path, the log, and the virtualenv.
    async fn setup(&self, spec: &Spec, dir: &Path) -> Result<Prepared, RunError> {
        write_json(&dir.join(SPEC_FILE), spec).await?;
        let config = dir.join(CONFIG_FILE);
        write_json(&config, &spec.config_or_empty()).await?;
        if !spec.download_urls.is_empty() {
            let report = self
                .fetcher
                .fetch(&spec.download_urls, dir)
                .await
                .map_err(|error| RunError::Fetch(Box::new(error)))?;
            tracing::info!(
                artifacts = report.artifacts.len(),
                network = %fetcher::human_bytes(report.network_bytes()),
                "artifacts fetched"
            );
        }
        let log_path = dir.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| RunError::Write {
                path: log_path,
                source,
            })?;
        let venv = if spec.python_deps.is_empty() {
            None
        } else {
            Some(python::build(spec, dir, &log).await?)
        };
        Ok(Prepared { config, log, venv })
    }

    /// Starts the command and waits for it.
    async fn start(
        &self,
        spec: &Spec,
        dir: &Path,
        sink: &dyn StateSink,
        Prepared { config, log, venv }: Prepared,
        stop: impl Future<Output = i32>,
    ) -> Result<Ended, RunError> {
        let stderr = log.try_clone().map_err(|source| RunError::Write {
            path: dir.join(LOG_FILE),
            source,
        })?;
        let command = spec.command(&config);
        let (program, args) = command.split_first().ok_or_else(|| RunError::Start {
            program: OsString::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut command = tokio::process::Command::new(program);
        command.envs(&spec.env);
        if let Some(venv) = &venv {
            command
                .env("PATH", python::path_with(venv, spec)?)
                .env("VIRTUAL_ENV", venv);
        }
        let mut child = command
            .args(args)
            .current_dir(dir)
            .env(APP_SETTINGS_JSON, &config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Its own group, so that a timeout reaches everything it started.
            .process_group(0)
            .spawn()
            .map_err(|source| RunError::Start {
                program: program.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(pid, command = ?command, "started");
        report(sink, State::Running { pid }).await;
        let exit = process::wait(&mut child, spec.timeout, self.kill_grace, stop)
            .await
            .map_err(RunError::Wait)?;
        Ok(match exit {
            Exit::Code(code) => Ended::Exited { code },
            Exit::Signal(signal) => Ended::Signaled { signal },
            Exit::TimedOut { killed } => Ended::TimedOut {
                after: spec.timeout.unwrap_or_default(),
                killed,
            },
            Exit::Stopped { signal, killed } => Ended::Stopped { signal, killed },
        })
    }
}

/// What setup leaves for the command.
struct Prepared {
    /// The config file.
    config: PathBuf,
    /// The log, opened for appending.
    log: std::fs::File,
    /// The virtualenv, when the spec has `python_deps`.
    venv: Option<PathBuf>,
}

/// Records a state, logging (not returning) a failure of the sink.
async fn report(sink: &dyn StateSink, state: State) {
    tracing::info!(state = state.name(), "state");
    if let Err(error) = sink.record(&StateChange::now(state)).await {
        tracing::warn!(%error, "cannot record the state");
    }
}

async fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), RunError> {
    let write_error = |source| RunError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|error| write_error(error.into()))?;
    text.push(b'\n');
    tokio::fs::write(path, text).await.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::spec::Format;

    /// Keeps the states in memory.
    #[derive(Default)]
    struct Memory(Mutex<Vec<State>>);

    #[async_trait]
    impl StateSink for Memory {
        async fn record(&self, change: &StateChange) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(change.state.clone());
            Ok(())
        }
    }

    impl Memory {
        fn names(&self) -> Vec<&'static str> {
            self.0.lock().unwrap().iter().map(State::name).collect()
        }
    }

    /// A sink that always fails.
    struct Broken;

    #[async_trait]
    impl StateSink for Broken {
        async fn record(&self, _: &StateChange) -> Result<(), SinkError> {
            Err("the master is down".into())
        }
    }

    async fn run(spec: &str, sink: &dyn StateSink) -> RunOutcome {
        let cache = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::builder().cache_dir(cache.path()).build().unwrap();
        let spec = Spec::parse(spec, Format::Yaml).unwrap();
        let dir = make_run_dir(None).unwrap();
        Runner::new(fetcher)
            .kill_grace(Duration::from_secs(2))
            .run(&spec, &dir, sink)
            .await
    }

    #[tokio::test]
    async fn a_successful_run_goes_through_every_state_and_removes_its_directory() {
        let sink = Memory::default();
        let outcome = run(
            "cmd: [sh, -c, 'test -f config.json && test -f spec.json']",
            &sink,
        )
        .await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(outcome.exit_code(), 0);
        assert!(!outcome.kept && !outcome.dir.exists());
        assert_eq!(sink.names(), ["init", "setup", "running", "success"]);
    }

    #[tokio::test]
    async fn a_failed_run_keeps_its_directory_and_log() {
        let sink = Memory::default();
        let outcome = run("cmd: sh -c 'echo to-the-log; exit 3'", &sink).await;
        assert_eq!(outcome.exit_code(), 3);
        assert!(outcome.kept);
        let log = std::fs::read_to_string(outcome.dir.join(LOG_FILE)).unwrap();
        assert_eq!(log, "to-the-log\n");
        let last = sink.0.lock().unwrap().last().cloned().unwrap();
        assert!(
            matches!(&last, State::Failed { exit_code: Some(3), reason, .. } if reason.contains("status 3")),
            "{last:?}"
        );
        std::fs::remove_dir_all(&outcome.dir).unwrap();
    }

    #[tokio::test]
    async fn keep_dir_keeps_a_successful_runs_directory() {
        let outcome = run("{cmd: 'true', keep_dir: true}", &Memory::default()).await;
        assert!(outcome.succeeded() && outcome.kept && outcome.dir.exists());
        std::fs::remove_dir_all(&outcome.dir).unwrap();
    }

    #[tokio::test]
    async fn a_program_that_is_not_there_is_a_setup_failure_with_127() {
        let sink = Memory::default();
        let outcome = run("cmd: dadd-no-such-program", &sink).await;
        assert_eq!(outcome.exit_code(), 127);
        assert_eq!(sink.names(), ["init", "setup", "failed"]);
        assert!(
            outcome.failure().unwrap().contains("cannot start"),
            "{outcome:?}"
        );
        std::fs::remove_dir_all(&outcome.dir).unwrap();
    }

    #[tokio::test]
    async fn a_signal_is_reported_as_128_plus_its_number() {
        let outcome = run("cmd: sh -c 'kill -TERM $$'", &Memory::default()).await;
        assert_eq!(outcome.exit_code(), 128 + 15);
        assert!(
            outcome.failure().unwrap().contains("SIGTERM"),
            "{outcome:?}"
        );
        std::fs::remove_dir_all(&outcome.dir).unwrap();
    }

    #[tokio::test]
    async fn a_broken_sink_does_not_stop_the_run() {
        let outcome = run("cmd: 'true'", &Broken).await;
        assert!(outcome.succeeded(), "{outcome:?}");
    }

    #[test]
    fn a_given_run_directory_must_be_empty() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        assert_eq!(
            make_run_dir(Some(&dir)).unwrap(),
            dir.canonicalize().unwrap()
        );
        std::fs::write(dir.join("x"), "").unwrap();
        let error = make_run_dir(Some(&dir)).unwrap_err().to_string();
        assert!(error.contains("is not empty"), "{error}");
    }
}
