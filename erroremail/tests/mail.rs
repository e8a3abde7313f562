//! The library against a real SMTP server (aiosmtpd) on loopback: what arrives, how
//! it is secured, and what a send that fails says.

// Test helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::fmt;
use std::io::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime};

use erroremail::{Config, ErrorEmail, Exit, Outcome, ProcessFailure, SendFailure};
use mail_parser::MimeHeaders as _;
use testbed::smtp::{SmtpOptions, SmtpServer};

mod common;

use common::only_mail;

/// A config for the test server; `lines` add or override keys.
fn config(port: u16, lines: &[&str]) -> Config {
    let mut keys = vec![
        "server = '127.0.0.1'".to_owned(),
        format!("port = {port}"),
        "from = 'ErrorEmail <errors@example.com>'".to_owned(),
        "to = ['ops@example.com', 'Dev <dev@example.com>']".to_owned(),
        "timeout = 10".to_owned(),
    ];
    for line in lines {
        let key = line.split('=').next().unwrap_or_default().trim();
        keys.retain(|existing| !existing.starts_with(&format!("{key} ")));
        keys.push((*line).to_owned());
    }
    // No `tls`: plain, as for any relay on loopback.
    Config::from_toml(&keys.join("\n")).unwrap()
}

/// A config for a TLS server of the test bed, trusting its CA, with credentials.
fn tls_config(server: &SmtpServer, tls: &str, password: &str) -> Config {
    let ca = server.ca_file().unwrap().display().to_string();
    config(
        server.port(),
        &[
            &format!("tls = '{tls}'"),
            &format!("ca_file = '{ca}'"),
            "username = 'alerts'",
            &format!("password = '{password}'"),
        ],
    )
}

/// An error with a source, as a library would return.
#[derive(Debug)]
struct ImportError {
    batch: u32,
    source: std::io::Error,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot import orders batch {}", self.batch)
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn import_error(batch: u32) -> ImportError {
    ImportError {
        batch,
        source: std::io::Error::other(format!("no space left writing /srv/orders/{batch}.csv")),
    }
}

#[tokio::test]
async fn error_mail_is_multipart_alternative_with_templated_subject_and_headers() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::builder(config(
        server.port(),
        &["subject = 'ERR: {host}:{port} {message}'"],
    ))
    .context("host", "web-1")
    .context("port", 8080)
    .build()
    .unwrap();

    let outcome = email.report(&import_error(42)).await.unwrap();

    assert_eq!(outcome, Outcome::Sent { stands_for: 1 });
    let mail = only_mail(&server);
    let message = &mail.message;
    assert_eq!(
        message.subject(),
        Some("ERR: web-1:8080 cannot import orders batch 42")
    );
    assert!(
        mail.raw_header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{:?}",
        mail.raw_header("Content-Type")
    );
    assert_eq!(message.text_body_count(), 1);
    assert_eq!(message.html_body_count(), 1);
    assert_eq!(message.attachment_count(), 0);
    assert!(message.date().is_some(), "Date header");
    let message_id = message.message_id().unwrap();
    assert!(message_id.contains('@'), "{message_id}");
    assert_eq!(mail.raw_header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(
        message.from().unwrap().first().unwrap().address(),
        Some("errors@example.com")
    );
    assert_eq!(mail.rcpt_tos, ["ops@example.com", "dev@example.com"]);
    mail.assert_text_contains(&[
        "cannot import orders batch 42",
        "Caused by:",
        "0: no space left writing /srv/orders/42.csv",
        "Host: web-1",
        "Port: 8080",
    ]);
    assert!(
        mail.html()
            .contains("no space left writing /srv/orders/42.csv")
    );
}

#[tokio::test]
async fn process_failure_mail_escapes_html_shows_the_tail_and_attaches_the_log() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &[])).unwrap();
    let mut log = tempfile::NamedTempFile::new().unwrap();
    for n in 1..=30 {
        writeln!(log, "step {n} done").unwrap();
    }
    writeln!(log, r#"<script>alert("owned")</script> & more"#).unwrap();
    let failure = ProcessFailure::new(["./import.sh", "--all"], Exit::Code(3))
        .started(SystemTime::now())
        .duration(Duration::from_secs(95))
        .working_dir("/srv/import")
        .log_file(log.path())
        .tail_lines(5);

    email.send(&failure.into()).await.unwrap();

    let mail = only_mail(&server);
    assert!(
        mail.raw_header("Content-Type")
            .unwrap()
            .starts_with("multipart/mixed")
    );
    assert_eq!(
        mail.message.subject(),
        Some(r#"ErrorEmail: import.sh: exit 3 — <script>alert("owned")</script> & more"#)
    );
    let text = mail.text();
    assert_eq!(
        text.lines().take(3).collect::<Vec<_>>(),
        [
            r#"<script>alert("owned")</script> & more"#,
            "",
            "import.sh: exit 3"
        ],
        "the last line of the log leads:\n{text}"
    );
    mail.assert_text_contains(&[
        "Command:",
        "./import.sh --all",
        "exit status 3",
        "Duration:",
        "1 min 35 s",
        "Working directory:",
        "/srv/import",
        "step 30 done",
        r#"<script>alert("owned")</script> & more"#,
    ]);
    assert!(
        !text.contains("step 26 done"),
        "only the last 5 lines inline"
    );
    let html = mail.html();
    assert!(html.contains("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt; &amp; more"));
    assert!(!html.contains("<script>"), "{html}");
    let attachment = mail.message.attachment(0).unwrap();
    let name = attachment.attachment_name().unwrap();
    assert!(
        name.starts_with("import.sh-") && name.ends_with("Z.log"),
        "host and time in {name}"
    );
    assert_eq!(attachment.content_type().unwrap().ctype(), "text");
    assert_eq!(attachment.contents(), std::fs::read(log.path()).unwrap());
}

#[tokio::test]
async fn a_log_that_is_not_utf8_is_attached_as_bytes() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &[])).unwrap();
    let mut log = tempfile::NamedTempFile::new().unwrap();
    log.write_all(b"Fehler: Datei \xe4nderung fehlgeschlagen\n")
        .unwrap();
    let failure = ProcessFailure::new(["./sync.sh"], Exit::Code(1)).log_file(log.path());

    email.send(&failure.into()).await.unwrap();

    let mail = only_mail(&server);
    let attachment = mail.message.attachment(0).unwrap();
    let content_type = attachment.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("application", Some("octet-stream"))
    );
    assert_eq!(attachment.contents(), std::fs::read(log.path()).unwrap());
    mail.assert_text_contains(&["Fehler: Datei \u{fffd}nderung fehlgeschlagen"]);
}

