//! Server processes that stop when their handle is dropped.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

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
        command: Command,
        port: u16,
        log_dir: &Path,
        timeout: Duration,
    ) -> io::Result<Daemon> {
        let mut daemon = Daemon::spawn(name, command, log_dir)?;
        if let Err(err) = wait_for_port(port, timeout) {
            return Err(daemon.failed_to_start(err));
        }
        Ok(daemon)
    }

    /// Starts `command` and returns at once: for a server whose readiness the caller
    /// checks its own way.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> io::Result<Daemon> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The error to return when the server did not become ready (`err` says how):
    /// with its exit status, if it exited, and its log.
    pub fn failed_to_start(&mut self, err: io::Error) -> io::Error {
        let exited = self.exit_status();
        io::Error::new(
            err.kind(),
            format!(
                "{} did not start ({err}; exit status {exited:?}); its log:\n{}",
                self.name,
                self.log_text()
            ),
        )
    }

    /// How the server exited, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// What the server wrote to its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("{} is not running", self.name)))?;
        rustix::process::kill_process(Pid::from_child(child), signal)?;
        Ok(())
    }

    /// Asks the server to stop with `signal` and waits up to `grace` for it to exit;
    /// kills it (SIGKILL) if it has not by then.
    pub fn stop(&mut self, signal: Signal, grace: Duration) {
        if self.signal(signal).is_ok() {
            let deadline = Instant::now() + grace;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
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

/// Where `program` is: on `PATH`, else in `/usr/bin` or `/usr/local/bin` (which a
/// test's environment may leave off its `PATH`).
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// Where `program` is (see [`which`]), or an error that names the Debian `package`
/// that has it.
pub fn find_program(program: &str, package: &str) -> io::Result<PathBuf> {
    which(program).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{program} is not installed; run scripts/test (it installs {package}) or `apt-get install {package}`"
            ),
        )
    })
}

/// A command-line argument made of `prefix` and a path that need not be UTF-8:
/// `--user-data-dir=/tmp/x`.
pub(crate) fn joined(prefix: &str, path: &Path) -> OsString {
    let mut argument = OsString::from(prefix);
    argument.push(path);
    argument
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
