//! Dadd ("daddy"), a daemon administrator: give it a short spec, and it runs the
//! spec's command on a host, with the files and settings it needs, and cleans up
//! after it.
//!
//! # Flow
//!
//! A [`Spec`](spec::Spec) (JSON or YAML) names the command (`cmd`), the files it
//! needs (`download_urls`), its settings (`config`), its environment (`env`), how
//! long it may run (`timeout`) and whether to keep its directory (`keep_dir`). It
//! is checked field by field before anything happens; every problem names its
//! field.
//!
//! The [runner] then gives the command its own run directory
//! ([`make_run_dir`](runner::make_run_dir)), writes the spec and the config there,
//! fetches the artifacts through the [`fetcher`] (so that the Nth run of a job
//! downloads nothing), starts the command with its output going to `output.log`,
//! reports each [`State`](runner::State) to a [`StateSink`](runner::StateSink),
//! terminates its process group when it outlives its timeout, and removes the
//! directory after a success, keeping it after a failure.
//!
//! When the run ends the runner puts the log where its sink keeps it (the
//! master, see [`api`]), and after a failure mails it when the host's
//! [`config`] says where.
//!
//! The `dadd` binary composes these: `dadd run SPEC --foreground` runs a spec and
//! exits with its command's status, `dadd run SPEC` runs it detached (in a
//! session of its own) and exits at once; `dadd fetch SPEC DIR` only fetches its
//! artifacts and prints how each was served. [`progress`] draws the progress bars
//! of large downloads. `dadd master` serves the HTTP API ([`master`]) that takes
//! specs and the runners' reports, and keeps them in SQLite or PostgreSQL, schedules them onto workers, and serves a web page;
//! `dadd submit`, `ps`, `show`, `logs`, `kill`, `hosts` and `put` call it through
//! the [`client`]. `dadd worker` ([`worker`]) is a host of the cluster: it starts
//! the processes the master assigns it through detached runners and forwards
//! their states.
//!
//! # Example
//!
//! ```no_run
//! use dadd::runner::{FileStateSink, Runner, STATE_FILE, make_run_dir};
//! use dadd::spec::Spec;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = Spec::from_file("job.yaml".as_ref())?;
//! let fetcher = fetcher::Fetcher::builder().cache_dir("/var/cache/dadd").build()?;
//! let dir = make_run_dir(None)?;
//! let sink = FileStateSink::new(dir.join(STATE_FILE));
//! let runner = Runner::new(fetcher);
//! let outcome = runner.run(&spec, &dir, &sink).await;
//! if let Some(reason) = outcome.failure() {
//!     eprintln!("{reason}; see {}", outcome.dir.display());
//! }
//! // The cache's copies of what was downloaded are stored before the process ends.
//! runner.fetcher().close().await?;
//! std::process::exit(outcome.exit_code());
//! # }
//! ```
#![cfg(unix)]

pub mod api;
pub mod client;
pub mod config;
pub mod master;
pub mod progress;
pub mod runner;
pub mod spec;
pub mod worker;

/// An error and its causes on one line, outermost first, `: `-separated, each
/// cause said once: many errors already name their source in their own
/// message, and some (reqwest's "error sending request") only in their causes.
pub fn explain(error: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("listening on 127.0.0.1:8440: {0}")]
        struct Listen(#[source] std::io::Error);
        let error = anyhow::Error::new(Listen(std::io::Error::other("address in use")))
            .context("the master");
        assert_eq!(
            super::explain(error.as_ref()),
            "the master: listening on 127.0.0.1:8440: address in use"
        );
    }
}
