//! HTTP dates (RFC 9110 §5.6.7): the three formats a recipient must accept.
//!
//! Times are whole seconds since the Unix epoch, which is all the precision an HTTP
//! date carries. Dates before 1970 are clamped to 0: for caching they all mean "long
//! ago".

/// Parses an HTTP-date in any of its three formats:
///
/// - IMF-fixdate, the one senders must generate: `Sun, 06 Nov 1994 08:49:37 GMT`;
/// - the obsolete RFC 850 format: `Sunday, 06-Nov-94 08:49:37 GMT`;
/// - ANSI C's asctime() format: `Sun Nov  6 08:49:37 1994`.
///
/// The shapes are matched exactly (RFC 9111 §5.3: an invalid date means "already
/// expired", so guessing at sloppy dates would make stale responses fresh). Day and
/// month names and `GMT` are matched without regard to case, and the day name is not
/// checked against the date (it is redundant, and servers get it wrong). A two-digit
/// RFC 850 year is read as RFC 9110 says: a date that would be more than 50 years after
/// `now` is taken from the previous century. Anything else, including out-of-range
/// fields, is `None`.
pub fn parse_http_date(value: &[u8], now: u64) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    parse_imf_fixdate(text)
        .or_else(|| parse_rfc850(text, now))
        .or_else(|| parse_asctime(text))
}

