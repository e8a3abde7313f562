//! Where the states of a run are reported: a [`StateSink`].

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

pub use crate::api::{State, StateChange};

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

    /// Keeps the log of a run (`output.log`, at `log`) where whoever looks into
    /// the run will find it: called once the run ended, success or failure,
    /// before its last state is recorded and a successful run's directory is
    /// removed. The default does nothing
    /// (the log of a failure stays in the kept run directory anyway).
    async fn upload_log(&self, log: &Path) -> Result<(), SinkError> {
        let _ = log;
        Ok(())
    }
}

/// Both sinks: each state goes to the first, then to the second (even when the
/// first fails), and so does the log; an error is the first one met.
#[async_trait]
impl<A: StateSink, B: StateSink> StateSink for (A, B) {
    async fn record(&self, change: &StateChange) -> Result<(), SinkError> {
        let first = self.0.record(change).await;
        let second = self.1.record(change).await;
        first.and(second)
    }

    async fn upload_log(&self, log: &Path) -> Result<(), SinkError> {
        let first = self.0.upload_log(log).await;
        let second = self.1.upload_log(log).await;
        first.and(second)
    }
}

/// Appends each state as a JSON line to a file (`state.jsonl` in the run
/// directory), and, when asked to ([`with_log_copy`](Self::with_log_copy)),
/// keeps the log of the run outside the run directory.
#[derive(Debug, Clone)]
pub struct FileStateSink {
    path: PathBuf,
    log_copy: Option<PathBuf>,
}

impl FileStateSink {
    /// A sink appending to `path` (created when the first state is recorded).
    pub fn new(path: impl Into<PathBuf>) -> FileStateSink {
        FileStateSink {
            path: path.into(),
            log_copy: None,
        }
    }

    /// Keeps the log of the run at `path` once it ended (a hard link when the
    /// file systems allow, else a copy), so that it outlives a successful run's
    /// directory.
    pub fn with_log_copy(mut self, path: impl Into<PathBuf>) -> FileStateSink {
        self.log_copy = Some(path.into());
        self
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

    async fn upload_log(&self, log: &Path) -> Result<(), SinkError> {
        let Some(copy) = self.log_copy.clone() else {
            return Ok(());
        };
        let log = log.to_owned();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if !log.exists() {
                // Setup failed before the command had a log.
                return Ok(());
            }
            // Whole or not at all: the link or copy is made aside, then renamed.
            let partial = copy.with_extension("partial");
            let _ = std::fs::remove_file(&partial);
            if std::fs::hard_link(&log, &partial).is_err() {
                std::fs::copy(&log, &partial)?;
            }
            std::fs::rename(&partial, &copy)
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
