//! Failure mail over SMTP: what an operator woken at 3 a.m. wants to read, and never
//! a flooded mailbox.
//!
//! A port of the Python ErrorEmail (`with ErrorEmail(config, **context): ...` mails
//! the traceback of an exception), made for services and jobs that must not fail
//! in silence.
//!
//! # What a mail holds
//!
//! One multipart/alternative message, plain text and HTML (every value escaped: a
//! log line `<script>` arrives as text), with `Date`, `Message-ID` and
//! `Auto-Submitted: auto-generated` headers and a subject filled from a template
//! (`ErrorEmail: {message}` by default; UTF-8 is encoded for the header). Its body
//! starts with the failure in one line and a table of facts (host, context), then:
//!
//! - for a Rust error ([`ErrorEmail::report`]): the message and its source chain,
//!   and the backtrace when one was captured (`anyhow::Error` carries its own; see
//!   [`Failure::with_backtrace`]);
//! - for a panic ([`ErrorEmail::install_panic_hook`]): message, location, thread and
//!   backtrace;
//! - for a failed process ([`ProcessFailure`]): command, exit status or signal,
//!   start, duration, working directory, the last lines of its log inline and the
//!   log attached (its end, beyond a size cap).
//!
//! # Throttling
//!
//! Failures are grouped by a fingerprint (their kind and summary, without the
//! numbers, ids and paths that vary). Within a window (1 h by default) the first
//! of a group is mailed, and repeats at the 2nd, 4th, 8th ... occurrence, each mail
//! saying how many failures it stands for: a crash loop of 100 failures sends 7
//! mails. The state can live in a file shared by the processes of one host.
//!
//! # Sending
//!
//! lettre's async SMTP transport, plain, STARTTLS (required: never a downgrade) or
//! implicit TLS, with optional AUTH, the whole exchange bounded by the config's
//! `timeout`. A mail that cannot be sent is an [`Error::Send`] saying why
//! ([`SendFailure`]: connection refused, timeout, TLS, authentication rejected,
//! ...). It never replaces the failure being reported, which stays the caller's,
//! and nothing here panics.
//!
//! # When templates are checked
//!
//! The subject template's syntax is checked when the [`Config`] is loaded, with
//! every other value (errors name the key). Its placeholders are checked when the
//! [`ErrorEmail`] is built, because only then is the context known: a placeholder
//! that is neither `message`, `host` nor a context key makes
//! [`ErrorEmailBuilder::build`] fail, long before the first failure.
//!
//! # Example
//!
//! ```no_run
//! use erroremail::{Config, ErrorEmail, Outcome};
//!
//! # async fn import_orders() -> std::io::Result<()> { Ok(()) }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_toml(
//!     r#"
//!     server = "smtp.example.com"
//!     username = "alerts"
//!     password = "secret"
//!     from = "Orders <alerts@example.com>"
//!     to = ["ops@example.com"]
//!     subject = "ERR: {host}:{port} {message}"
//!     "#,
//! )?;
//! let email = ErrorEmail::builder(config)
//!     .context("port", 8080)
//!     .build()?; // {port} is a context key: the template is complete
//! email.install_panic_hook();
//!
//! if let Err(err) = import_orders().await {
//!     match email.report(&err).await {
//!         Ok(Outcome::Sent { stands_for }) => eprintln!("mailed ({stands_for} failures)"),
//!         Ok(Outcome::Throttled { .. }) => {}
//!         Err(mail_err) => eprintln!("not mailed: {mail_err}"),
//!     }
//!     return Err(err.into()); // the failure itself is never swallowed
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The `erroremail` binary wraps any command the same way:
//! `erroremail --config /etc/erroremail.toml -- backup.sh --full`.

mod config;
mod email;
mod error;
mod failure;
mod message;
mod output;
mod process;
mod send;
mod template;
mod text;
mod throttle;

pub use config::{Config, TlsMode};
pub use email::{ErrorEmail, ErrorEmailBuilder, Outcome};
pub use error::{BoxedSource, Error, SendFailure};
pub use failure::{Attachment, Failure, Reportable, Section};
pub use output::{CapturedOutput, Stream};
pub use process::{Exit, ProcessFailure};
pub use template::SubjectTemplate;