/// Formats `secs` (since the Unix epoch) as an IMF-fixdate.
pub fn format_http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 3) % 7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Sun, 06 Nov 1994 08:49:37 GMT`: exactly this shape, single spaces, two-digit
/// day, four-digit year. Lenient date parsers accept much more; RFC 9111 §5.3 wants
/// anything else read as "already expired", and the conformance suites check it.
fn parse_imf_fixdate(text: &str) -> Option<u64> {
    let (day_name, rest) = text.split_once(", ")?;
    is_day_name(day_name, &WEEKDAYS)?;
    let [day, month, year, time, zone] = split_exact::<5>(rest, ' ')?;
    is_gmt(zone)?;
    to_epoch(
        parse_number(year, 4)?,
        parse_month(month)?,
        parse_number(day, 2)?,
        parse_time(time)?,
    )
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn parse_rfc850(text: &str, now: u64) -> Option<u64> {
    let (day_name, rest) = text.split_once(", ")?;
    is_day_name(day_name, &LONG_WEEKDAYS)?;
    let [date, time, zone] = split_exact::<3>(rest, ' ')?;
    is_gmt(zone)?;
    let [day, month, two_digit_year] = split_exact::<3>(date, '-')?;
    // RFC 9110 §5.6.7: more than 50 years in the future means the previous century.
    let (current_year, _, _) = civil_from_days(now / 86_400);
    let mut year = current_year / 100 * 100 + parse_number(two_digit_year, 2)?;
    if year > current_year + 50 {
        year -= 100;
    }
    to_epoch(
        year,
        parse_month(month)?,
        parse_number(day, 2)?,
        parse_time(time)?,
    )
}

/// `Sun Nov  6 08:49:37 1994`: a one-digit day is preceded by a second space.
fn parse_asctime(text: &str) -> Option<u64> {
    let (day_name, rest) = text.split_once(' ')?;
    is_day_name(day_name, &WEEKDAYS)?;
    let (month, rest) = rest.split_once(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(rest) => {
            let (day, rest) = rest.split_once(' ')?;
            (parse_number(day, 1)?, rest)
        }
        None => {
            let (day, rest) = rest.split_once(' ')?;
            (parse_number(day, 2)?, rest)
        }
    };
    let [time, year] = split_exact::<2>(rest, ' ')?;
    to_epoch(
        parse_number(year, 4)?,
        parse_month(month)?,
        day,
        parse_time(time)?,
    )
}

/// Splits `text` at `separator` into exactly `N` non-empty parts.
fn split_exact<const N: usize>(text: &str, separator: char) -> Option<[&str; N]> {
    let mut parts = text.split(separator);
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next().filter(|p| !p.is_empty())?;
    }
    parts.next().is_none().then_some(out)
}

fn is_day_name(name: &str, names: &[&str]) -> Option<()> {
    names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        .then_some(())
}

fn is_gmt(zone: &str) -> Option<()> {
    zone.eq_ignore_ascii_case("GMT").then_some(())
}

fn parse_month(name: &str) -> Option<u64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as u64 + 1)
}

/// Exactly `len` ASCII digits.
fn parse_number(digits: &str, len: usize) -> Option<u64> {
    if digits.len() != len || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `08:49:37` as seconds into the day. A leap second (`:60`) counts as `:59`.
fn parse_time(text: &str) -> Option<u64> {
    let mut parts = text.split(':');
    let hour = parse_number(parts.next()?, 2)?;
    let minute = parse_number(parts.next()?, 2)?;
    let second = parse_number(parts.next()?, 2)?;
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(hour * 3600 + minute * 60 + second.min(59))
}

fn to_epoch(year: u64, month: u64, day: u64, seconds_of_day: u64) -> Option<u64> {
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(u64::try_from(days).map_or(0, |days| days * 86_400 + seconds_of_day))
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let (y, m, d) = (year as i64, month as i64, day as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_index = (m + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day number since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as u64, month as u64, day as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW_2026: u64 = 1_795_000_000; // 2026-11-18

    #[test]
    fn three_formats_of_the_same_instant_agree() {
        let expected = 784_111_777;
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_http_date(text.as_bytes(), NOW_2026),
                Some(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive_and_the_weekday_is_not_checked() {
        assert_eq!(
            parse_http_date(b"mon, 06 NOV 1994 08:49:37 gmt", NOW_2026),
            Some(784_111_777)
        );
    }

    #[test]
    fn far_dates_parse() {
        for text in [
            "Tue, 19 Jan 2038 14:14:08 GMT",
            "Sun, 21 Nov 2286 04:46:39 GMT",
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug  8 02:01:18 2050",
            "Thu Aug 18 02:01:18 2050",
        ] {
            assert!(
                parse_http_date(text.as_bytes(), NOW_2026).is_some(),
                "{text}"
            );
        }
    }

    #[test]
    fn rfc850_years_more_than_fifty_years_ahead_are_last_century() {
        // In 2026, "-76" is 2076 (50 years ahead) and "-77" is 1977.
        let y2076 = parse_http_date(b"Friday, 01-Jan-76 00:00:00 GMT", NOW_2026).unwrap();
        let y1977 = parse_http_date(b"Saturday, 01-Jan-77 00:00:00 GMT", NOW_2026).unwrap();
        assert_eq!(format_http_date(y2076), "Wed, 01 Jan 2076 00:00:00 GMT");
        assert_eq!(format_http_date(y1977), "Sat, 01 Jan 1977 00:00:00 GMT");
    }

    #[test]
    fn invalid_dates_are_none() {
        for text in [
            "0",
            "",
            "-1",
            "Sun, 31 Feb 2021 00:00:00 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Thu, 01 Jan 1970 00:00:00 GMT, Fri, 02 Jan 1970 00:00:00 GMT",
            // The conformance suite's invalid Expires values.
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text.as_bytes(), NOW_2026), None, "{text:?}");
        }
    }

    #[test]
    fn dates_before_the_epoch_are_clamped_to_zero() {
        assert_eq!(
            parse_http_date(b"Sun, 01 Jan 1950 00:00:00 GMT", NOW_2026),
            Some(0)
        );
    }

    #[test]
    fn leap_years() {
        let feb29 = parse_http_date(b"Thu, 29 Feb 2024 12:00:00 GMT", NOW_2026).unwrap();
        assert_eq!(format_http_date(feb29), "Thu, 29 Feb 2024 12:00:00 GMT");
        assert_eq!(
            parse_http_date(b"Thu, 29 Feb 2023 12:00:00 GMT", NOW_2026),
            None
        );
        assert!(parse_http_date(b"Tue, 29 Feb 2000 12:00:00 GMT", NOW_2026).is_some());
        assert_eq!(
            parse_http_date(b"Thu, 29 Feb 1900 12:00:00 GMT", NOW_2026),
            None
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_http_date(&bytes, NOW_2026);
        }

        #[test]
        fn format_then_parse_is_identity(secs in 0u64..253_402_300_799) {
            let text = format_http_date(secs);
            prop_assert_eq!(parse_http_date(text.as_bytes(), NOW_2026), Some(secs));
        }

        #[test]
        fn agrees_with_httpdate_on_imf_fixdates(secs in 0u64..253_402_300_799) {
            let ours = format_http_date(secs);
            let theirs = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
            prop_assert_eq!(ours, theirs);
        }
    }
}
