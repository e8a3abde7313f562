//! The mail: one layout, rendered as plain text and as escaped HTML.
//!
//! A [`Letter`] is everything the reader sees, decided once; [`Letter::plain`] and
//! [`Letter::html`] only lay it out, so the two parts never disagree.

use std::fmt::Write as _;
use std::time::Duration;

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as MailAttachment, MultiPart};

use crate::text::http_date_of_unix;
use crate::throttle::Ticket;
use crate::{Config, Error, Failure};

/// What the reader sees.
pub(crate) struct Letter<'a> {
    pub(crate) subject: String,
    summary: &'a str,
    notice: Option<String>,
    facts: Vec<(&'a str, &'a str)>,
    failure: &'a Failure,
    footer: String,
    fingerprint: &'a str,
    stands_for: u64,
}

impl<'a> Letter<'a> {
    pub(crate) fn new(
        config: &Config,
        host: &'a str,
        context: &'a [(String, String)],
        failure: &'a Failure,
        ticket: &'a Ticket,
        window: Duration,
    ) -> Letter<'a> {
        let context_value = |name: &str| {
            context
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let mut subject = config.subject.render(|name| match name {
            "message" => Some(failure.summary()),
            "host" => context_value("host").or(Some(host)),
            other => context_value(other),
        });
        if ticket.stands_for > 1 {
            let _ = write!(subject, " (×{})", ticket.stands_for);
        }
        let mut facts = vec![("Host", context_value("host").unwrap_or(host))];
        facts.extend(
            failure
                .facts()
                .iter()
                .map(|(label, value)| (label.as_str(), value.as_str())),
        );
        facts.extend(
            context
                .iter()
                .filter(|(key, _)| key != "host")
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let footer = if window.is_zero() {
            format!("Sent by erroremail on {host}.")
        } else {
            format!(
                "Sent by erroremail on {host}. Repeats of this failure within {} are counted and mailed at the 1st, 2nd, 4th, 8th ... occurrence.",
                human_window(window)
            )
        };
        Letter {
            subject,
            summary: failure.summary(),
            notice: repeat_notice(ticket),
            facts,
            failure,
            footer,
            fingerprint: &ticket.fingerprint,
            stands_for: ticket.stands_for,
        }
    }

    pub(crate) fn plain(&self) -> String {
        let mut text = format!("{}\n\n", self.summary);
        if let Some(notice) = &self.notice {
            let _ = write!(text, "{notice}\n\n");
        }
        let width = self
            .facts
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0)
            + 1;
        for (label, value) in &self.facts {
            let _ = writeln!(
                text,
                "{:<width$} {value}",
                format!("{label}:"),
                width = width
            );
        }
        for section in self.failure.sections() {
            let _ = write!(text, "\n== {} ==\n{}\n", section.title, section.text);
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
            "<h2 style=\"color: #b00020;\">{}</h2>",
            escape(self.summary)
        );
        if let Some(notice) = &self.notice {
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
                escape(value)
            );
        }
        html.push_str("</table>\n");
        for section in self.failure.sections() {
            let _ = writeln!(
                html,
                "<h3>{}</h3>\n<pre style=\"background: #f6f8fa; padding: 8px; white-space: pre-wrap;\">{}</pre>",
                escape(&section.title),
                escape(&section.text)
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
        let mut builder = Message::builder()
            .from(config.from.clone())
            .subject(self.subject.clone())
            .message_id(None)
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-ErrorEmail-Fingerprint"),
                self.fingerprint.to_owned(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-ErrorEmail-Count"),
                self.stands_for.to_string(),
            ));
        for to in &config.to {
            builder = builder.to(to.clone());
        }
        let alternative = MultiPart::alternative_plain_html(self.plain(), self.html());
        let message = match self.failure.attachment() {
            None => builder.multipart(alternative),
            Some(attachment) => builder.multipart(
                MultiPart::mixed().multipart(alternative).singlepart(
                    MailAttachment::new(attachment.filename.clone())
                        .body(attachment.content.clone(), ContentType::TEXT_PLAIN),
                ),
            ),
        };
        message.map_err(|err| Error::BuildMessage(err.to_string()))
    }
}

/// Says what a throttled mail stands for, when it stands for more than itself.
fn repeat_notice(ticket: &Ticket) -> Option<String> {
    if ticket.window_start == 0 || (ticket.count == 1 && ticket.stands_for == 1) {
        return None;
    }
    let since = http_date_of_unix(ticket.window_start);
    let until = http_date_of_unix(ticket.window_end);
    let mut notice = match ticket.stands_for {
        0 | 1 => "This mail stands for this failure alone.".to_owned(),
        many => format!(
            "This mail stands for {many} failures of this kind: this one and the {} before it that were counted but not mailed.",
            many - 1
        ),
    };
    let _ = write!(
        notice,
        " It is failure {} since {since}. The next mail comes at failure {}, or with the first failure after {until}.",
        ticket.count,
        ticket.count.saturating_mul(2)
    );
    Some(notice)
}

fn human_window(window: Duration) -> String {
    let seconds = window.as_secs();
    match seconds {
        s if s % 3600 == 0 && s >= 3600 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
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
            window_start: 1_700_000_000,
            window_end: 1_700_003_600,
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
        let letter = Letter::new(
            &config,
            "db-1",
            &context,
            failure,
            &ticket,
            Duration::from_secs(3600),
        );
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
        assert_eq!(subject, "E db-1 nightly <b>: disk <full>");
        for needle in ["Host:", "db-1", "Ended:", "status 3", "job:", "== Log =="] {
            assert!(plain.contains(needle), "{needle} in {plain}");
        }
        assert!(plain.contains("<script>alert(1)</script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("disk &lt;full&gt;"));
        assert!(html.contains("nightly &lt;b&gt;"));
    }

    #[test]
    fn context_host_replaces_the_machine_name() {
        let failure = Failure::new("error", "x");
        let (subject, plain, _) =
            render(&[("host", "web-1"), ("job", "j")], &failure, ticket(1, 1));
        assert_eq!(subject, "E web-1 j: x");
        assert!(plain.contains("Host: web-1"));
    }

    #[test]
    fn a_mail_for_many_failures_says_so_in_subject_and_body() {
        let failure = Failure::new("error", "x");
        let (subject, plain, _) = render(&[("job", "j")], &failure, ticket(32, 64));
        assert!(subject.ends_with("(×32)"), "{subject}");
        assert!(plain.contains("stands for 32 failures"), "{plain}");
        assert!(plain.contains("failure 64 since"));
        assert!(plain.contains("next mail comes at failure 128"));
    }
}
