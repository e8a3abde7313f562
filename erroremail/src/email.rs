//! [`ErrorEmail`]: a config, a context, a throttle; reports failures by mail.

use std::backtrace::Backtrace;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::message::{Letter, Reporter};
use crate::throttle::{Decision, Throttle, fingerprint};
use crate::{Config, Error, Failure, Reportable, send};

/// Placeholders every subject template may use, whatever the context.
const BUILT_IN_PLACEHOLDERS: [&str; 2] = ["message", "host"];

/// The name of the thread that sends mails for synchronous callers; a panic on it
/// is not mailed, lest a failing mail report itself forever.
const SENDER_THREAD: &str = "erroremail-sender";

/// How long the fully qualified name of this machine is looked for, at most.
const FQDN_WAIT: Duration = Duration::from_secs(1);

/// Reports failures by mail: one per failure, throttled when they repeat.
///
/// Cheap to clone: clones share the config and the throttle.
///
/// ```no_run
/// # fn main() -> Result<(), erroremail::Error> {
/// # let config = erroremail::Config::from_toml("server = 'localhost'\nfrom = 'a@example.com'\nto = 'b@example.com'")?;
/// // Context shown in every mail; `host` replaces this machine's name.
/// let email = erroremail::ErrorEmail::new(config)?
///     .context("host", "web-1")
///     .context("release", "2026.11.1");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ErrorEmail {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    config: Config,
    context: Vec<(String, String)>,
    /// This machine's name, looked up when the first mail goes out.
    machine: Arc<OnceLock<String>>,
    throttle: Arc<Throttle>,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A mail went out.
    Sent {
        /// How many failures it reports (more than 1 when repeats were held back).
        stands_for: u64,
    },
    /// The failure was counted and no mail was sent: an earlier mail covers its kind.
    Throttled {
        /// How many failures of this kind the current streak has seen.
        count: u64,
        /// The occurrence that will be mailed next, unless the streak ends first.
        next_mail_at: u64,
    },
}

/// Gathers context that the subject template may use; [`build`](ErrorEmailBuilder::build)
/// checks the template against it.
#[derive(Debug)]
#[must_use = "an ErrorEmailBuilder does nothing until `build` is called"]
pub struct ErrorEmailBuilder {
    config: Config,
    context: Vec<(String, String)>,
}

impl ErrorEmailBuilder {
    /// Adds a context value: shown in every mail, and usable in the subject as
    /// `{key}`. A key given twice keeps the last value; a `host` key replaces this
    /// machine's name.
    pub fn context(mut self, key: impl Into<String>, value: impl ToString) -> ErrorEmailBuilder {
        set(&mut self.context, key.into(), value.to_string());
        self
    }

    /// Checks that every placeholder of the subject template is `message`, `host`
    /// or a context key, and makes the [`ErrorEmail`]. An unknown placeholder is
    /// an error here, before any failure has to be reported.
    pub fn build(self) -> Result<ErrorEmail, Error> {
        let known = |name: &str| {
            BUILT_IN_PLACEHOLDERS.contains(&name) || self.context.iter().any(|(key, _)| key == name)
        };
        if let Some(unknown) = self.config.subject.placeholders().find(|name| !known(name)) {
            return Err(Error::UnknownPlaceholder {
                name: unknown.to_owned(),
                context_keys: self.context.iter().map(|(key, _)| key.clone()).collect(),
            });
        }
        let throttle = Throttle::new(
            self.config.throttle_window,
            self.config.throttle_file(),
            // Waiting for the state file's lock is part of what a report may take.
            self.config.timeout / 4,
        );
        Ok(ErrorEmail {
            inner: Arc::new(Inner {
                config: self.config,
                context: self.context,
                machine: Arc::new(OnceLock::new()),
                throttle: Arc::new(throttle),
            }),
        })
    }
}

fn set(context: &mut Vec<(String, String)>, key: String, value: String) {
    match context.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => context.push((key, value)),
    }
}

