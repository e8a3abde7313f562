//! Text made to fit where it is shown: a subject line, a row, a log line, a time.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `text` cut to `max_chars` characters, the last of them `…` when it was cut.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The first line of `text` that says something.
pub(crate) fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("(no message)")
        .to_owned()
}

/// An error, then its source, then the source's source ...
pub(crate) fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&err| err.source())
}

/// A duration as a person says it, to the precision that matters at its size:
/// `0.4 s`, `12 s`, `1 min 35 s`, `2 h 5 min`, `3 days 2 h`.
pub(crate) fn duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let two_units = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big} {big_unit}")
        } else {
            format!("{big} {big_unit} {small} {small_unit}")
        }
    };
    match total {
        0..10 => format!("{:.1} s", duration.as_secs_f64()),
        10..60 => format!("{total} s"),
        60..3600 => two_units(total / 60, "min", total % 60, "s"),
        3600..86_400 => two_units(total / 3600, "h", total / 60 % 60, "min"),
        _ => {
            let days = total / 86_400;
            let unit = if days == 1 { "day" } else { "days" };
            two_units(days, unit, total / 3600 % 24, "h")
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st` ...
pub(crate) fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// A moment in this machine's time zone, with its offset, which a reader anywhere
/// can place: `Fri 27 Nov 2026 20:46:03 +01:00`.
pub(crate) fn local_time(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(timestamp) => timestamp
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%a %-d %b %Y %H:%M:%S %:z")
            .to_string(),
        Err(_) => beyond_dates(time),
    }
}

/// [`local_time`] of a Unix time in seconds.
pub(crate) fn local_time_of_unix(seconds: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(seconds)) {
        Some(time) => local_time(time),
        None => format!("{seconds} s after the Unix epoch"),
    }
}

/// A moment in UTC, short enough for a file name: `20261127T2046Z`.
pub(crate) fn compact_utc(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(timestamp) => timestamp.strftime("%Y%m%dT%H%MZ").to_string(),
        Err(_) => "undated".to_owned(),
    }
}

/// What a time outside the calendar (a broken clock, an edited state file) is
/// shown as.
fn beyond_dates(time: SystemTime) -> String {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => format!("{} s after the Unix epoch", since.as_secs()),
        Err(before) => format!("{} s before the Unix epoch", before.duration().as_secs()),
    }
}

/// `text` without terminal escape sequences (colours, cursor moves, titles): they
/// are noise in a mail. The attached log keeps them.
pub(crate) fn strip_terminal_escapes(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            plain.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, up to a final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            // nF: intermediates (space to /), then one final character.
            Some(' '..='/') => {
                for c in chars.by_ref() {
                    if !(' '..='/').contains(&c) {
                        break;
                    }
                }
            }
            // Any other escape is two characters long.
            _ => {}
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_marks_the_cut() {
        assert_eq!(shorten("abcdef", 6), "abcdef");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("äöüß", 3), "äö…");
    }

    #[test]
    fn times_outside_the_calendar_do_not_panic() {
        assert_eq!(
            local_time_of_unix(u64::MAX),
            format!("{} s after the Unix epoch", u64::MAX)
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(local_time(far), "400000000000 s after the Unix epoch");
        assert_eq!(compact_utc(far), "undated");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert!(local_time(before).contains("1969") || local_time(before).contains("1970"));
    }

    #[test]
    fn local_time_carries_its_offset() {
        let text = local_time_of_unix(784_111_777);
        assert!(text.contains("1994"), "{text}");
        let offset = text.rsplit(' ').next().unwrap_or_default();
        assert!(
            offset.starts_with(['+', '-']) && offset.len() == 6,
            "{text}"
        );
    }

    #[test]
    fn compact_utc_fits_a_file_name() {
        let time = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(compact_utc(time), "19941106T0849Z");
    }

    #[test]
    fn durations_read_at_their_scale() {
        let s = Duration::from_secs;
        assert_eq!(duration(Duration::from_millis(420)), "0.4 s");
        assert_eq!(duration(s(12)), "12 s");
        assert_eq!(duration(s(95)), "1 min 35 s");
        assert_eq!(duration(s(600)), "10 min");
        assert_eq!(duration(s(3600)), "1 h");
        assert_eq!(duration(s(2 * 3600 + 5 * 60 + 7)), "2 h 5 min");
        assert_eq!(duration(s(86_400)), "1 day");
        assert_eq!(duration(s(3 * 86_400 + 2 * 3600)), "3 days 2 h");
    }

    #[test]
    fn ordinals() {
        let all: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            all,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }

    #[test]
    fn terminal_escapes_are_removed_and_text_kept() {
        assert_eq!(
            strip_terminal_escapes("\u{1b}[1;31merror:\u{1b}[0m disk full"),
            "error: disk full"
        );
        assert_eq!(
            strip_terminal_escapes("\u{1b}]0;title\u{7}done \u{1b}(Bok"),
            "done ok"
        );
        assert_eq!(strip_terminal_escapes("plain <text>"), "plain <text>");
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(first_line("\n  \n  boom  \nmore"), "boom");
        assert_eq!(first_line(""), "(no message)");
    }
}
