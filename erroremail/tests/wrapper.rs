//! The `erroremail` command wrapper, run as a user runs it, against a real SMTP
//! server.

// Test helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders as _;
use testbed::smtp::{ReceivedMail, SmtpOptions, SmtpServer};

mod common;

/// A directory with a config for `port` (plus `extra` lines), and the throttle
/// state file beside it, so that no test touches the user's own state.
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
        Setup { dir }
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

fn only_mail(server: &SmtpServer) -> ReceivedMail {
    let mut mails = server.messages().unwrap();
    assert_eq!(mails.len(), 1, "server log:\n{}", server.log_text());
    mails.remove(0)
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
    let subject = mail.message.subject().unwrap();
    assert!(subject.starts_with("[nightly-import] `sh -c"), "{subject}");
    assert!(subject.ends_with("failed with exit status 3"), "{subject}");
    let text = mail.text();
    mail.assert_text_contains(&[
        "Command:",
        "exit status 3",
        "Started:",
        "Duration:",
        "Working directory:",
        &setup.dir.path().display().to_string(),
        "job:",
        "nightly-import",
        "<script>alert(1)</script> & done",
    ]);
    assert!(
        !text.contains("row 5 imported"),
        "only the last 3 lines inline:\n{text}"
    );
    let html = mail.html();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; done"));
    assert!(!html.contains("<script>"));
    let attachment = mail.message.attachment(0).unwrap();
    assert_eq!(attachment.attachment_name(), Some("sh.log"));
    let log = String::from_utf8_lossy(attachment.contents());
    for line in [
        "row 1 imported",
        "row 9 imported",
        "warning: 3 rows skipped",
        "& done",
    ] {
        assert!(log.contains(line), "{line:?} in the attached log:\n{log}");
    }
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
        subject.ends_with("was killed by signal 9 (SIGKILL)"),
        "{subject}"
    );
    assert!(mail.text().contains("about to die"));
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
        subject.contains("`no-such-command-anywhere --flag` could not be started"),
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
    let kept = err
        .lines()
        .find_map(|line| line.strip_prefix("erroremail: the command's output is kept in "))
        .unwrap_or_else(|| panic!("no kept log in:\n{err}"));
    let kept = Path::new(kept);
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "partial results\n");
    std::fs::remove_file(kept).unwrap();
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
    assert!(server.messages().unwrap().is_empty());
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

#[test]
fn sigterm_to_the_wrapper_reaches_the_command_and_is_reported() {
    use std::io::BufRead as _;

    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let setup = Setup::new(server.port(), "");
    let mut wrapper = setup
        .command(&["--", "sh", "-c", "echo ready; exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufReader::new(wrapper.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    assert_eq!(
        first_line, "ready\n",
        "the command runs and its output passes through"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &wrapper.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wrapper.wait().unwrap();

    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the wrapper reports, then exits as a shell would"
    );
    let mail = only_mail(&server);
    let subject = mail.message.subject().unwrap();
    assert!(
        subject.ends_with("was killed by signal 15 (SIGTERM)"),
        "{subject}"
    );
}