impl ErrorEmail {
    /// An `ErrorEmail` whose subject uses `{message}` and `{host}` only; context for
    /// the body is added with [`context`](ErrorEmail::context). A subject that names
    /// any other placeholder is an error here, before any failure is reported: give
    /// its value with [`builder`](ErrorEmail::builder).
    pub fn new(config: Config) -> Result<ErrorEmail, Error> {
        ErrorEmail::builder(config).build()
    }

    /// Starts an `ErrorEmail` with context that the subject template may use:
    /// `ErrorEmail::builder(config).context("port", 8080).build()?` for
    /// `ERR: {host}:{port} {message}`.
    pub fn builder(config: Config) -> ErrorEmailBuilder {
        ErrorEmailBuilder {
            config,
            context: Vec::new(),
        }
    }

    /// The same `ErrorEmail` with a context value shown in every mail (a key given
    /// twice keeps the last value; `host` replaces this machine's name). The
    /// subject template was checked when this was built, so a key added here can
    /// change the value of a placeholder but never make one valid. The throttle is
    /// shared with the original.
    #[must_use = "`context` returns a new ErrorEmail"]
    pub fn context(self, key: impl Into<String>, value: impl ToString) -> ErrorEmail {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        set(&mut inner.context, key.into(), value.to_string());
        ErrorEmail {
            inner: Arc::new(inner),
        }
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Reports a Rust error: its message and source chain. The error stays the
    /// caller's; an `Err` here is only about the mail.
    ///
    /// An `anyhow::Error` is reported with [`report_anyhow`](ErrorEmail::report_anyhow),
    /// which keeps its backtrace; here it does not compile, rather than lose it:
    ///
    /// ```compile_fail
    /// # async fn f(email: erroremail::ErrorEmail) {
    /// let err = anyhow::anyhow!("import failed");
    /// email.report(&err).await;
    /// # }
    /// ```
    pub async fn report<E: Reportable + ?Sized>(&self, err: &E) -> Result<Outcome, Error> {
        self.send(&err.to_failure()).await
    }

    /// Reports an `anyhow::Error`: its message, its chain of context and sources,
    /// and its backtrace when one was captured (`RUST_BACKTRACE=1` or
    /// `RUST_LIB_BACKTRACE=1`).
    pub async fn report_anyhow(&self, err: &anyhow::Error) -> Result<Outcome, Error> {
        self.send(&Failure::from(err)).await
    }

    /// Reports any failure ([`Failure`], or a [`ProcessFailure`](crate::ProcessFailure)
    /// converted into one), unless the throttle holds it back.
    ///
    /// A mail that cannot be sent is an `Err` that says why ([`Error::send_failure`]),
    /// logged with the failure's summary; nothing panics. When the throttle state
    /// file cannot be used, repeats are counted in this process only, and the mail
    /// says that throttling is off: a missed failure is worse than one mail too many.
    pub async fn send(&self, failure: &Failure) -> Result<Outcome, Error> {
        let inner = &self.inner;
        let fingerprint = fingerprint(failure.kind(), failure.keys(), failure.grouping());
        let ticket = match inner.throttle.record(&fingerprint).await {
            Decision::Send(ticket) => ticket,
            Decision::Hold {
                count,
                next_mail_at,
            } => {
                tracing::info!(
                    failure = failure.message(),
                    count,
                    next_mail_at,
                    "erroremail: failure counted, not mailed (throttled)"
                );
                return Ok(Outcome::Throttled {
                    count,
                    next_mail_at,
                });
            }
        };
        let reporter = Reporter {
            machine: self.machine().await,
            context: &inner.context,
        };
        let letter = Letter::new(&inner.config, &reporter, failure, &ticket);
        let subject = letter.subject.clone();
        let result = match letter.into_message(&inner.config) {
            Ok(message) => send::deliver(&inner.config, message).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => {
                tracing::info!(%subject, stands_for = ticket.stands_for, "erroremail: failure mail sent");
                Ok(Outcome::Sent {
                    stands_for: ticket.stands_for,
                })
            }
            Err(err) => {
                inner.throttle.give_back(&ticket).await;
                tracing::error!(
                    failure = failure.message(),
                    err = err.explain(),
                    "erroremail: the failure mail was not sent"
                );
                Err(err)
            }
        }
    }

    /// This machine's name, fully qualified when the resolver knows it (within
    /// [`FQDN_WAIT`]).
    async fn machine(&self) -> &str {
        let cell = &self.inner.machine;
        if let Some(name) = cell.get() {
            return name;
        }
        let short = hostname::get()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        let lookup = tokio::task::spawn_blocking({
            let short = short.clone();
            move || fully_qualified(short)
        });
        let name = match tokio::time::timeout(FQDN_WAIT, lookup).await {
            Ok(Ok(name)) => name,
            _ => short,
        };
        cell.get_or_init(|| name)
    }

    /// [`send`](ErrorEmail::send) for synchronous code, on a thread of its own
    /// (so it also works from inside an async runtime, as a panic hook must).
    pub fn send_blocking(&self, failure: &Failure) -> Result<Outcome, Error> {
        let email = self.clone();
        let failure = failure.clone();
        let sender = std::thread::Builder::new()
            .name(SENDER_THREAD.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Runtime { source })?;
                runtime.block_on(email.send(&failure))
            })
            .map_err(|source| Error::Runtime { source })?;
        sender.join().unwrap_or(Err(Error::SenderPanicked))
    }

    /// Mails every panic of this process (message, location, thread, backtrace),
    /// after the panic hook that was installed before runs. The panicking thread
    /// waits for the mail, at most the config's timeout.
    pub fn install_panic_hook(&self) {
        let email = self.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if std::thread::current().name() == Some(SENDER_THREAD) {
                return;
            }
            let failure = Failure::from_panic(info, &Backtrace::force_capture());
            if let Err(err) = email.send_blocking(&failure) {
                tracing::error!(err = err.explain(), "erroremail: the panic was not mailed");
            }
        }));
    }
}

