//! What went wrong, in a form that renders to plain text and to HTML alike.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::panic::PanicHookInfo;

use crate::text::{first_line, sources};

/// A failure to report: a one-line summary, facts, text sections and at most one
/// attachment.
///
/// Build one from a Rust error ([`Failure::from_error`], or `From<&anyhow::Error>`
/// which keeps anyhow's backtrace), from a panic ([`Failure::from_panic`]), from a
/// failed process ([`ProcessFailure`](crate::ProcessFailure) converts into one), or by
/// hand with [`Failure::new`] and the builder methods.
#[derive(Debug, Clone)]
pub struct Failure {
    kind: String,
    summary: String,
    highlight: Option<String>,
    group: Option<String>,
    keys: Vec<String>,
    facts: Vec<(String, String)>,
    sections: Vec<Section>,
    attachment: Option<Attachment>,
}

/// An error that [`ErrorEmail::report`](crate::ErrorEmail::report) can mail: any
/// [`std::error::Error`], sized or not (`dyn Error`).
///
/// `anyhow::Error` is not one (it does not implement `std::error::Error`); report
/// it with [`ErrorEmail::report_anyhow`](crate::ErrorEmail::report_anyhow), which
/// keeps its backtrace.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `std::error::Error` that `report` can mail",
    note = "report an `anyhow::Error` with `ErrorEmail::report_anyhow`, which keeps its backtrace"
)]
pub trait Reportable {
    /// The failure to mail for this error.
    fn to_failure(&self) -> Failure;
}

impl<E: StdError + ?Sized + 'static> Reportable for E {
    fn to_failure(&self) -> Failure {
        Failure::from_error(self)
    }
}

/// A highlighted line longer than this stays out of the subject.
const SHORT_HIGHLIGHT_CHARS: usize = 80;

/// A titled block of preformatted text: an error chain, a backtrace, a log tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// The text, shown as it is (monospace, escaped in HTML).
    pub text: String,
}

/// A file attached to the mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name the reader sees.
    pub filename: String,
    /// The content: sent as UTF-8 text when it is, as `application/octet-stream`
    /// otherwise (a log in another encoding arrives as it was written).
    pub content: Vec<u8>,
}

