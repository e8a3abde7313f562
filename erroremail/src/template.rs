//! The subject template: `ErrorEmail: {message}`, `ERR: {host}:{port} {message}`.
//!
//! The syntax is the subset of Python's `str.format` that the original's configs
//! use: `{name}` is replaced, `{{` and `}}` stand for braces. Anything else inside
//! braces (`{0}`, `{host!r}`, `{port:>5}`) is refused when the config is loaded,
//! so that a typo is found by the operator who writes it, not at 3 a.m.

use std::fmt;

use crate::text::shorten;

/// A parsed subject template.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Placeholder(String),
}

/// The longest subject we send; the message itself is in the body.
const MAX_SUBJECT_CHARS: usize = 200;

impl SubjectTemplate {
    /// The original's default.
    pub const DEFAULT: &'static str = "ErrorEmail: {message}";

    /// Parses a template; the error says what is wrong and where.
    pub fn parse(source: &str) -> Result<SubjectTemplate, String> {
        let mut segments = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => return Err(format!("`{{` at byte {at} is never closed")),
                        }
                    }
                    if !is_identifier(&name) {
                        return Err(format!(
                            "`{{{name}}}` at byte {at} is not a placeholder: use {{name}} with letters, digits and _, or {{{{ for a brace"
                        ));
                    }
                    if !text.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut text)));
                    }
                    segments.push(Segment::Placeholder(name));
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(format!(
                        "single `}}` at byte {at}: write `}}}}` for a brace"
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }
        Ok(SubjectTemplate {
            source: source.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The placeholders, in order of appearance.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Placeholder(name) => Some(name.as_str()),
            Segment::Text(_) => None,
        })
    }

    /// Fills the template. A value's line breaks and control characters become
    /// spaces (a header has one line), and the result is cut to a readable length.
    pub(crate) fn render<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut subject = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => subject.push_str(text),
                Segment::Placeholder(name) => subject.push_str(value(name).unwrap_or_default()),
            }
        }
        let one_line: String = subject
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        shorten(one_line.trim(), MAX_SUBJECT_CHARS)
    }
}

impl fmt::Debug for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
        let template = SubjectTemplate::parse(template).unwrap();
        template.render(|name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| *value)
        })
    }

    #[test]
    fn fills_message_and_context_as_the_original_tests_do() {
        let subject = fill(
            "ERR: {host}:{port} {message}",
            &[("host", "web-1"), ("port", "8080"), ("message", "boom")],
        );
        assert_eq!(subject, "ERR: web-1:8080 boom");
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        assert_eq!(fill("{{{message}}}", &[("message", "x")]), "{x}");
    }

    #[test]
    fn lists_placeholders_in_order() {
        let template = SubjectTemplate::parse("{a} {b} {a}").unwrap();
        assert_eq!(template.placeholders().collect::<Vec<_>>(), ["a", "b", "a"]);
    }

    #[test]
    fn refuses_python_format_specs_and_positional_fields() {
        for bad in ["{0}", "{host!r}", "{port:>5}", "{}", "{a b}"] {
            let err = SubjectTemplate::parse(bad).unwrap_err();
            assert!(err.contains("not a placeholder"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_unbalanced_braces() {
        assert!(
            SubjectTemplate::parse("{message")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(
            SubjectTemplate::parse("a } b")
                .unwrap_err()
                .contains("single `}`")
        );
    }

    #[test]
    fn multi_line_values_make_a_one_line_subject() {
        assert_eq!(
            fill("E: {message}", &[("message", "first\nsecond\r\n")]),
            "E: first second"
        );
    }

    #[test]
    fn long_subjects_are_cut() {
        let long = "x".repeat(1000);
        let subject = fill("{message}", &[("message", &long)]);
        assert_eq!(subject.chars().count(), MAX_SUBJECT_CHARS);
        assert!(subject.ends_with('…'));
    }
}
