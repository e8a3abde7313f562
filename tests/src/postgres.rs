//! PostgreSQL for tests: a private server per test, on a free loopback port, in a
//! temp dir.
//!
//! [`PostgresServer::start`] runs `initdb` into a temporary directory and starts
//! `postgres` on it, listening on `127.0.0.1:PORT` and on a Unix socket in that same
//! directory (never `/var/run/postgresql`), with trust authentication for the
//! `postgres` superuser. A PostgreSQL the machine may already run (on 5432, say) is
//! neither used nor disturbed. The server is shut down when the handle is dropped,
//! and its data with the directory.
//!
//! **Binaries.** `initdb` on `PATH`, its symlinks resolved so that `postgres` and
//! `psql` come from the same installation; else the newest `/usr/lib/postgresql/*/bin`,
//! where Debian's `postgresql` package puts the server (nothing of it on `PATH`).
//!
//! **Root.** `initdb` and `postgres` refuse to run as root. When the tests run as
//! root (in CI containers, for one), both run as the `postgres` user, or `nobody`
//! when there is none, through `setpriv`, and the temporary directory belongs to that
//! user. `psql` runs as the test does.
//!
//! **Faults.** [`stop`](PostgresServer::stop) is a fast shutdown (clients are
//! disconnected, everything committed is kept), [`kill`](PostgresServer::kill) an
//! immediate one, like a crash (what was committed is recovered from the WAL at the
//! next start), and [`restart`](PostgresServer::restart) brings the server back on
//! the same port with the same data.
//!
//! ```no_run
//! # fn run() -> std::io::Result<()> {
//! use testbed::postgres::PostgresServer;
//! let mut server = PostgresServer::start()?;
//! let url = server.create_database()?; // postgres://postgres@127.0.0.1:PORT/test_1
//! server.psql(&url, "CREATE TABLE jobs (id int)")?;
//! server.stop();
//! server.restart()?;
//! assert_eq!(server.psql(&url, "SELECT count(*) FROM jobs")?.trim(), "0");
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;

use crate::net::free_port;
use crate::process::{Daemon, find_program, joined, which};

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A fast shutdown writes a checkpoint, which takes a moment on a busy machine.
const STOP_GRACE: Duration = Duration::from_secs(30);
const KILL_GRACE: Duration = Duration::from_secs(10);
/// The superuser `initdb` creates, and the user in every URL.
const SUPERUSER: &str = "postgres";

/// A `postgres` server on a free loopback port, with its data in a temporary
/// directory; shut down when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    installation: Installation,
    owner: Option<Account>,
    port: u16,
    daemon: Option<Daemon>,
    databases_created: AtomicUsize,
    dir: TempDir,
}

