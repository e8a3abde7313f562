//! The crate's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::text::{duration, sources};

/// A boxed error from a library this crate uses: its source, kept for what it says
/// (and for `downcast_ref`), without tying this crate's API to the library.
pub type BoxedSource = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// Loading errors name the config key they are about; sending errors say why the
/// mail did not go out ([`SendFailure`]). None of them is ever used in place of the
/// failure that was being reported: the caller still has that one.
///
/// The message of an error says what went wrong; its [`source`](StdError::source)
/// says what the library underneath reported. [`Error::explain`] puts both in one
/// text for a person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read the erroremail config {path}")]
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
    #[error("invalid erroremail config ({origin})")]
    ConfigSyntax {
        /// Where the config came from: a file name, "TOML", "YAML" or "environment".
        origin: String,
        /// The parser's error, which names the line or the key.
        source: BoxedSource,
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
        "the subject template uses {{{name}}}, which is neither a built-in placeholder (message, host) nor a context key{}; give it with ErrorEmail::builder(config).context(\"{name}\", value).build(), or take it out of `subject`",
        known_keys(.context_keys)
    )]
    UnknownPlaceholder {
        /// The placeholder.
        name: String,
        /// The context keys that were given.
        context_keys: Vec<String>,
    },

    /// The mail could not be put together (an address or header the mail builder
    /// refused).
    #[error("cannot build the failure mail")]
    BuildMessage {
        /// What the mail builder said.
        source: BoxedSource,
    },

    /// The mail was built but not delivered.
    #[error("the failure mail was not sent through {server}:{port}: {failure}")]
    Send {
        /// The SMTP server of the config.
        server: String,
        /// Its port.
        port: u16,
        /// Why, in words a program can match on.
        failure: SendFailure,
        /// Why, in the words of the SMTP client or server; none for a timeout.
        source: Option<BoxedSource>,
    },

    /// The thread or runtime that sends a mail from synchronous code could not start.
    #[error("cannot start the thread that sends the failure mail")]
    Runtime {
        /// Why.
        source: std::io::Error,
    },

    /// The thread that sends a mail from synchronous code panicked.
    #[error("the thread that sends the failure mail panicked")]
    SenderPanicked,
}

impl Error {
    /// Why a mail was not sent, when this is a sending error.
    pub fn send_failure(&self) -> Option<SendFailure> {
        match self {
            Error::Send { failure, .. } => Some(*failure),
            _ => None,
        }
    }

    /// This error and its sources in one text, each said once (some libraries
    /// repeat their source in their own message): what to show a person.
    pub fn explain(&self) -> String {
        let mut text = self.to_string();
        for cause in sources(self).skip(1) {
            let said = cause.to_string();
            if !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
        }
        text
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
    /// TLS failed: the server's certificate is not trusted, or the handshake failed.
    Tls,
    /// TLS is required (`tls = "starttls"`) and the server does not offer STARTTLS.
    /// Never a downgrade to plain text: a relay that is trusted without TLS (one on
    /// this host) is configured with `tls = "none"`.
    NoStarttls,
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
            SendFailure::Timeout(limit) => write!(f, "timed out after {}", duration(*limit)),
            SendFailure::Connection => f.write_str("connection failed"),
            SendFailure::Tls => f.write_str("TLS failed"),
            SendFailure::NoStarttls => f.write_str(
                "the server does not offer STARTTLS, which `tls = \"starttls\"` requires; set tls = \"none\" if this relay is trusted",
            ),
            SendFailure::AuthRejected => f.write_str("authentication rejected"),
            SendFailure::Rejected => f.write_str("rejected by the server"),
            SendFailure::Other => f.write_str("SMTP error"),
        }
    }
}
