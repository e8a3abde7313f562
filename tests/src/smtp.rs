//! An SMTP server that keeps what it receives: `tests/support/smtp_server.py` on
//! aiosmtpd (Debian's `python3-aiosmtpd`, or PyPI's `aiosmtpd`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mail_parser::{Message, MessageParser};
use tempfile::TempDir;

use crate::net::free_port;
use crate::process::{Daemon, python_with};
use crate::tls::TestCertificates;

/// How the server is set up: plain by default.
#[derive(Debug, Clone, Default)]
pub struct SmtpOptions {
    starttls: bool,
    implicit_tls: bool,
    auth: Option<(String, String)>,
}

impl SmtpOptions {
    /// Plain SMTP, no AUTH.
    pub fn plain() -> SmtpOptions {
        SmtpOptions::default()
    }

    /// Offers STARTTLS with a test certificate, and requires it.
    pub fn starttls(mut self) -> SmtpOptions {
        self.starttls = true;
        self
    }

    /// Speaks TLS from the first byte (SMTPS) with a test certificate.
    pub fn implicit_tls(mut self) -> SmtpOptions {
        self.implicit_tls = true;
        self
    }

    /// Requires AUTH (PLAIN or LOGIN) with these credentials.
    pub fn auth(mut self, user: &str, password: &str) -> SmtpOptions {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }
}

/// A message the server accepted.
#[derive(Debug)]
pub struct ReceivedMail {
    /// The bytes as received.
    pub raw: Vec<u8>,
    /// The envelope sender (MAIL FROM).
    pub mail_from: String,
    /// The envelope recipients (RCPT TO).
    pub rcpt_tos: Vec<String>,
    /// Whether the session was encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The AUTH login, when the client authenticated.
    pub login: Option<String>,
    /// The message, parsed.
    pub message: Message<'static>,
}

impl ReceivedMail {
    /// The raw value of a header (unfolded, not decoded), by case-insensitive name.
    pub fn raw_header(&self, name: &str) -> Option<&str> {
        self.message
            .headers_raw()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    }

    /// The first text/plain body, decoded.
    pub fn text(&self) -> String {
        self.message
            .body_text(0)
            .map(|text| text.into_owned())
            .unwrap_or_default()
    }

    /// Asserts that the plain-text body contains each of `expected`, and shows the
    /// body when it does not.
    pub fn assert_text_contains(&self, expected: &[&str]) {
        let text = self.text();
        for needle in expected {
            assert!(
                text.contains(needle),
                "{needle:?} is not in the text part:\n{text}"
            );
        }
    }

    /// The first text/html body, decoded.
    pub fn html(&self) -> String {
        self.message
            .body_html(0)
            .map(|html| html.into_owned())
            .unwrap_or_default()
    }
}

/// An SMTP server on a free loopback port, in a temporary directory; killed when
/// dropped.
#[derive(Debug)]
pub struct SmtpServer {
    daemon: Daemon,
    port: u16,
    mail_dir: PathBuf,
    certificates: Option<TestCertificates>,
    _dir: TempDir,
}

impl SmtpServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start(options: SmtpOptions) -> io::Result<SmtpServer> {
        let dir = tempfile::Builder::new().prefix("testbed-smtp-").tempdir()?;
        let mail_dir = dir.path().join("mail");
        std::fs::create_dir(&mail_dir)?;
        let port = free_port()?;
        let python = python_with("aiosmtpd")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/smtp_server.py");
        let mut command = Command::new(python);
        command
            .env("PYTHONUNBUFFERED", "1")
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(&mail_dir);
        let certificates = if options.starttls || options.implicit_tls {
            let certificates = TestCertificates::generate(dir.path())?;
            command
                .arg("--cert")
                .arg(&certificates.cert)
                .arg("--key")
                .arg(&certificates.key);
            if options.implicit_tls {
                command.arg("--implicit-tls");
            }
            Some(certificates)
        } else {
            None
        };
        if let Some((user, password)) = &options.auth {
            command.arg("--auth").arg(format!("{user}:{password}"));
        }
        let daemon = Daemon::start("smtp", command, port, dir.path(), Duration::from_secs(15))?;
        Ok(SmtpServer {
            daemon,
            port,
            mail_dir,
            certificates,
            _dir: dir,
        })
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed its certificate, when it speaks TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.certificates.as_ref().map(|c| c.ca.as_path())
    }

    /// The messages received so far, in order of arrival.
    pub fn messages(&self) -> io::Result<Vec<ReceivedMail>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.mail_dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
            .collect();
        names.sort();
        names.iter().map(|eml| read_mail(eml)).collect()
    }

    /// What the server wrote to its log.
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// Kills the server: later connections are refused.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }
}

fn read_mail(eml: &Path) -> io::Result<ReceivedMail> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let raw = std::fs::read(eml)?;
    let envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eml.with_extension("json"))?)
            .map_err(|e| invalid(format!("{}: {e}", eml.display())))?;
    let text = |key: &str| envelope[key].as_str().map(str::to_owned);
    let message = MessageParser::default()
        .parse(&raw)
        .map(Message::into_owned)
        .ok_or_else(|| invalid(format!("{} does not parse as a message", eml.display())))?;
    Ok(ReceivedMail {
        mail_from: text("mail_from").unwrap_or_default(),
        rcpt_tos: envelope["rcpt_tos"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        tls: envelope["tls"].as_bool().unwrap_or(false),
        login: text("login"),
        message,
        raw,
    })
}
