//! The worker's runners: `dadd run` started detached for a recorded process,
//! told from other processes by their command line, and signalled.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

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
    if let Some(bytes) = config.prepared_copies {
        command.arg("--prepared-copies").arg(bytes.to_string());
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

/// The flag of a kernel thread in `/proc/PID/stat` (`PF_KTHREAD`).
const PF_KTHREAD: u64 = 0x0020_0000;

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
    // No command line: a zombie (gone), a kernel thread that took the pid
    // after a reboot (gone), or an exec under way (unsure).
    match ProcStat::of(pid) {
        Some(stat) if !stat.zombie && !stat.kernel_thread => Liveness::Unsure,
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

/// How far a command's start time, as the kernel has it, may be from the time
/// of its `running` state: the boot time is in whole seconds, and the runner
/// writes the state just after it starts the command.
const START_TIME_SLACK: Duration = Duration::from_secs(3);

/// Whether `pid` is the command that its runner said was `running` at `at`: a
/// live process that started then (pids are reused; after a reboot the pid may
/// be anyone's). Always false without `/proc` (not Linux), where it cannot be
/// told.
pub(crate) fn is_command(pid: u32, at: jiff::Timestamp) -> bool {
    let Some(started) = start_time(pid) else {
        return false;
    };
    let at = at.as_millisecond() as f64 / 1000.0;
    (started - at).abs() <= START_TIME_SLACK.as_secs_f64()
}

/// What `/proc/PID/stat` says of a process that tells a runner (or its
/// command) from what took its pid.
struct ProcStat {
    /// A zombie, or dead: gone.
    zombie: bool,
    /// A kernel thread (`PF_KTHREAD` in its flags).
    kernel_thread: bool,
    /// When it started, in clock ticks since boot.
    start_ticks: u64,
}

impl ProcStat {
    /// The process `pid`'s, `None` when it is gone.
    fn of(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name, which may hold spaces and parentheses: field 3
        // (the state) on.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3).copied();
        Some(ProcStat {
            zombie: field(3)?.starts_with(['Z', 'X']),
            kernel_thread: field(9)?.parse::<u64>().ok()? & PF_KTHREAD != 0,
            start_ticks: field(22)?.parse().ok()?,
        })
    }
}

/// When live process `pid` started, in seconds since the epoch: its start
/// time in clock ticks since boot (`/proc/PID/stat`, field 22) after the boot
/// time (`btime` in `/proc/stat`). `None` for a zombie, or one gone.
fn start_time(pid: u32) -> Option<f64> {
    let stat = ProcStat::of(pid).filter(|stat| !stat.zombie)?;
    let ticks = stat.start_ticks;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot as f64 + ticks as f64 / clock_ticks_per_second() as f64)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 (what Linux
/// uses everywhere) when it cannot be asked.
fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// Terminates the process group of command `pid` (its runner's work, when the
/// runner cannot do it any more): SIGTERM, then SIGKILL to what is left after
/// `grace`. The caller has checked that `pid` is the command ([`is_command`]).
pub(crate) async fn terminate_group(pid: u32, grace: Duration) {
    let Some(group) = pid_of(pid) else {
        return;
    };
    if let Err(error) = rustix::process::kill_process_group(group, Signal::TERM) {
        tracing::warn!(pid, %error, "cannot signal the command's process group");
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ESRCH: none of the group is left (a zombie not reaped yet still counts).
        if rustix::process::test_kill_process_group(group).is_err() {
            return;
        }
    }
    if let Err(error) = rustix::process::kill_process_group(group, Signal::KILL)
        && error != rustix::io::Errno::SRCH
    {
        tracing::warn!(pid, %error, "cannot kill the command's process group");
    }
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_is_told_by_its_start_time_and_its_group_terminated() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let mut sleep = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = sleep.id();
        let now = jiff::Timestamp::now();
        assert!(is_command(pid, now));
        assert!(!is_command(pid, now - jiff::SignedDuration::from_secs(60)));
        assert!(!is_command(pid, now + jiff::SignedDuration::from_secs(60)));
        terminate_group(pid, Duration::from_millis(500)).await;
        let status = sleep.wait().unwrap();
        assert_eq!(status.signal(), Some(15), "{status:?}");
        assert!(!is_command(pid, now), "gone");
    }

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

    #[test]
    fn a_kernel_thread_that_took_a_runners_pid_is_not_the_runner() {
        // kthreadd and the kworkers: no command line, never a zombie.
        let kernel_thread = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| ProcStat::of(*pid).is_some_and(|stat| stat.kernel_thread))
            .expect("a kernel thread in /proc (this test needs Linux, outside a pid namespace)");
        assert_eq!(liveness(kernel_thread, "job-1"), Liveness::Gone);
    }
}
