//! The mail: one layout, rendered as plain text and as escaped HTML.
//!
//! A [`Letter`] is everything the reader sees, decided once; [`Letter::plain`] and
//! [`Letter::html`] only lay it out, so the two parts never disagree. Terminal
//! escapes (colours) are taken out of everything shown; an attachment keeps them.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as MailAttachment, Body, MultiPart};

use crate::error::BoxedSource;
use crate::text::{compact_utc, duration, local_time_of_unix, ordinal, strip_terminal_escapes};
use crate::throttle::Ticket;
use crate::{Config, Error, Failure};

/// Who reports: the host and the context of the [`ErrorEmail`](crate::ErrorEmail).
pub(crate) struct Reporter<'a> {
    /// This machine's name (fully qualified when it could be found).
    pub(crate) machine: &'a str,
    pub(crate) context: &'a [(String, String)],
}

impl Reporter<'_> {
    fn context_value(&self, name: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The host the mail names: the context's `host`, or this machine.
    fn host(&self) -> &str {
        self.context_value("host").unwrap_or(self.machine)
    }
}

/// What the reader sees.
pub(crate) struct Letter<'a> {
    pub(crate) subject: String,
    /// The first line: the failure's most useful line, or its summary.
    headline: String,
    /// The summary, under a headline that is not the summary.
    summary: Option<String>,
    notices: Vec<String>,
    facts: Vec<(String, String)>,
    failure: &'a Failure,
    footer: String,
    ticket: &'a Ticket,
    host: String,
}