impl PostgresServer {
    /// Creates a cluster with `initdb`, starts a server on it and waits until it
    /// answers queries.
    pub fn start() -> io::Result<PostgresServer> {
        let installation = Installation::find()?;
        let owner = Account::for_server()?;
        let dir = tempfile::Builder::new()
            .prefix("testbed-postgres-")
            .tempdir()?;
        if let Some(owner) = &owner {
            std::os::unix::fs::chown(dir.path(), Some(owner.uid), Some(owner.gid))?;
        }
        let mut server = PostgresServer {
            installation,
            owner,
            port: 0,
            daemon: None,
            databases_created: AtomicUsize::new(0),
            dir,
        };
        server.initdb()?;
        // A free port can be taken by another test between the moment it is found
        // and the moment the server binds it: then the server exits, and another
        // port is tried.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// The URL of the `postgres` database:
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of the database `name` on this server (which may not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database (`test_1`, `test_2`, ...) and returns its URL.
    pub fn create_database(&self) -> io::Result<String> {
        let number = self.databases_created.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("test_{number}");
        self.psql(&self.url(), &format!("CREATE DATABASE {name}"))?;
        Ok(self.database_url(&name))
    }

    /// Runs `sql` with `psql` against the database at `url` and returns what it
    /// printed: one line a row, columns separated by `|`, no header and no command
    /// tags. Fails, with what psql said, when it cannot connect or a statement fails.
    pub fn psql(&self, url: &str, sql: &str) -> io::Result<String> {
        let mut command = self.psql_command()?;
        command.arg("--dbname").arg(url);
        run_psql(command, sql)
    }

    /// The port it listens on, on 127.0.0.1; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Shuts it down fast (SIGINT): open sessions are ended, committed data is kept,
    /// and connections are refused until [`restart`](PostgresServer::restart).
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Signal::INT, STOP_GRACE);
        }
    }

    /// Shuts it down at once (SIGQUIT), as a crash would: no checkpoint, and the
    /// next start recovers what was committed from the write-ahead log.
    ///
    /// Not SIGKILL: the server's own processes would outlive it for a moment, and
    /// hold the data directory against the next start.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Signal::QUIT, KILL_GRACE);
        }
    }

    /// Starts it again on the same port and data (stopping it first if it runs), and
    /// waits until it answers queries.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let data = self.data_dir();
        let mut command = self.server_command("postgres")?;
        command
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(joined("unix_socket_directories=", self.dir.path()))
            // Test databases are small; the default (128MB) times many servers at
            // once is memory the machine may not have.
            .args(["-c", "shared_buffers=16MB"]);
        let mut daemon = Daemon::spawn(&self.daemon_name(), command, self.dir())?;
        match self.wait_until_ready(&mut daemon) {
            Ok(()) => {
                self.daemon = Some(daemon);
                Ok(())
            }
            Err(error) => {
                daemon.stop(Signal::QUIT, KILL_GRACE);
                Err(error)
            }
        }
    }

    /// What the server wrote to its log since it was last started (kept after it
    /// stops).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir().join(format!("{}.log", self.daemon_name())))
            .unwrap_or_default()
    }

    fn daemon_name(&self) -> String {
        format!("postgres-{}", self.port)
    }

    /// The temporary directory: the data directory `data/`, the Unix socket, the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn initdb(&self) -> io::Result<()> {
        let mut command = self.server_command("initdb")?;
        command
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username", SUPERUSER, "--auth", "trust"])
            // Independent of the machine's locale, which may not even be installed.
            .args(["--encoding", "UTF8", "--locale", "C"])
            // The cluster lives as long as the test: no need to wait for the disk.
            .arg("--no-sync");
        let output = command.stdin(Stdio::null()).output()?;
        if !output.status.success() {
            return Err(failure("initdb", &output));
        }
        Ok(())
    }

    /// Asks over the Unix socket in our own directory, not over TCP: whatever
    /// answers there is this server, even if another one took its port.
    fn wait_until_ready(&self, daemon: &mut Daemon) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut command = self.psql_command()?;
            command
                .arg("--host")
                .arg(self.dir.path())
                .args(["--port", &self.port.to_string()])
                .args(["--username", SUPERUSER, "--dbname", "postgres"]);
            let error = match run_psql(command, "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if daemon.exit_status().is_some() {
                return Err(daemon.failed_to_start(io::Error::other("it exited")));
            }
            if Instant::now() > deadline {
                return Err(daemon.failed_to_start(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to SELECT 1 after {START_TIMEOUT:?}: {error}"),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command for a server program (`initdb`, `postgres`), run as the unprivileged
    /// account when the tests run as root.
    fn server_command(&self, program: &str) -> io::Result<Command> {
        let program = self.installation.program(program)?;
        let mut command = match &self.owner {
            Some(owner) => owner.command(&program),
            None => Command::new(&program),
        };
        // The test's own directory may be closed to the unprivileged account.
        command.current_dir(self.dir.path());
        without_libpq_environment(&mut command);
        Ok(command)
    }

    fn psql_command(&self) -> io::Result<Command> {
        let mut command = Command::new(self.installation.program("psql")?);
        // No ~/.psqlrc; unaligned rows without header or command tags; stop at the
        // first error and say so in the exit status.
        command.args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only"]);
        command.args(["--set", "ON_ERROR_STOP=1"]);
        without_libpq_environment(&mut command);
        Ok(command)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the PostgreSQL programs are.
#[derive(Debug, Clone)]
struct Installation {
    bin: PathBuf,
}

impl Installation {
    fn find() -> io::Result<Installation> {
        if let Some(initdb) = which("initdb") {
            // /usr/local/bin/initdb may be a link into /usr/lib/postgresql/15/bin,
            // where the postgres and psql of the same version are.
            let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(bin) = initdb.parent() {
                return Ok(Installation {
                    bin: bin.to_owned(),
                });
            }
        }
        newest_debian_bin().map(|bin| Installation { bin }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "initdb is neither on PATH nor in /usr/lib/postgresql/*/bin; run scripts/test (it installs postgresql) or `apt-get install postgresql`",
            )
        })
    }

    /// `program` from this installation, else from `PATH`.
    fn program(&self, program: &str) -> io::Result<PathBuf> {
        let path = self.bin.join(program);
        if path.is_file() {
            return Ok(path);
        }
        find_program(program, "postgresql")
    }
}

/// `/usr/lib/postgresql/<version>/bin` of the highest version that has `initdb`.
fn newest_debian_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// The unprivileged account the server runs as when the tests run as root.
#[derive(Debug, Clone)]
struct Account {
    uid: u32,
    gid: u32,
    setpriv: PathBuf,
}

impl Account {
    /// `None` when the tests do not run as root: the server runs as they do.
    fn for_server() -> io::Result<Option<Account>> {
        if !rustix::process::geteuid().is_root() {
            return Ok(None);
        }
        let setpriv = find_program("setpriv", "util-linux")?;
        ["postgres", "nobody"]
            .into_iter()
            .find_map(|name| {
                Some(Account {
                    uid: id(name, "-u")?,
                    gid: id(name, "-g")?,
                    setpriv: setpriv.clone(),
                })
            })
            .map(Some)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the tests run as root, which postgres refuses, and there is neither a postgres nor a nobody user to run it as",
                )
            })
    }

    /// `program` run as this account: `setpriv` drops root's ids, groups and
    /// capabilities, then execs it (so that the process started is the server
    /// itself, and a signal sent to it reaches the server).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(&self.setpriv);
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        command
    }
}

