//! What the end-to-end tests of several files share: a `dadd master` to start, a
//! port to wait for, a bed of directories.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// `dadd master --listen 127.0.0.1:PORT --data-dir DATA_DIR ARGS...`, without the
/// caller's `DADD_TOKEN`, logging warnings, its output dropped (a caller that
/// reads it pipes it), killed when dropped. Not started.
pub fn master(data_dir: &Path, port: u16, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"));
    command
        .arg("master")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("DADD_TOKEN")
        .env("DADD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Waits (off the async threads) until something accepts connections on `port`.
pub async fn wait_for_port(port: u16) {
    tokio::task::spawn_blocking(move || testbed::net::wait_for_port(port, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
}

/// A test's directories: the artifact cache, a TMPDIR for run directories, `out`
/// (where commands write what they saw), and whatever else a test names.
pub struct Bed {
    pub root: tempfile::TempDir,
}

impl Bed {
    pub fn new() -> Bed {
        let bed = Bed {
            root: tempfile::tempdir().unwrap(),
        };
        for dir in ["cache", "tmp", "out"] {
            std::fs::create_dir(bed.path(dir)).unwrap();
        }
        bed
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn out(&self) -> String {
        self.path("out").display().to_string()
    }
}
