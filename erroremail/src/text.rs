//! Text made to fit where it is shown: a subject line, a row, a log line.

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

/// `time` as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), which any reader
/// understands. httpdate panics outside 1970 to 9999; such a time (a broken clock,
/// a tampered state file) is shown as seconds since the epoch instead.
pub(crate) fn http_date(time: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() <= LAST_SECOND_OF_9999 => httpdate::fmt_http_date(time),
        Ok(since) => format!("{} s after the Unix epoch", since.as_secs()),
        Err(before) => format!("{} s before the Unix epoch", before.duration().as_secs()),
    }
}

/// [`http_date`] of a Unix time in seconds.
pub(crate) fn http_date_of_unix(seconds: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(seconds)) {
        Some(time) => http_date(time),
        None => format!("{seconds} s after the Unix epoch"),
    }
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
    fn dates_outside_what_http_dates_can_say_do_not_panic() {
        assert_eq!(
            http_date_of_unix(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date_of_unix(u64::MAX),
            format!("{} s after the Unix epoch", u64::MAX)
        );
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(http_date(before), "5 s before the Unix epoch");
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(first_line("\n  \n  boom  \nmore"), "boom");
        assert_eq!(first_line(""), "(no message)");
    }
}