#[tokio::test]
async fn utf8_subject_is_encoded_in_the_header_and_decodes_back() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &[])).unwrap();
    let summary = "Überweisung fehlgeschlagen — 支付失败 ✗";

    email
        .send(&erroremail::Failure::new("error", summary))
        .await
        .unwrap();

    let mail = only_mail(&server);
    let raw_subject = mail.raw_header("Subject").unwrap();
    assert!(raw_subject.is_ascii(), "{raw_subject}");
    assert!(raw_subject.contains("=?utf-8?"), "{raw_subject}");
    assert_eq!(
        mail.message.subject(),
        Some(format!("ErrorEmail: {summary}").as_str())
    );
    assert!(mail.text().contains(summary));
}

#[tokio::test]
async fn starttls_with_auth_delivers_through_a_verified_certificate() {
    let server =
        SmtpServer::start(SmtpOptions::plain().starttls().auth("alerts", "s3cret")).unwrap();
    let email = ErrorEmail::new(tls_config(&server, "starttls", "s3cret")).unwrap();

    email.report(&import_error(1)).await.unwrap();

    let mail = only_mail(&server);
    assert!(mail.tls, "the session was upgraded with STARTTLS");
    assert_eq!(mail.login.as_deref(), Some("alerts"));
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let server =
        SmtpServer::start(SmtpOptions::plain().implicit_tls().auth("alerts", "s3cret")).unwrap();
    let email = ErrorEmail::new(tls_config(&server, "tls", "s3cret")).unwrap();

    email.report(&import_error(1)).await.unwrap();

    let mail = only_mail(&server);
    assert!(mail.tls);
    assert_eq!(mail.login.as_deref(), Some("alerts"));
}

#[tokio::test]
async fn starttls_is_required_never_downgraded() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &["tls = 'starttls'"])).unwrap();

    let err = email.report(&import_error(1)).await.unwrap_err();

    assert_eq!(err.send_failure(), Some(SendFailure::NoStarttls), "{err}");
    assert!(
        err.to_string()
            .contains(r#"set tls = "none" if this relay is trusted"#),
        "{err}"
    );
    assert!(
        server.messages().unwrap().is_empty(),
        "nothing sent in clear"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let server = SmtpServer::start(SmtpOptions::plain().starttls()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &["tls = 'starttls'"])).unwrap();

    let err = email.report(&import_error(1)).await.unwrap_err();

    assert_eq!(err.send_failure(), Some(SendFailure::Tls), "{err}");
    assert!(err.explain().contains("certificate"), "{}", err.explain());
    assert!(server.messages().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_password_is_reported_as_auth_rejected() {
    let server =
        SmtpServer::start(SmtpOptions::plain().starttls().auth("alerts", "s3cret")).unwrap();
    let email = ErrorEmail::new(tls_config(&server, "starttls", "guess")).unwrap();

    let err = email.report(&import_error(1)).await.unwrap_err();

    assert_eq!(err.send_failure(), Some(SendFailure::AuthRejected), "{err}");
    assert!(err.to_string().contains("authentication rejected"), "{err}");
    assert!(server.messages().unwrap().is_empty());
}

#[tokio::test]
async fn server_down_is_connection_refused_well_within_the_timeout() {
    let mut server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &["timeout = 5"])).unwrap();
    server.kill();

    let started = Instant::now();
    let err = email.report(&import_error(1)).await.unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.send_failure(),
        Some(SendFailure::ConnectionRefused),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("connection refused"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", server.port())),
        "{message}"
    );
}