impl Failure {
    /// A failure of `kind` (a short word such as `error`, `panic`, `process`, which
    /// groups failures for throttling together with the summary) summed up in one
    /// line.
    pub fn new(kind: impl Into<String>, summary: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            summary: summary.into(),
            highlight: None,
            group: None,
            keys: Vec::new(),
            facts: Vec::new(),
            sections: Vec::new(),
            attachment: None,
        }
    }

    /// A Rust error: its message, and the chain of its sources.
    ///
    /// `dyn Error` has no stable way to hand out a backtrace; add one that was
    /// captured with [`Failure::with_backtrace`], or convert an `anyhow::Error`,
    /// which carries its own.
    pub fn from_error<E: StdError + ?Sized + 'static>(err: &E) -> Failure {
        let message = err.to_string();
        let mut text = message.clone();
        if let Some(source) = err.source() {
            text.push_str("\n\nCaused by:");
            for (depth, cause) in sources(source).enumerate() {
                let _ = write!(text, "\n  {depth}: {cause}");
            }
        }
        Failure::new("error", first_line(&message)).section("Error", text)
    }

    /// A panic, as a panic hook sees it.
    pub fn from_panic(info: &PanicHookInfo<'_>, backtrace: &Backtrace) -> Failure {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic payload that is not text)".to_owned());
        let thread = std::thread::current()
            .name()
            .unwrap_or("(unnamed)")
            .to_owned();
        let mut failure = Failure::new("panic", format!("panic: {}", first_line(&message)));
        if let Some(location) = info.location() {
            failure = failure.fact("Location", location.to_string());
        }
        failure
            .fact("Thread", thread)
            .section("Panic message", message)
            .with_backtrace(backtrace)
    }

    /// Adds a backtrace section, when `backtrace` was captured.
    pub fn with_backtrace(self, backtrace: &Backtrace) -> Failure {
        if backtrace.status() == BacktraceStatus::Captured {
            self.section("Backtrace", backtrace.to_string())
        } else {
            self
        }
    }

    /// Adds a fact (a row of the table at the top of the mail).
    pub fn fact(mut self, label: impl Into<String>, value: impl Into<String>) -> Failure {
        self.facts.push((label.into(), value.into()));
        self
    }

    /// Adds a section of preformatted text.
    pub fn section(mut self, title: impl Into<String>, text: impl Into<String>) -> Failure {
        self.sections.push(Section {
            title: title.into(),
            text: text.into(),
        });
        self
    }

    /// Attaches a file (one per failure; a second call replaces the first).
    pub fn attach(mut self, filename: impl Into<String>, content: Vec<u8>) -> Failure {
        self.attachment = Some(Attachment {
            filename: filename.into(),
            content,
        });
        self
    }

    /// Sets the line that says most about this failure (the last line a failed
    /// program wrote to stderr, say): the first line of the mail, above the summary.
    pub fn highlight(mut self, line: impl Into<String>) -> Failure {
        self.highlight = Some(line.into());
        self
    }

    /// Groups this failure for throttling by `text` instead of the summary, when the
    /// summary is shortened or otherwise not the whole story. Failures of one kind
    /// whose grouping texts differ only in numbers, ids and paths are one group.
    pub fn group_by(mut self, text: impl Into<String>) -> Failure {
        self.group = Some(text.into());
        self
    }

    /// Keeps this failure apart, for throttling, from failures with other keys,
    /// however alike their texts: a program's path, a job's name. Keys are compared
    /// as they are, numbers and paths included; each call adds one.
    pub fn keyed_by(mut self, key: impl Into<String>) -> Failure {
        self.keys.push(key.into());
        self
    }

    /// What groups this failure with its repeats: the text given to
    /// [`group_by`](Failure::group_by), or the summary.
    pub fn grouping(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.summary)
    }

    /// The keys given to [`keyed_by`](Failure::keyed_by), in order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The line given to [`highlight`](Failure::highlight), if any.
    pub fn highlighted(&self) -> Option<&str> {
        self.highlight.as_deref()
    }

    /// The kind given at construction.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The one-line summary.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// What the subject's `{message}` is filled with: the summary, and the
    /// highlighted line after it when that is short enough for a subject
    /// (`backup.sh: exit 2 — pg_dump: connection refused`).
    pub fn message(&self) -> String {
        match &self.highlight {
            Some(line) if line.chars().count() <= SHORT_HIGHLIGHT_CHARS => {
                format!("{} — {line}", self.summary)
            }
            _ => self.summary.clone(),
        }
    }

    /// The facts, in order.
    pub fn facts(&self) -> &[(String, String)] {
        &self.facts
    }

    /// The sections, in order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The attachment, if any.
    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }
}

impl From<&anyhow::Error> for Failure {
    fn from(err: &anyhow::Error) -> Failure {
        let source: &(dyn StdError + Send + Sync + 'static) = err.as_ref();
        Failure::from_error(source).with_backtrace(err.backtrace())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load job 17")]
    struct LoadJob(#[source] std::io::Error);

    #[test]
    fn error_chain_is_listed_under_the_message() {
        let err = LoadJob(std::io::Error::other("disk full"));
        let failure = Failure::from_error(&err);
        assert_eq!(failure.summary(), "cannot load job 17");
        assert_eq!(failure.kind(), "error");
        assert_eq!(
            failure.sections()[0].text,
            "cannot load job 17\n\nCaused by:\n  0: disk full"
        );
    }

    #[test]
    fn anyhow_error_keeps_its_context_chain() {
        let err = anyhow::Error::new(std::io::Error::other("refused")).context("fetching spec");
        let failure = Failure::from(&err);
        assert_eq!(failure.summary(), "fetching spec");
        assert!(failure.sections()[0].text.contains("0: refused"));
    }

    #[test]
    fn captured_backtrace_becomes_a_section_and_a_disabled_one_does_not() {
        let failure = Failure::new("error", "x").with_backtrace(&Backtrace::force_capture());
        assert_eq!(failure.sections()[0].title, "Backtrace");
        let failure = Failure::new("error", "x").with_backtrace(&Backtrace::disabled());
        assert!(failure.sections().is_empty());
    }
}
