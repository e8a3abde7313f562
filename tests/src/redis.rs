//! Redis for tests: `redis-server` processes on free loopback ports, in temp dirs.
//!
//! A [`RedisServer`] is one instance that persists nothing. It can be killed and
//! started again on the same port, to test what a client does while Redis is away
//! and when it comes back. A [`RedisCluster`] is three masters joined with
//! `redis-cli --cluster create`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;

use crate::net::free_port;
use crate::process::{Daemon, find_program};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One `redis-server` on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    daemon: Option<Daemon>,
    cluster_enabled: bool,
}

impl RedisServer {
    /// Starts a Redis that keeps nothing on disk.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(false)
    }

    fn start_with(cluster_enabled: bool) -> io::Result<RedisServer> {
        // A free port can be taken by another test between the moment it is found
        // and the moment the server binds it: then the server does not answer, and
        // another port is tried.
        let mut last_error = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("testbed-redis-")
                .tempdir()?;
            let mut server = RedisServer {
                port: free_port()?,
                dir,
                daemon: None,
                cluster_enabled,
            };
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// The URL to connect to: `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Kills it (SIGKILL): clients see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
    }

    /// Starts it again, on the same port, empty (nothing was persisted).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let mut command = Command::new(redis_server()?);
        command
            .current_dir(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            // The default is larger than the bodies these tests store, but say it.
            .args(["--proto-max-bulk-len", "536870912"]);
        if self.cluster_enabled {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"]);
        }
        self.daemon = Some(Daemon::start(
            &format!("redis-{}", self.port),
            command,
            self.port,
            self.dir.path(),
            START_TIMEOUT,
        )?);
        wait_until_ping(self.port)?;
        Ok(())
    }

    /// Freezes it (SIGSTOP): it keeps its connections but answers nothing, like a
    /// server that has become very slow, until [`resume`](RedisServer::resume).
    pub fn pause(&self) -> io::Result<()> {
        self.signal(Signal::STOP)
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> io::Result<()> {
        self.signal(Signal::CONT)
    }

    fn signal(&self, signal: Signal) -> io::Result<()> {
        self.daemon
            .as_ref()
            .ok_or_else(|| io::Error::other("the server is not running"))?
            .signal(signal)
    }

    /// Runs a `redis-cli` command against it and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> io::Result<String> {
        redis_cli(self.port, args)
    }

    /// The directory it runs in (its log is there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Three `redis-server` masters in cluster mode, slots spread over them.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and creates the cluster; waits until it reports `ok`.
    pub fn start() -> io::Result<RedisCluster> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_with(true))
            .collect::<io::Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = Command::new(redis_cli_path()?)
            .args(["-p", &nodes[0].port.to_string()])
            .args(&args)
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + START_TIMEOUT;
        while !cluster.nodes.iter().all(|n| {
            n.cli(&["cluster", "info"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        }) {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the cluster never reported ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// The nodes' URLs, to seed a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

fn redis_server() -> io::Result<PathBuf> {
    find_program("redis-server", "redis-server")
}

fn redis_cli_path() -> io::Result<PathBuf> {
    find_program("redis-cli", "redis-server")
}

fn redis_cli(port: u16, args: &[&str]) -> io::Result<String> {
    let output = Command::new(redis_cli_path()?)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn wait_until_ping(port: u16) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match redis_cli(port, &["ping"]) {
            Ok(answer) if answer.trim() == "PONG" => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis on {port} never answered PING"),
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_can_be_killed_and_restarted_on_its_port() {
        let mut server = RedisServer::start().unwrap();
        server.cli(&["set", "k", "v"]).unwrap();
        assert_eq!(server.cli(&["get", "k"]).unwrap().trim(), "v");
        server.kill();
        assert!(server.cli(&["ping"]).is_err() || !server.is_running());
        server.restart().unwrap();
        assert_eq!(
            server.cli(&["get", "k"]).unwrap().trim(),
            "",
            "nothing was persisted"
        );
    }

    #[test]
    fn a_paused_server_answers_once_resumed() {
        let server = RedisServer::start().unwrap();
        server.pause().unwrap();
        server.resume().unwrap();
        assert_eq!(server.cli(&["ping"]).unwrap().trim(), "PONG");
    }

    #[test]
    fn a_cluster_of_three_reports_ok() {
        let cluster = RedisCluster::start().unwrap();
        assert_eq!(cluster.urls().len(), 3);
        let slots = cluster.nodes()[0].cli(&["cluster", "info"]).unwrap();
        assert!(slots.contains("cluster_slots_assigned:16384"), "{slots}");
    }
}
