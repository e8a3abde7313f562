//! The worker's runners: `dadd run` started detached for a recorded process,
//! told from other processes by their command line, and signalled.

use std::path::Path;
use std::process::Stdio;

use rustix::process::{Pid, Signal};

use super::WorkerConfig;
use super::records::{LOG_COPY, PID_FILE, SPEC_FILE, STATE_FILE};

/// Starts the runner of the process recorded in `dir`, detached: `dadd run
/// DIR/spec.json --id ID --pid-file DIR/runner.pid --state-file DIR/state.jsonl
/// --no-master`, with the host's config and cache, and the token in the
/// environment. Waits only for the starting `dadd run`, which exits once the
/// runner is on its own (in a session of its own, not a child of the worker).
///
/// Returns why it could not start, in words.
pub(crate) async fn start(config: &WorkerConfig, id: &str, dir: &Path) -> Result<(), String> {
    let mut command = tokio::process::Command::new(&config.program);
    command
        .arg("run")
        .arg(dir.join(SPEC_FILE))
        .arg("--id")
        .arg(id)
        .arg("--pid-file")
        .arg(dir.join(PID_FILE))
        .arg("--state-file")
        .arg(dir.join(STATE_FILE))
        // The log of every run, success or failure, for the master.
        .arg("--log-copy")
        .arg(dir.join(LOG_COPY))
        // The worker alone talks to the master, whatever the config says.
        .arg("--no-master");
    if let Some(host_config) = &config.host_config {
        command.arg("--config").arg(host_config);
    }
    if let Some(cache_dir) = &config.cache_dir {
        command.arg("--cache-dir").arg(cache_dir);
    }
    if let Some(redis) = &config.redis {
        command.arg("--redis").arg(redis);
    }
    match &config.token {
        // In the environment, not on the command line that `ps` shows.
        Some(token) => command.env("DADD_TOKEN", token),
        None => command.env_remove("DADD_TOKEN"),
    };
    // What the worker did not pass on, the runner is not to find by itself.
    for variable in ["DADD_CONFIG", "DADD_CACHE_DIR", "DADD_REDIS"] {
        command.env_remove(variable);
    }
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not in the worker's group: a Ctrl-C meant for the worker is not for it.
        .process_group(0)
        .output()
        .await
        .map_err(|error| format!("cannot run {}: {error}", config.program.display()))?;
    if output.status.success() {
        tracing::debug!(%id, said = %String::from_utf8_lossy(&output.stdout).trim(), "runner started");
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    Err(if said.is_empty() {
        format!("dadd run ended with {}", output.status)
    } else {
        said.to_owned()
    })
}

/// Whether a pid is a process's runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// It is: a live process whose command line has `--id ID`.
    Alive,
    /// It is not: gone, a zombie, or someone else (pids are reused: after a
    /// reboot, or a long time, the pid may be anyone's).
    Gone,
    /// It cannot be told now: a process in the middle of an exec has no command
    /// line for a moment (the runner is exec'd twice, by `setsid`); look again
    /// later.
    Unsure,
}

/// Whether `pid` is the live runner of process `id`.
pub(crate) fn liveness(pid: u32, id: &str) -> Liveness {
    let cmdline = match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline,
        // No /proc (not Linux): whether the pid is alive is all there is to know.
        Err(_) if !Path::new("/proc/self").exists() => {
            return match pid_of(pid).map(rustix::process::test_kill_process) {
                Some(Ok(())) => Liveness::Alive,
                _ => Liveness::Gone,
            };
        }
        Err(_) => return Liveness::Gone,
    };
    let args: Vec<&[u8]> = cmdline.split(|&byte| byte == 0).collect();
    if args
        .windows(2)
        .any(|pair| pair[0] == b"--id" && pair[1] == id.as_bytes())
    {
        return Liveness::Alive;
    }
    if !cmdline.is_empty() {
        return Liveness::Gone;
    }
    // No command line: a zombie (gone) or an exec under way (unsure).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat)
            if !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])) =>
        {
            Liveness::Unsure
        }
        _ => Liveness::Gone,
    }
}

/// Sends SIGTERM to runner `pid` of process `id`, when it is still that runner:
/// the runner then terminates its command's process group and records `failed`
/// with the signal. Returns whether it was sent.
pub(crate) fn terminate(pid: u32, id: &str) -> bool {
    let Some(target) = pid_of(pid).filter(|_| liveness(pid, id) == Liveness::Alive) else {
        return false;
    };
    match rustix::process::kill_process(target, Signal::TERM) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%id, pid, %error, "cannot signal the runner");
            false
        }
    }
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_a_runner_only_of_the_id_on_its_command_line() {
        // `; true`: a shell that would exec a lone command keeps its own args.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "sh", "--id", "job-1"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        // Right after the exec, the command line may not be there yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while liveness(pid, "job-1") == Liveness::Unsure && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(liveness(pid, "job-1"), Liveness::Alive);
        assert_eq!(liveness(pid, "job-2"), Liveness::Gone);
        assert_eq!(liveness(pid, "job"), Liveness::Gone);
        assert!(!terminate(pid, "job-2"));
        assert!(terminate(pid, "job-1"));
        // A zombie (not reaped yet), then gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while liveness(pid, "job-1") != Liveness::Gone && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(liveness(pid, "job-1"), Liveness::Gone, "a zombie is gone");
        sh.wait().unwrap();
        assert_eq!(liveness(pid, "job-1"), Liveness::Gone);
    }
}
