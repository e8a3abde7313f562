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
//! log line `<script>` arrives as text; terminal colour codes taken out), with
//! `Date`, `Message-ID`, `In-Reply-To`/`References` (the repeats of a failure form
//! one thread) and `Auto-Submitted: auto-generated` headers, and a subject filled
//! from a template (`ErrorEmail: {message}` by default; UTF-8 is encoded for the
//! header). Its body starts with the most useful line, then the failure in one
//! line and a table of facts (host, fully qualified when known, and context),
//! then:
//!
//! - for a Rust error ([`ErrorEmail::report`]): the message and its source chain;
//!   for an `anyhow::Error` ([`ErrorEmail::report_anyhow`]) also its backtrace
//!   when one was captured;
//! - for a panic ([`ErrorEmail::install_panic_hook`]): message, location, thread and
//!   backtrace;
//! - for a failed process ([`ProcessFailure`]): command, exit status or signal,
//!   start (local time with its offset), duration, working directory, the last
//!   lines of its stderr and of its whole output inline, and the output attached
//!   (its end, beyond a size cap). A [`CapturedOutput`] records a running
//!   process's output in bounded memory.
//!
//! # Throttling
//!
//! Failures are grouped by a fingerprint: their kind, the keys that tell their
//! sources apart (a program's path, the wrapper's context), and their summary
//! without the numbers, ids and paths that vary. The first of a group is mailed,
//! and repeats at the 2nd, 4th, 8th ... occurrence, each mail saying which failure
//! it is and how many it stands for: a crash loop of 100 failures sends 7 mails.
//! The window (1 h by default) slides: it ends a window after the group's last
//! failure, so a loop that goes on for a day keeps doubling (a failure a minute
//! sends 11 mails a day), and a group quiet for a whole window starts again at 1.
//! The state can live in a file shared by the processes of one host (made 0600,
//! never followed through a symbolic link; put it in a directory only its user
//! can write, not `/var/tmp`). A file that cannot be used does not stop a mail:
//! the mail says that throttling is off, and why.
//!
//! # Sending
//!
//! lettre's async SMTP transport, plain, STARTTLS (required: never a downgrade) or
//! implicit TLS, with optional AUTH, the whole exchange bounded by the config's
//! `timeout`. A mail that cannot be sent is an [`Error::Send`] saying why
//! ([`SendFailure`]: connection refused, timeout, TLS, no STARTTLS, authentication
//! rejected, ...; [`Error::explain`] adds what the SMTP client said). It never
//! replaces the failure being reported, which stays the caller's, and nothing
//! here panics.
//!
//! # When templates are checked
//!
//! The subject template's syntax is checked when the [`Config`] is loaded, with
//! every other value (errors name the key). Its placeholders are checked when the
//! [`ErrorEmail`] is made, because only then is the context known:
//! [`ErrorEmail::new`] allows `{message}` and `{host}`, and
//! [`ErrorEmail::builder`] with [`context`](ErrorEmailBuilder::context) adds keys;
//! any other placeholder fails there, long before the first failure, with an
//! error that says how to give it. Context for the body only can be added to a
//! built `ErrorEmail` with [`ErrorEmail::context`].
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
//!     .build()? // {port} is a context key: the template is complete
//!     .context("release", "2026.11.1"); // shown in the body only
//! email.install_panic_hook();
//!
//! if let Err(err) = import_orders().await {
//!     match email.report(&err).await {
//!         Ok(Outcome::Sent { stands_for }) => eprintln!("mailed ({stands_for} failures)"),
//!         Ok(Outcome::Throttled { .. }) => {}
//!         Err(mail_err) => eprintln!("not mailed: {}", mail_err.explain()),
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
pub use process::{Exit, ProcessFailure, signal_name};
pub use template::SubjectTemplate;

// The README's examples are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