/// `short` as the resolver's canonical name (`vm` -> `vm.example.com`), when it
/// has one with a domain.
fn fully_qualified(short: String) -> String {
    if short.contains('.') {
        return short;
    }
    let hints = dns_lookup::AddrInfoHints {
        flags: libc::AI_CANONNAME,
        address: 0,
        socktype: libc::SOCK_STREAM,
        protocol: 0,
    };
    dns_lookup::getaddrinfo(Some(&short), None, Some(hints))
        .ok()
        .and_then(|mut answers| {
            answers.find_map(|answer| {
                answer
                    .ok()?
                    .canonname
                    .filter(|name| name.contains('.') && !name.starts_with("localhost"))
            })
        })
        .unwrap_or(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(subject: &str) -> Config {
        Config::from_toml(&format!(
            "server = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'\nsubject = '{subject}'"
        ))
        .unwrap()
    }

    #[test]
    fn placeholders_are_checked_against_the_context_when_built() {
        let err = ErrorEmail::new(config("ERR: {host}:{port} {message}")).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownPlaceholder { name, .. } if name == "port"),
            "{err}"
        );
        assert!(err.to_string().contains("{port}"), "{err}");
        let email = ErrorEmail::builder(config("ERR: {host}:{port} {message}"))
            .context("port", 8080)
            .build();
        assert!(email.is_ok());
    }

    #[test]
    fn unknown_placeholder_error_says_how_to_give_it() {
        let err = ErrorEmail::builder(config("{job} {message}"))
            .context("jobs", "x")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("the context keys are: jobs"), "{err}");
        assert!(
            err.contains(r#"ErrorEmail::builder(config).context("job", value).build()"#),
            "{err}"
        );
    }

    #[test]
    fn the_machine_name_is_never_empty() {
        assert!(!fully_qualified("localhost".to_owned()).is_empty());
        assert_eq!(fully_qualified("a.example.com".to_owned()), "a.example.com");
    }
}
