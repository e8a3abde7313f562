//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Loading errors name the config key they are about; sending errors say why the
/// mail did not go out ([`SendFailure`]). None of them is ever used in place of the
/// failure that was being reported: the caller still has that one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read the erroremail config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The config file's extension says neither TOML nor YAML.
    #[error(
        "cannot tell the format of the erroremail config {path}: name it *.toml, *.yaml or *.yml"
    )]
    ConfigFormat {
        /// The file.
        path: PathBuf,
    },

    /// The config is not valid TOML or YAML, or has a key this crate does not know.
    #[error("invalid erroremail config ({origin}): {message}")]
    ConfigSyntax {
        /// Where the config came from: a file name or "environment".
        origin: String,
        /// The parser's message, which names the line or the key.
        message: String,
    },

    /// A config key has a value that cannot be used.
    #[error("erroremail config key `{key}`: {message}")]
    InvalidValue {
        /// The key, as documented (lower case).
        key: &'static str,
        /// What is wrong with its value.
        message: String,
    },

    /// A key that has no default is missing.
    #[error("erroremail config key `{key}` is missing: {hint}")]
    MissingKey {
        /// The key, as documented (lower case).
        key: &'static str,
        /// What to put there.
        hint: &'static str,
    },

    /// The subject template names a placeholder that is neither `message`, `host`,
    /// nor a context key of the [`ErrorEmail`](crate::ErrorEmail) being built.
    #[error(
        "the subject template uses {{{name}}}, which is neither a built-in placeholder (message, host) nor a context key{}",
        known_keys(.context_keys)
    )]
    UnknownPlaceholder {
        /// The placeholder.
        name: String,
        /// The context keys that were given.
        context_keys: Vec<String>,
    },

    /// The mail could not be put together (an address or header lettre refused).
    #[error("cannot build the failure mail: {0}")]
    BuildMessage(String),

    /// The mail was built but not delivered.
    #[error("the failure mail was not sent through {server}:{port}: {failure}: {detail}")]
    Send {
        /// The SMTP server of the config.
        server: String,
        /// Its port.
        port: u16,
        /// Why, in one word that a program can match on.
        failure: SendFailure,
        /// Why, in the words of the SMTP client or server.
        detail: String,
    },

    /// The thread or runtime that sends a mail from synchronous code could not run.
    #[error("cannot run the mail sender: {0}")]
    Runtime(String),
}

impl Error {
    /// Why a mail was not sent, when this is a sending error.
    pub fn send_failure(&self) -> Option<SendFailure> {
        match self {
            Error::Send { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

fn known_keys(keys: &[String]) -> String {
    if keys.is_empty() {
        "; no context keys were given".to_owned()
    } else {
        format!("; the context keys are: {}", keys.join(", "))
    }
}

/// Why a mail was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailure {
    /// Nothing listens on the server's port.
    ConnectionRefused,
    /// The server did not answer within the config's `timeout`.
    Timeout(Duration),
    /// The connection could not be made or broke (DNS, network, reset).
    Connection,
    /// TLS failed: the server offered no STARTTLS, or its certificate is not trusted.
    Tls,
    /// The server rejected the credentials.
    AuthRejected,
    /// The server refused the sender, a recipient or the message.
    Rejected,
    /// Anything else the SMTP client reported.
    Other,
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::ConnectionRefused => f.write_str("connection refused"),
            SendFailure::Timeout(limit) => write!(f, "timed out after {limit:?}"),
            SendFailure::Connection => f.write_str("connection failed"),
            SendFailure::Tls => f.write_str("TLS failed"),
            SendFailure::AuthRejected => f.write_str("authentication rejected"),
            SendFailure::Rejected => f.write_str("rejected by the server"),
            SendFailure::Other => f.write_str("SMTP error"),
        }
    }
}
