//! The command's process: started in its own process group, waited for, and on a
//! timeout terminated with its whole group.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::time::Instant;

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran out of time; its group got SIGTERM, and SIGKILL when something in it
    /// outlived the grace period.
    TimedOut {
        /// Whether SIGKILL was needed.
        killed: bool,
    },
    /// The runner was asked to stop (by this signal); the group was terminated as
    /// on a timeout.
    Stopped {
        /// The signal the runner received.
        signal: i32,
        /// Whether SIGKILL was needed.
        killed: bool,
    },
}

/// How often a terminated group is looked at until it is gone.
const POLL: Duration = Duration::from_millis(50);

/// Waits for `child` (the leader of its own process group) to exit, for at most
/// `timeout`, and until `stop` says which signal asked the runner to stop; on
/// either, terminates its group.
pub(crate) async fn wait(
    child: &mut Child,
    timeout: Option<Duration>,
    grace: Duration,
    stop: impl Future<Output = i32>,
) -> std::io::Result<Exit> {
    // Read before the child is reaped: its pid is its group's id.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(Pid::from_raw);
    let deadline = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let status = tokio::select! {
        status = child.wait() => status?,
        () = deadline => {
            let killed = terminate_group(child, group, grace).await?;
            return Ok(Exit::TimedOut { killed });
        }
        signal = stop => {
            tracing::info!(signal = %signal_name(signal), "asked to stop");
            let killed = terminate_group(child, group, grace).await?;
            return Ok(Exit::Stopped { signal, killed });
        }
    };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        // Neither is only possible for a stopped process, which wait() does not
        // return.
        (None, None) => Exit::Code(-1),
    })
}

/// Sends SIGTERM to the group, waits up to `grace` for all of it to be gone, then
/// sends SIGKILL to what is left. Returns whether SIGKILL was sent.
async fn terminate_group(
    child: &mut Child,
    group: Option<Pid>,
    grace: Duration,
) -> std::io::Result<bool> {
    let Some(group) = group else {
        // Already reaped: nothing left to signal.
        child.wait().await?;
        return Ok(false);
    };
    tracing::info!(
        group = group.as_raw_pid(),
        "timed out: sending SIGTERM to the process group"
    );
    signal_group(group, Signal::TERM);
    let deadline = Instant::now() + grace;
    let leader_exited = tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_ok();
    // The leader may be gone while others in its group ignore SIGTERM.
    while group_alive(group) && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let killed = group_alive(group);
    if killed {
        tracing::warn!(
            group = group.as_raw_pid(),
            grace = %humantime::format_duration(grace),
            "the process group outlived SIGTERM: sending SIGKILL"
        );
        signal_group(group, Signal::KILL);
    }
    if !leader_exited {
        child.wait().await?;
    }
    Ok(killed)
}

fn signal_group(group: Pid, signal: Signal) {
    if let Err(error) = rustix::process::kill_process_group(group, signal) {
        // ESRCH: all gone already, which is what we want.
        if error != rustix::io::Errno::SRCH {
            tracing::warn!(group = group.as_raw_pid(), %error, "cannot signal the process group");
        }
    }
}

/// Whether any process of the group is left (zombies that nobody reaped count:
/// they are harmless, and a SIGKILL to them too).
fn group_alive(group: Pid) -> bool {
    rustix::process::test_kill_process_group(group).is_ok()
}

/// A signal's name, `SIGTERM`, or `signal 42` for one without a common name
/// (erroremail's names, so that the state and the mail agree).
pub(crate) fn signal_name(signal: i32) -> String {
    erroremail::signal_name(signal)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(script: &str) -> Child {
        tokio::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_told_apart() {
        let exit = wait(
            &mut spawn("exit 3"),
            None,
            Duration::ZERO,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(exit, Exit::Code(3));
        let exit = wait(
            &mut spawn("kill -KILL $$"),
            None,
            Duration::ZERO,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(exit, Exit::Signal(9));
    }

    #[tokio::test]
    async fn a_timeout_terminates_the_group_and_kills_what_ignores_sigterm() {
        let exit = wait(
            &mut spawn("sleep 60"),
            Some(Duration::from_millis(200)),
            Duration::from_secs(10),
            std::future::pending(),
        )
        .await
        .unwrap();
        // Whether SIGKILL was needed depends on who reaps the orphans here.
        assert!(matches!(exit, Exit::TimedOut { .. }), "{exit:?}");
        let exit = wait(
            &mut spawn("trap '' TERM; sleep 60 & wait"),
            Some(Duration::from_millis(200)),
            Duration::from_millis(300),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(exit, Exit::TimedOut { killed: true });
    }

    #[tokio::test]
    async fn a_stop_terminates_the_group_and_says_which_signal_asked() {
        let stop = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            2
        };
        let exit = wait(&mut spawn("sleep 60"), None, Duration::from_secs(10), stop)
            .await
            .unwrap();
        assert!(matches!(exit, Exit::Stopped { signal: 2, .. }), "{exit:?}");
    }

    #[test]
    fn signals_have_their_names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(42), "signal 42");
    }
}
