//! [`ErrorEmail`]: a config, a context, a throttle; reports failures by mail.

use std::backtrace::Backtrace;
use std::error::Error as StdError;
use std::sync::Arc;

use crate::message::Letter;
use crate::throttle::{Decision, Throttle, Ticket, fingerprint};
use crate::{Config, Error, Failure, send};

/// Placeholders every subject template may use, whatever the context.
const BUILT_IN_PLACEHOLDERS: [&str; 2] = ["message", "host"];

/// The name of the thread that sends mails for synchronous callers; a panic on it
/// is not mailed, lest a failing mail report itself forever.
const SENDER_THREAD: &str = "erroremail-sender";

/// Reports failures by mail: one per failure, throttled when they repeat.
///
/// Cheap to clone: clones share the config, the context and the throttle.
#[derive(Clone, Debug)]
pub struct ErrorEmail {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    context: Vec<(String, String)>,
    host: String,
    throttle: Throttle,
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
        /// How many failures of this kind the current window has seen.
        count: u64,
        /// The occurrence that will be mailed next, unless the window ends first.
        next_mail_at: u64,
    },
}

/// Gathers the context of an [`ErrorEmail`]; [`build`](ErrorEmailBuilder::build)
/// checks the subject template against it.
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
        let key = key.into();
        let value = value.to_string();
        match self.context.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.context.push((key, value)),
        }
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
        let host = hostname::get()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        let throttle = Throttle::new(self.config.throttle_window, self.config.throttle_file());
        Ok(ErrorEmail {
            inner: Arc::new(Inner {
                config: self.config,
                context: self.context,
                host,
                throttle,
            }),
        })
    }
}

impl ErrorEmail {
    /// An `ErrorEmail` without context: the subject may use `{message}` and `{host}`.
    pub fn new(config: Config) -> Result<ErrorEmail, Error> {
        ErrorEmail::builder(config).build()
    }

    /// Starts an `ErrorEmail` to which context is added.
    pub fn builder(config: Config) -> ErrorEmailBuilder {
        ErrorEmailBuilder {
            config,
            context: Vec::new(),
        }
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Reports a Rust error: its message and source chain. The error stays the
    /// caller's; an `Err` here is only about the mail.
    pub async fn report(&self, err: &(dyn StdError + 'static)) -> Result<Outcome, Error> {
        self.send(&Failure::from_error(err)).await
    }

    /// Reports any failure ([`Failure`], or a [`ProcessFailure`](crate::ProcessFailure)
    /// converted into one), unless the throttle holds it back.
    ///
    /// A mail that cannot be sent is an `Err` that says why ([`Error::send_failure`]),
    /// logged with the failure's summary; nothing panics. When the throttle state
    /// file cannot be used, the mail is sent anyway: a missed failure is worse than
    /// one mail too many.
    pub async fn send(&self, failure: &Failure) -> Result<Outcome, Error> {
        let inner = &self.inner;
        let fingerprint = fingerprint(failure.kind(), failure.grouping());
        let decision = inner.throttle.record(&fingerprint).unwrap_or_else(|err| {
            tracing::warn!(%err, "erroremail: throttle state unusable; sending without throttling");
            Decision::Send(Ticket {
                fingerprint: fingerprint.clone(),
                stands_for: 1,
                count: 1,
                window_start: 0,
                window_end: 0,
            })
        });
        let ticket = match decision {
            Decision::Send(ticket) => ticket,
            Decision::Hold {
                count,
                next_mail_at,
            } => {
                tracing::info!(
                    failure = failure.summary(),
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
        let letter = Letter::new(
            &inner.config,
            &inner.host,
            &inner.context,
            failure,
            &ticket,
            inner.config.throttle_window,
        );
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
                if let Err(state_err) = inner.throttle.give_back(&ticket) {
                    tracing::warn!(%state_err, "erroremail: cannot return the count of an unsent mail");
                }
                tracing::error!(
                    failure = failure.summary(),
                    %err,
                    "erroremail: the failure mail was not sent"
                );
                Err(err)
            }
        }
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
                    .map_err(|err| Error::Runtime(err.to_string()))?;
                runtime.block_on(email.send(&failure))
            })
            .map_err(|err| Error::Runtime(err.to_string()))?;
        sender
            .join()
            .unwrap_or_else(|_| Err(Error::Runtime("the mail sender panicked".to_owned())))
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
                tracing::error!(%err, "erroremail: the panic was not mailed");
            }
        }));
    }
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
    fn unknown_placeholder_error_lists_the_context_keys() {
        let err = ErrorEmail::builder(config("{job} {message}"))
            .context("jobs", "x")
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("the context keys are: jobs"),
            "{err}"
        );
    }

    #[test]
    fn repeated_context_key_keeps_the_last_value() {
        let builder = ErrorEmail::builder(config("{message}"))
            .context("job", "a")
            .context("job", "b");
        assert_eq!(builder.context, [("job".to_owned(), "b".to_owned())]);
    }
}
