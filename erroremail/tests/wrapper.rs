//! The `erroremail` command wrapper, run as a user runs it, against a real SMTP
//! server.

// Test helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders as _;
use testbed::smtp::{SmtpOptions, SmtpServer};

mod common;

use common::only_mail;

/// A directory with a config for `port` (plus `extra` lines), the throttle state
/// file beside it, so that no test touches the user's own state, and a `tmp`
/// directory that is the wrapper's `TMPDIR`, to see what it leaves there.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(port: u16, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("throttle.json");
        std::fs::write(
            dir.path().join("erroremail.toml"),
            format!(
                "server = '127.0.0.1'\nport = {port}\ntls = 'none'\nfrom = 'cron <cron@example.com>'\nto = 'ops@example.com'\ntimeout = 5\nthrottle_file = '{}'\n{extra}",
                state.display()
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        Setup { dir }
    }

    /// The files the wrapper left in its `TMPDIR`.
    fn temp_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("tmp"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("erroremail.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_erroremail"));
        command
            .arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("TMPDIR", self.dir.path().join("tmp"))
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn failed_command_is_mailed_with_its_output_and_its_status_is_kept() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "subject = '[{job}] {message}'");
    let script = "for i in 1 2 3 4 5 6 7 8 9; do echo \"row $i imported\"; done; \
                  echo 'warning: 3 rows skipped' >&2; \
                  echo '<script>alert(1)</script> & done'; exit 3";

    let output = setup.run(&[
        "--tail",
        "3",
        "--context",
        "job=nightly-import",
        "--",
        "sh",
        "-c",
        script,
    ]);

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("row 1 imported\n") && out.contains("row 9 imported\n"),
        "{out}"
    );
    assert!(out.contains("<script>alert(1)</script> & done"));
    assert!(stderr(&output).contains("warning: 3 rows skipped"));
    assert!(stderr(&output).contains("failure mailed to ops@example.com"));

    let mail = only_mail(&server);
    assert_eq!(
        mail.message.subject(),
        Some("[nightly-import] sh: exit 3 — warning: 3 rows skipped")
    );
    let text = mail.text();
    assert_eq!(
        text.lines().take(3).collect::<Vec<_>>(),
        ["warning: 3 rows skipped", "", "sh: exit 3"],
        "the last line on stderr leads:\n{text}"
    );
    mail.assert_text_contains(&[
        "Command:",
        "exit status 3",
        "Started:",
        "Duration:",
        "Working directory:",
        &setup.dir.path().display().to_string(),
        "Job:",
        "nightly-import",
        "== Stderr ==",
        "<script>alert(1)</script> & done",
    ]);
    let stderr_at = text.find("== Stderr ==").unwrap();
    let output_at = text.find("== Last 3 lines of the output").unwrap();
    assert!(stderr_at < output_at, "stderr first:\n{text}");
    assert!(
        !text.contains("row 5 imported"),
        "only the last 3 lines inline:\n{text}"
    );
    let html = mail.html();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; done"));
    assert!(!html.contains("<script>"));
    let attachment = mail.message.attachment(0).unwrap();
    assert!(attachment.attachment_name().unwrap().starts_with("sh-"));
    let log = String::from_utf8_lossy(attachment.contents());
    for line in [
        "row 1 imported",
        "row 9 imported",
        "warning: 3 rows skipped",
        "& done",
    ] {
        assert!(log.contains(line), "{line:?} in the attached log:\n{log}");
    }
    assert_eq!(
        setup.temp_files(),
        Vec::<PathBuf>::new(),
        "nothing left behind"
    );
}

#[test]
fn command_killed_by_a_signal_exits_128_plus_the_signal_and_the_mail_names_it() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");

    let output = setup.run(&["--", "sh", "-c", "echo about to die; kill -KILL $$"]);

    assert_eq!(output.status.code(), Some(137), "{}", stderr(&output));
    let mail = only_mail(&server);
    let subject = mail.message.subject().unwrap();
    assert!(
        subject.starts_with('[') && subject.ends_with("] sh: killed by SIGKILL — about to die"),
        "the wrapper's default subject: {subject}"
    );
    mail.assert_text_contains(&["killed by signal 9 (SIGKILL)"]);
}

#[test]
fn successful_command_sends_nothing() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");

    let output = setup.run(&["--", "sh", "-c", "echo all good"]);

    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), "all good\n");
    assert_eq!(stderr(&output), "");
    assert!(server.messages().unwrap().is_empty());
    assert_eq!(setup.temp_files(), Vec::<PathBuf>::new());
}

