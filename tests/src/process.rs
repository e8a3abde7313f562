//! Server processes that stop when their handle is dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::wait_for_port;

/// A server process started for a test, killed when dropped.
///
/// Its standard output and error go to `<log_dir>/<name>.log`, so that a failing test
/// can show what the server said.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` and waits until it listens on `127.0.0.1:port`.
    pub fn start(
        name: &str,
        mut command: Command,
        port: u16,
        log_dir: &Path,
        timeout: Duration,
    ) -> io::Result<Daemon> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            child: Some(child),
            log,
        };
        if let Err(err) = wait_for_port(port, timeout) {
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "{name} did not start ({err}; exit status {exited:?}); its log:\n{}",
                    daemon.log_text()
                ),
            ));
        }
        Ok(daemon)
    }

    /// What the server wrote to its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(name = %self.name, "stopped test server");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first Python interpreter that can import `module`: `python3` on `PATH`, then
/// Debian's `/usr/bin/python3` (where `apt-get install python3-<module>` puts modules).
pub fn python_with(module: &str) -> io::Result<PathBuf> {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no python3 can import {module}; run scripts/test (it installs python3-{module}) or `apt-get install python3-{module}`"
        ),
    ))
}