/// The user or group id (`flag`: `-u` or `-g`) of `user`, if it exists.
fn id(user: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id")
        .args([flag, user])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

/// Removes the `PG*` variables (`PGHOST`, `PGOPTIONS`, `PGDATA`, ...) through which
/// the environment would point the programs at another server or change its
/// settings.
fn without_libpq_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
}

fn run_psql(mut command: Command, sql: &str) -> io::Result<String> {
    let output = command
        .arg("--command")
        .arg(sql)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(failure("psql", &output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn failure(program: &str, output: &Output) -> io::Error {
    io::Error::other(format!(
        "{program} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(server: &PostgresServer, url: &str, sql: &str) -> String {
        server
            .psql(url, sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}\nserver log:\n{}", server.log_text()))
    }

    #[test]
    fn a_started_server_answers_a_query_over_tcp() {
        let server = PostgresServer::start().unwrap();
        assert_eq!(query(&server, &server.url(), "SELECT 1 + 1").trim(), "2");
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
        );
        let directory = query(&server, &server.url(), "SHOW unix_socket_directories");
        assert_eq!(Path::new(directory.trim()), server.dir());
    }

    #[test]
    fn a_created_database_is_new_and_empty() {
        let server = PostgresServer::start().unwrap();
        let first = server.create_database().unwrap();
        let second = server.create_database().unwrap();
        assert_ne!(first, second);
        query(&server, &first, "CREATE TABLE t (a int)");
        assert_eq!(
            query(&server, &second, "SELECT current_database()").trim(),
            "test_2"
        );
        let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 't'";
        assert_eq!(query(&server, &second, tables).trim(), "0");
    }

    #[test]
    fn a_stopped_server_refuses_connections_and_keeps_its_data_when_restarted() {
        let mut server = PostgresServer::start().unwrap();
        let url = server.create_database().unwrap();
        query(
            &server,
            &url,
            "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)",
        );
        let port = server.port();
        server.stop();
        assert!(!server.is_running());
        assert!(server.psql(&url, "SELECT 1").is_err());
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(query(&server, &url, "SELECT sum(a) FROM t").trim(), "3");
    }

    #[test]
    fn a_killed_server_recovers_what_was_committed() {
        let mut server = PostgresServer::start().unwrap();
        let url = server.url();
        query(
            &server,
            &url,
            "CREATE TABLE t (a int); INSERT INTO t VALUES (7)",
        );
        server.kill();
        assert!(server.psql(&url, "SELECT 1").is_err());
        server.restart().unwrap();
        assert_eq!(query(&server, &url, "SELECT a FROM t").trim(), "7");
        assert!(
            server.log_text().contains("recover"),
            "{}",
            server.log_text()
        );
    }

    #[test]
    fn two_servers_run_at_once_on_their_own_ports() {
        let one = PostgresServer::start().unwrap();
        let two = PostgresServer::start().unwrap();
        assert_ne!(one.port(), two.port());
        query(&one, &one.url(), "CREATE TABLE only_in_one (a int)");
        let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_one'";
        assert_eq!(query(&one, &one.url(), tables).trim(), "1");
        assert_eq!(query(&two, &two.url(), tables).trim(), "0");
    }
}