#[test]
fn command_that_cannot_start_is_mailed_with_status_127() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");

    let output = setup.run(&["--", "no-such-command-anywhere", "--flag"]);

    assert_eq!(output.status.code(), Some(127));
    let mail = only_mail(&server);
    let subject = mail.message.subject().unwrap();
    assert!(
        subject.contains("] no-such-command-anywhere: not started: "),
        "{subject}"
    );
}

#[test]
fn server_down_keeps_the_status_says_why_and_keeps_the_log() {
    let mut server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    server.kill();

    let started = Instant::now();
    let output = setup.run(&["--", "sh", "-c", "echo partial results; exit 4"]);

    assert!(
        started.elapsed() < Duration::from_secs(5 + 5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(output.status.code(), Some(4));
    let err = stderr(&output);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(
        err.matches("connection refused").count(),
        1,
        "said once, plainly:\n{err}"
    );
    let kept = err
        .lines()
        .find_map(|line| line.strip_prefix("erroremail: the command's output is kept in "))
        .unwrap_or_else(|| panic!("no kept log in:\n{err}"));
    let kept = Path::new(kept);
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "partial results\n");
    assert_eq!(setup.temp_files(), [kept], "only the log kept on purpose");
}

#[test]
fn broken_config_still_runs_the_command_and_keeps_its_status() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    let config = std::fs::read_to_string(setup.config()).unwrap();
    std::fs::write(
        setup.config(),
        config.replace("tls = 'none'", "tls = 'startls'"),
    )
    .unwrap();

    let output = setup.run(&["--", "sh", "-c", "touch ran; exit 5"]);

    assert_eq!(output.status.code(), Some(5));
    assert!(setup.dir.path().join("ran").exists(), "the command ran");
    let err = stderr(&output);
    assert!(err.contains("`tls`") && err.contains("startls"), "{err}");
    assert!(err.contains("running the command anyway"), "{err}");
    assert!(err.contains("no log to keep"), "{err}");
    assert!(server.messages().unwrap().is_empty());
    assert_eq!(
        setup.temp_files(),
        Vec::<PathBuf>::new(),
        "no empty log left behind"
    );
}

#[test]
fn crash_loop_across_processes_sharing_the_throttle_file_sends_at_most_8_mails() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "throttle_window = '1h'");

    // 100 failing runs, four processes at a time, like cron jobs that overlap.
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let setup = &setup;
            scope.spawn(move || {
                for run in 0..25 {
                    // Long enough to be shortened in the subject, with numbers
                    // of one and two digits: still one failure.
                    let batch = worker * 25 + run;
                    let script = format!(
                        "echo 'importing batch {batch} from /srv/in/{batch}.csv into the warehouse'; exit 1"
                    );
                    let output = setup.run(&["--", "sh", "-c", &script]);
                    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
                }
            });
        }
    });

    common::assert_crash_loop_of_100_mails(&server.messages().unwrap());
}

/// Runs `sh -c 'sleep 30 & echo $!; wait'` under the wrapper, sends `signal` to
/// the wrapper, and checks that the shell and its background `sleep` both end, that
/// the wrapper exits as a shell would, and that the mail names the signal.
fn signal_to_the_wrapper_ends_the_command_and_what_it_started(signal: &str, number: i32) {
    use std::io::BufRead as _;

    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    let mut wrapper = setup
        .command(&["--", "sh", "-c", "sleep 30 & echo $!; wait"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufReader::new(wrapper.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let sleep_pid: u32 = first_line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the background pid, passed through: {first_line:?}"));

    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &wrapper.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wrapper.wait().unwrap();

    assert_eq!(
        status.code(),
        Some(128 + number),
        "the shell died of the signal; the wrapper exits as a shell would"
    );
    assert!(
        gone_within(sleep_pid, Duration::from_secs(5)),
        "the background sleep {sleep_pid} ended too"
    );
    let mail = only_mail(&server);
    let subject = mail.message.subject().unwrap();
    assert!(
        subject.contains(&format!("] sh: killed by SIG{signal}")),
        "{subject}"
    );
    mail.assert_text_contains(&[&format!(
        "Stopped by:        SIG{signal}, sent to erroremail (pid {})",
        wrapper.id()
    )]);
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet) within `limit`.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

#[test]
fn sigterm_to_the_wrapper_ends_the_command_and_its_background_job() {
    signal_to_the_wrapper_ends_the_command_and_what_it_started("TERM", 15);
}

#[test]
fn sigint_to_the_wrapper_ends_the_command_and_its_background_job() {
    signal_to_the_wrapper_ends_the_command_and_what_it_started("INT", 2);
}

#[test]
fn two_jobs_failing_alternately_are_mailed_separately() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "throttle_window = '1h'");
    let scripts = setup.dir.path().join("bin");
    std::fs::create_dir(&scripts).unwrap();
    let mut jobs = Vec::new();
    for name in ["backup-db.sh", "rotate-logs.sh"] {
        let path = scripts.join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&path).unwrap().permissions(),
            0o755,
        );
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&path, permissions).unwrap();
        jobs.push(path.display().to_string());
    }

    for _ in 0..2 {
        for job in &jobs {
            assert_eq!(setup.run(&["--", job]).status.code(), Some(1));
        }
    }

    let subjects: Vec<String> = server
        .messages()
        .unwrap()
        .iter()
        .map(|mail| mail.message.subject().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        subjects.len(),
        4,
        "each job's 1st and 2nd failure: {subjects:#?}"
    );
    for job in ["backup-db.sh", "rotate-logs.sh"] {
        let of_job = subjects
            .iter()
            .filter(|s| s.contains(&format!("] {job}: exit 1")));
        assert_eq!(of_job.count(), 2, "{job}: {subjects:#?}");
    }
}

