//! The states of a run, and where they are reported: a [`StateSink`].

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

/// An error of a [`StateSink`]; the runner logs it and goes on.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where a run's states go: a file next to the log ([`FileStateSink`]), or the
/// master.
///
/// A sink that fails does not stop the run: the runner logs the error and goes
/// on, so that a master that is down never costs a process or its log.
#[async_trait]
pub trait StateSink: Send + Sync {
    /// Records that the run entered `change.state` at `change.at`.
    async fn record(&self, change: &StateChange) -> Result<(), SinkError>;
}

/// Appends each state as a JSON line to a file (`state.jsonl` in the run
/// directory).
#[derive(Debug, Clone)]
pub struct FileStateSink {
    path: PathBuf,
}

impl FileStateSink {
    /// A sink appending to `path` (created when the first state is recorded).
    pub fn new(path: impl Into<PathBuf>) -> FileStateSink {
        FileStateSink { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl StateSink for FileStateSink {
    async fn record(&self, change: &StateChange) -> Result<(), SinkError> {
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let path = self.path.clone();
        // One write of a whole line to a file opened for appending: a reader never
        // sees half a line, even with other writers.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_written_with_their_name_and_time() {
        let change = StateChange::now(State::Failed {
            exit_code: Some(3),
            signal: None,
            reason: "exited with status 3".to_owned(),
        });
        let line = serde_json::to_value(&change).unwrap();
        assert_eq!(line["state"], "failed");
        assert_eq!(line["exit_code"], 3);
        assert!(line.get("signal").is_none());
        assert!(line["at"].as_str().unwrap().ends_with('Z'), "{line}");
        let back: StateChange = serde_json::from_value(line).unwrap();
        assert_eq!(back, change);
    }

    #[tokio::test]
    async fn the_file_sink_appends_one_line_per_state() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileStateSink::new(dir.path().join("state.jsonl"));
        sink.record(&StateChange::now(State::Setup)).await.unwrap();
        sink.record(&StateChange::now(State::Running { pid: 7 }))
            .await
            .unwrap();
        let text = std::fs::read_to_string(sink.path()).unwrap();
        let states: Vec<String> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<StateChange>(line)
                    .unwrap()
                    .state
                    .name()
                    .to_owned()
            })
            .collect();
        assert_eq!(states, ["setup", "running"]);
    }
}