impl<'a> Letter<'a> {
    pub(crate) fn new(
        config: &Config,
        reporter: &Reporter<'_>,
        failure: &'a Failure,
        ticket: &'a Ticket,
    ) -> Letter<'a> {
        let summary = strip_terminal_escapes(failure.summary());
        let message = strip_terminal_escapes(&failure.message());
        let host = reporter.host().to_owned();
        let mut subject = config.subject.render(|name| match name {
            "message" => Some(message.as_str()),
            "host" => Some(host.as_str()),
            other => reporter.context_value(other),
        });
        if ticket.count > 1 {
            let span = Duration::from_secs(ticket.at.saturating_sub(ticket.first).max(1));
            let _ = write!(
                subject,
                " ({} failure in {})",
                ordinal(ticket.count),
                duration(span)
            );
        }
        let (headline, summary) = match failure.highlighted() {
            Some(line) => (strip_terminal_escapes(line), Some(summary)),
            None => (summary, None),
        };
        let mut facts = vec![("Host".to_owned(), host.clone())];
        facts.extend(failure.facts().iter().cloned());
        facts.extend(
            reporter
                .context
                .iter()
                .filter(|(key, _)| key != "host")
                .map(|(key, value)| (label(key), value.clone())),
        );
        let notices = repeat_notice(ticket)
            .into_iter()
            .chain(ticket.shared_state_lost.as_ref().map(|reason| {
                format!(
                    "Throttling off: {reason}. Until it can be used, repeats are counted in this process only."
                )
            }))
            .collect();
        let footer = match ticket.window {
            None => format!("Sent by erroremail on {}.", reporter.machine),
            Some(window) => format!(
                "Sent by erroremail on {}. Repeats of a failure are mailed at the 1st, 2nd, 4th, 8th ... occurrence; after {} without one, counting starts again.",
                reporter.machine,
                duration(window)
            ),
        };
        Letter {
            subject,
            headline,
            summary,
            notices,
            facts,
            failure,
            footer,
            ticket,
            host,
        }
    }

    pub(crate) fn plain(&self) -> String {
        let mut text = format!("{}\n\n", self.headline);
        for paragraph in self.summary.iter().chain(&self.notices) {
            let _ = write!(text, "{paragraph}\n\n");
        }
        let width = self
            .facts
            .iter()
            .map(|(label, _)| label.chars().count())
            .max()
            .unwrap_or(0)
            + 1;
        for (label, value) in &self.facts {
            let _ = writeln!(
                text,
                "{:<width$} {}",
                format!("{label}:"),
                strip_terminal_escapes(value)
            );
        }
        for section in self.failure.sections() {
            let _ = write!(
                text,
                "\n== {} ==\n{}\n",
                section.title,
                strip_terminal_escapes(&section.text)
            );
        }
        let _ = write!(text, "\n-- \n{}\n", self.footer);
        text
    }

    pub(crate) fn html(&self) -> String {
        let mut html = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body style=\"font-family: sans-serif; color: #222;\">\n",
        );
        let _ = writeln!(
            html,
            "<h2 style=\"color: #b00020; font-family: monospace;\">{}</h2>",
            escape(&self.headline)
        );
        if let Some(summary) = &self.summary {
            let _ = writeln!(html, "<p><b>{}</b></p>", escape(summary));
        }
        for notice in &self.notices {
            let _ = writeln!(
                html,
                "<p style=\"background: #fff3cd; padding: 8px;\">{}</p>",
                escape(notice)
            );
        }
        html.push_str("<table style=\"border-collapse: collapse;\">\n");
        for (label, value) in &self.facts {
            let _ = writeln!(
                html,
                "<tr><th style=\"text-align: left; padding: 2px 12px 2px 0; vertical-align: top;\">{}</th><td style=\"font-family: monospace;\">{}</td></tr>",
                escape(label),
                escape(&strip_terminal_escapes(value))
            );
        }
        html.push_str("</table>\n");
        for section in self.failure.sections() {
            let _ = writeln!(
                html,
                "<h3>{}</h3>\n<pre style=\"background: #f6f8fa; padding: 8px; white-space: pre-wrap;\">{}</pre>",
                escape(&section.title),
                escape(&strip_terminal_escapes(&section.text))
            );
        }
        let _ = writeln!(
            html,
            "<p style=\"color: #666; font-size: small;\">{}</p>\n</body></html>",
            escape(&self.footer)
        );
        html
    }

    pub(crate) fn into_message(self, config: &Config) -> Result<Message, Error> {
        let header = |name: &'static str, value: String| {
            HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
        };
        // Every mail of a streak refers to one thread root, so that mail clients
        // show the repeats of a failure as one conversation.
        let thread = match self.ticket.window {
            Some(_) => format!(
                "<erroremail.{}.{}@{}>",
                self.ticket.fingerprint, self.ticket.first, self.host
            ),
            None => format!("<erroremail.{}@{}>", self.ticket.fingerprint, self.host),
        };
        let mut builder = Message::builder()
            .from(config.from.clone())
            .subject(self.subject.clone())
            .message_id(None)
            .in_reply_to(thread.clone())
            .references(thread)
            .raw_header(header("Auto-Submitted", "auto-generated".to_owned()))
            .raw_header(header(
                "X-ErrorEmail-Fingerprint",
                self.ticket.fingerprint.clone(),
            ))
            .raw_header(header(
                "X-ErrorEmail-Count",
                self.ticket.stands_for.to_string(),
            ));
        for to in &config.to {
            builder = builder.to(to.clone());
        }
        let alternative = MultiPart::alternative_plain_html(self.plain(), self.html());
        let message = match self.failure.attachment() {
            None => builder.multipart(alternative),
            Some(attachment) => {
                let content_type = if std::str::from_utf8(&attachment.content).is_ok() {
                    ContentType::TEXT_PLAIN
                } else {
                    ContentType::parse("application/octet-stream")
                        .map_err(|err| Error::BuildMessage { source: err.into() })?
                };
                // Base64 keeps the bytes as they are (line ends included) and
                // keeps lines short, whatever the log holds.
                let body = Body::new_with_encoding(
                    attachment.content.clone(),
                    ContentTransferEncoding::Base64,
                )
                .map_err(|_| Error::BuildMessage {
                    source: "the attachment cannot be encoded".into(),
                })?;
                builder.multipart(
                    MultiPart::mixed().multipart(alternative).singlepart(
                        MailAttachment::new(self.attachment_name(&attachment.filename))
                            .body(body, content_type),
                    ),
                )
            }
        };
        message.map_err(|err| Error::BuildMessage {
            source: Box::new(err) as BoxedSource,
        })
    }

    /// `backup.sh.log` from host `vm.example.com` at 20:46 UTC is attached as
    /// `backup.sh-vm-20261127T2046Z.log`: saved attachments do not overwrite each
    /// other.
    fn attachment_name(&self, filename: &str) -> String {
        let (stem, extension) = match filename.rsplit_once('.') {
            Some((stem, extension)) if !stem.is_empty() => (stem, Some(extension)),
            _ => (filename, None),
        };
        let host: String = self
            .host
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let at = compact_utc(UNIX_EPOCH + Duration::from_secs(self.ticket.at));
        match extension {
            Some(extension) => format!("{stem}-{host}-{at}.{extension}"),
            None => format!("{stem}-{host}-{at}"),
        }
    }
}