#[test]
fn runs_with_different_context_values_are_throttled_apart() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "throttle_window = '1h'");

    for _ in 0..2 {
        for job in ["job=a", "job=b"] {
            setup.run(&["--context", job, "--", "sh", "-c", "exit 1"]);
        }
    }

    assert_eq!(server.messages().unwrap().len(), 4);
}

#[test]
fn unusable_throttle_file_is_said_on_stderr_and_in_the_mail() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    // A file where the throttle file's directory should be.
    std::fs::write(setup.dir.path().join("blocker"), "").unwrap();
    let config = std::fs::read_to_string(setup.config()).unwrap();
    let config: String = config
        .lines()
        .filter(|line| !line.starts_with("throttle_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(
        setup.config(),
        format!(
            "{config}throttle_file = '{}'\n",
            setup.dir.path().join("blocker/throttle.json").display()
        ),
    )
    .unwrap();

    let output = setup.run(&["--", "sh", "-c", "exit 1"]);

    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("WARN") && err.contains("cannot use the throttle file"),
        "{err}"
    );
    let mail = only_mail(&server);
    mail.assert_text_contains(&["Throttling off: cannot use the throttle file "]);
}

#[test]
fn unusable_tmpdir_still_mails_the_failure_with_its_output() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");

    let output = setup
        .command(&["--", "sh", "-c", "echo 'copied 3 of 9 files'; exit 2"])
        .env("TMPDIR", "/nonexistent/erroremail-test")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let mail = only_mail(&server);
    assert_eq!(
        mail.message.attachment(0).map(|a| a.contents().to_vec()),
        Some(b"copied 3 of 9 files\n".to_vec())
    );
}

#[test]
fn output_beyond_the_cap_is_cut_in_the_mail_and_never_stored() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    // 6 MiB of numbered lines, as a dump written to stdout would be.
    let script = "i=0; while [ $i -lt 200000 ]; do printf 'row %07d of the dump...\\n' $i; i=$((i+1)); done | head -c 6291456; exit 1";

    let output = setup
        .command(&["--", "sh", "-c", script])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("failure mailed"),
        "{}",
        stderr(&output)
    );
    let mail = only_mail(&server);
    let attachment = mail.message.attachment(0).unwrap();
    assert!(attachment.contents().len() <= 4 * 1024 * 1024);
    assert!(attachment.contents().starts_with(b"row "));
    mail.assert_text_contains(&["[The attachment holds the last 4.0 MiB of the output"]);
    assert_eq!(setup.temp_files(), Vec::<PathBuf>::new());
}

#[test]
fn what_stdout_said_before_stderr_stays_before_it_in_the_log() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    let script = "echo 'step 1 done'; echo 'step 2 done'; echo 'step 3 failed' >&2; exit 1";

    let output = setup.run(&["--", "sh", "-c", script]);

    assert_eq!(output.status.code(), Some(1));
    let mail = only_mail(&server);
    let log = String::from_utf8_lossy(mail.message.attachment(0).unwrap().contents()).into_owned();
    let at = |line: &str| {
        log.find(line)
            .unwrap_or_else(|| panic!("{line:?} in {log}"))
    };
    assert!(at("step 1 done") < at("step 3 failed"), "{log}");
    assert!(at("step 2 done") < at("step 3 failed"), "{log}");
}