#[tokio::test]
async fn silent_server_times_out_within_the_timeout() {
    // Accepts connections (the kernel completes the handshake) and never speaks.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let email = ErrorEmail::new(config(port, &["timeout = 1"])).unwrap();

    let started = Instant::now();
    let err = email.report(&import_error(1)).await.unwrap_err();

    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1) + Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(
        err.send_failure(),
        Some(SendFailure::Timeout(Duration::from_secs(1))),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    drop(listener);
}

#[tokio::test]
async fn crash_loop_of_100_failures_sends_at_most_8_mails() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &["throttle_window = '1h'"])).unwrap();

    let mut sent = 0;
    for n in 0..100 {
        // Numbers and paths differ each time; the failure is the same.
        match email.report(&import_error(1000 + n)).await.unwrap() {
            Outcome::Sent { .. } => sent += 1,
            Outcome::Throttled { .. } => {}
        }
    }

    let mails = server.messages().unwrap();
    assert_eq!(mails.len(), sent);
    common::assert_crash_loop_of_100_mails(&mails);
    assert_eq!(
        mails.last().unwrap().raw_header("X-ErrorEmail-Count"),
        Some("32")
    );
}

#[tokio::test]
async fn originals_config_with_upper_case_keys_and_no_tls_delivers_to_a_local_relay() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let config = Config::from_yaml(&format!(
        "SERVER: localhost\nPORT: {}\nFROM: errors@example.com\nTO: [ops@example.com]\nSUBJECT: 'ERR: {{host}}:{{port}} {{message}}'\n",
        server.port()
    ))
    .unwrap();
    let email = ErrorEmail::builder(config)
        .context("host", "web-1")
        .context("port", 8080)
        .build()
        .unwrap();

    email.report(&import_error(7)).await.unwrap();

    let mail = only_mail(&server);
    assert_eq!(
        mail.message.subject(),
        Some("ERR: web-1:8080 cannot import orders batch 7")
    );
}

#[tokio::test]
async fn a_context_key_given_twice_shows_its_last_value() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::builder(config(server.port(), &["subject = '[{job}] {message}'"]))
        .context("job", "import-a")
        .context("job", "import-b")
        .build()
        .unwrap()
        .context("release", "2026.1")
        .context("release", "2026.2");

    email.report(&import_error(1)).await.unwrap();

    let mail = only_mail(&server);
    assert_eq!(
        mail.message.subject(),
        Some("[import-b] cannot import orders batch 1")
    );
    mail.assert_text_contains(&["Job:     import-b", "Release: 2026.2"]);
    assert!(!mail.text().contains("import-a") && !mail.text().contains("2026.1"));
}

#[tokio::test]
async fn repeats_of_a_failure_thread_together_and_other_failures_apart() {
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &[])).unwrap();

    email.report(&import_error(1)).await.unwrap();
    email.report(&import_error(2)).await.unwrap();
    email
        .send(&erroremail::Failure::new(
            "error",
            "the ledger is out of balance",
        ))
        .await
        .unwrap();

    let mails = server.messages().unwrap();
    assert_eq!(mails.len(), 3);
    let thread = |n: usize| {
        (
            mails[n].raw_header("In-Reply-To").unwrap().to_owned(),
            mails[n].raw_header("References").unwrap().to_owned(),
        )
    };
    assert_eq!(thread(0), thread(1));
    assert_eq!(thread(0).0, thread(0).1);
    assert_ne!(thread(0), thread(2));
    let ids: Vec<_> = mails.iter().map(|m| m.message.message_id()).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    assert_eq!(
        mails[1]
            .message
            .subject()
            .map(|s| s.contains("(2nd failure in ")),
        Some(true)
    );
}

/// anyhow captures a backtrace only when `RUST_LIB_BACKTRACE` (or `RUST_BACKTRACE`)
/// is set when the error is made: this test runs itself again with it set.
#[test]
fn anyhow_error_is_mailed_with_its_backtrace() {
    const CHILD: &str = "ERROREMAIL_TEST_BACKTRACE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "anyhow_error_is_mailed_with_its_backtrace"])
            .env(CHILD, "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        return;
    }
    let server = SmtpServer::start(SmtpOptions::plain()).unwrap();
    let email = ErrorEmail::new(config(server.port(), &[])).unwrap();
    let err = anyhow::Error::new(import_error(3)).context("nightly import");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(email.report_anyhow(&err)).unwrap();

    let mail = only_mail(&server);
    assert_eq!(mail.message.subject(), Some("ErrorEmail: nightly import"));
    mail.assert_text_contains(&[
        "0: cannot import orders batch 3",
        "1: no space left writing /srv/orders/3.csv",
        "== Backtrace ==",
        "anyhow_error_is_mailed_with_its_backtrace",
    ]);
}