/// A context key as a label: `job` -> `Job`, `retry_count` -> `Retry count`.
fn label(key: &str) -> String {
    let spaced = key.replace(['_', '-'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

/// Says how this mail stands among the repeats of its failure, when it is not
/// simply the first.
fn repeat_notice(ticket: &Ticket) -> Option<String> {
    let window = ticket.window?;
    let earlier = ticket.stands_for.saturating_sub(1);
    if ticket.count == 1 && earlier == 0 {
        return None;
    }
    let mut notice = if ticket.count == 1 {
        format!(
            "First failure of this kind after {} without one.",
            duration(window)
        )
    } else {
        format!(
            "Failure {} of this kind since {}.",
            ticket.count,
            local_time_of_unix(ticket.first)
        )
    };
    match earlier {
        0 => {}
        1 => notice.push_str(" This mail also reports 1 earlier failure that was not mailed."),
        n => {
            let _ = write!(
                notice,
                " This mail also reports {n} earlier failures that were not mailed."
            );
        }
    }
    let _ = write!(
        notice,
        " The next mail goes out at failure {}, or with the first failure after {} without one.",
        ticket.count.saturating_mul(2),
        duration(window)
    );
    Some(notice)
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn config() -> Config {
        Config::from_toml(
            "server = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'\nsubject = 'E {host} {job}: {message}'",
        )
        .unwrap()
    }

    fn ticket(stands_for: u64, count: u64) -> Ticket {
        Ticket {
            fingerprint: "0123456789abcdef".to_owned(),
            stands_for,
            count,
            first: 1_700_000_000,
            at: 1_700_000_000 + 3 * 3600,
            window: Some(HOUR),
            shared_state_lost: None,
        }
    }

    /// Subject, plain text and HTML of the mail for `failure` on host `db-1`.
    fn render(
        context: &[(&str, &str)],
        failure: &Failure,
        ticket: Ticket,
    ) -> (String, String, String) {
        let config = config();
        let context: Vec<(String, String)> = context
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let reporter = Reporter {
            machine: "db-1.example.com",
            context: &context,
        };
        let letter = Letter::new(&config, &reporter, failure, &ticket);
        (letter.subject.clone(), letter.plain(), letter.html())
    }

    #[test]
    fn escape_neutralizes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn both_parts_carry_the_same_facts_and_sections() {
        let failure = Failure::new("error", "disk <full>")
            .fact("Ended", "status 3")
            .section("Log", "<script>alert(1)</script>");
        let (subject, plain, html) = render(&[("job", "nightly <b>")], &failure, ticket(1, 1));
        assert_eq!(subject, "E db-1.example.com nightly <b>: disk <full>");
        for needle in [
            "Host:",
            "db-1.example.com",
            "Ended:",
            "status 3",
            "Job:",
            "== Log ==",
        ] {
            assert!(plain.contains(needle), "{needle} in {plain}");
        }
        assert!(plain.starts_with("disk <full>\n\n"), "{plain}");
        assert!(plain.contains("<script>alert(1)</script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("disk &lt;full&gt;"));
        assert!(html.contains("nightly &lt;b&gt;"));
    }

    #[test]
    fn the_highlighted_line_comes_first_and_the_summary_after_it() {
        let failure = Failure::new("process", "backup.sh: exit 2")
            .highlight("\u{1b}[31mpg_dump: connection refused\u{1b}[0m");
        let (_, plain, html) = render(&[("job", "j")], &failure, ticket(1, 1));
        assert!(
            plain.starts_with("pg_dump: connection refused\n\nbackup.sh: exit 2\n\n"),
            "{plain}"
        );
        assert!(!html.contains('\u{1b}'));
    }

    #[test]
    fn context_host_replaces_the_machine_name_and_labels_are_capitalised() {
        let failure = Failure::new("error", "x");
        let (subject, plain, _) = render(
            &[("host", "web-1"), ("job", "j"), ("retry_count", "3")],
            &failure,
            ticket(1, 1),
        );
        assert_eq!(subject, "E web-1 j: x");
        assert!(plain.contains("Host:        web-1\n"), "{plain}");
        assert!(plain.contains("Retry count: 3\n"), "{plain}");
        assert!(plain.contains("Sent by erroremail on db-1.example.com."));
    }

    #[test]
    fn a_repeat_says_which_failure_it_is_in_subject_and_body() {
        let failure = Failure::new("error", "x");
        let (subject, plain, _) = render(&[("job", "j")], &failure, ticket(2, 4));
        assert_eq!(subject, "E db-1.example.com j: x (4th failure in 3 h)");
        assert!(plain.contains("Failure 4 of this kind since "), "{plain}");
        assert!(
            plain.contains("This mail also reports 1 earlier failure that was not mailed."),
            "{plain}"
        );
        assert!(plain.contains("The next mail goes out at failure 8"));
        assert!(plain.contains("after 1 h without one"));
    }

    #[test]
    fn the_first_of_a_new_streak_reports_what_the_last_left_unsaid() {
        let failure = Failure::new("error", "x");
        let (subject, plain, _) = render(&[("job", "j")], &failure, ticket(38, 1));
        assert_eq!(subject, "E db-1.example.com j: x");
        assert!(
            plain.contains("First failure of this kind after 1 h without one. This mail also reports 37 earlier failures that were not mailed."),
            "{plain}"
        );
    }

    #[test]
    fn a_first_mail_has_no_notice_and_an_unthrottled_one_no_throttle_footer() {
        let failure = Failure::new("error", "x");
        let (_, plain, _) = render(&[("job", "j")], &failure, ticket(1, 1));
        assert!(!plain.contains("Failure 1"), "{plain}");
        assert!(plain.contains("counting starts again"));
        let unthrottled = Ticket {
            window: None,
            ..ticket(1, 1)
        };
        let (_, plain, _) = render(&[("job", "j")], &failure, unthrottled);
        assert!(!plain.contains("counting"), "{plain}");
    }

    #[test]
    fn a_lost_throttle_file_is_said() {
        let failure = Failure::new("error", "x");
        let lost = Ticket {
            shared_state_lost: Some("cannot use the throttle file /x: denied".to_owned()),
            ..ticket(1, 1)
        };
        let (_, plain, _) = render(&[("job", "j")], &failure, lost);
        assert!(
            plain.contains("Throttling off: cannot use the throttle file /x: denied."),
            "{plain}"
        );
    }

    #[test]
    fn attachments_are_named_after_host_and_time() {
        let config = config();
        let failure = Failure::new("process", "x").attach("backup.sh.log", b"x".to_vec());
        let ticket = ticket(1, 1);
        let reporter = Reporter {
            machine: "vm.example.com",
            context: &[],
        };
        let letter = Letter::new(&config, &reporter, &failure, &ticket);
        assert_eq!(
            letter.attachment_name("backup.sh.log"),
            "backup.sh-vm-20231115T0113Z.log"
        );
        assert_eq!(letter.attachment_name("core"), "core-vm-20231115T0113Z");
    }
}
