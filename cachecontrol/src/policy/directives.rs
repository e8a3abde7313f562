//! Cache-Control (RFC 9111 §5.2), Pragma (§5.4) and targeted fields (RFC 9213).
//!
//! A Cache-Control field is a comma-separated list of directives, each a token with an
//! optional argument that is a token or a quoted string. Several field lines are one
//! list (RFC 9110 §5.3). Names are case-insensitive. The parser never fails: a
//! directive it cannot read is kept with an invalid argument, so that the decision
//! about what an invalid directive means is taken in one place, below, and not by
//! accident of the parser.

use std::borrow::Cow;

use http::header::{CACHE_CONTROL, PRAGMA};
use http::{HeaderMap, HeaderName};

use super::structured::Item;

/// The largest delta-seconds a cache must represent: larger values, and values whose
/// arithmetic would overflow, are taken as this (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX: u32 = 2_147_483_648;

/// The argument of a directive whose syntax is delta-seconds (`max-age=60`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// A valid number of seconds, capped at [`DELTA_SECONDS_MAX`].
    Seconds(u32),
    /// Missing, not all digits (`100a`, `-1`, `1.5`, `'60'`), or written with white
    /// space around `=`.
    Invalid,
}

impl Delta {
    /// The seconds, when valid.
    pub fn seconds(self) -> Option<u32> {
        match self {
            Delta::Seconds(s) => Some(s),
            Delta::Invalid => None,
        }
    }
}

/// A directive that applies to the whole response or only to the listed fields
/// (`no-cache`, `no-cache="set-cookie"`, `private`, `private="x-user"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FieldScope {
    /// The directive is not present.
    #[default]
    Absent,
    /// Present without field names: it applies to the whole response.
    All,
    /// Present with field names only: it applies to these header fields.
    Fields(Vec<HeaderName>),
}

impl FieldScope {
    /// Whether the directive applies to the whole response.
    pub fn is_all(&self) -> bool {
        matches!(self, FieldScope::All)
    }

    /// The named fields, when the directive names fields.
    pub fn fields(&self) -> &[HeaderName] {
        match self {
            FieldScope::Fields(fields) => fields,
            _ => &[],
        }
    }

    /// Merges another occurrence of the same directive: the unqualified form is the
    /// more restrictive and wins; qualified forms add up.
    fn merge(&mut self, other: FieldScope) {
        match (&mut *self, other) {
            (_, FieldScope::Absent) | (FieldScope::All, _) => {}
            (FieldScope::Fields(mine), FieldScope::Fields(theirs)) => {
                for field in theirs {
                    if !mine.contains(&field) {
                        mine.push(field);
                    }
                }
            }
            (slot, other) => *slot = other,
        }
    }
}

/// The directives of a response that a cache acts on (RFC 9111 §5.2.2, RFC 5861).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age`.
    pub max_age: Option<Delta>,
    /// `s-maxage` (shared caches only).
    pub s_maxage: Option<Delta>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, with or without field names.
    pub no_cache: FieldScope,
    /// `private`, with or without field names.
    pub private: FieldScope,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate` (shared caches only).
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861 §3).
    pub stale_while_revalidate: Option<Delta>,
    /// `stale-if-error` (RFC 5861 §4).
    pub stale_if_error: Option<Delta>,
    /// `max-age` appeared more than once with different arguments. RFC 9111 §4.2.1
    /// lets a cache use the first one or consider the response stale; we consider it
    /// stale, the safe choice.
    pub conflicting_max_age: bool,
    /// `s-maxage` appeared more than once with different arguments (only a shared
    /// cache cares).
    pub conflicting_s_maxage: bool,
}

impl ResponseDirectives {
    /// Parses the response's Cache-Control field lines. `Pragma: no-cache` counts as
    /// `no-cache` when there is no Cache-Control field at all: HTTP/1.0 servers say it
    /// that way, and serving such a response without asking is the riskier reading.
    pub fn from_headers(headers: &HeaderMap) -> ResponseDirectives {
        let mut directives = ResponseDirectives::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            parse_list(value.as_bytes(), |name, arg| directives.apply(name, arg));
        }
        if !any && pragma_no_cache(headers) {
            directives.no_cache = FieldScope::All;
        }
        directives
    }

    /// Parses a targeted cache-control field (RFC 9213), such as `CDN-Cache-Control`.
    ///
    /// Its syntax is a Structured Fields dictionary (RFC 8941); a field that does not
    /// parse as one is ignored as a whole, as RFC 9213 §2.1 requires, and `None` is
    /// returned so that the caller falls back to Cache-Control.
    pub fn from_targeted_field(
        headers: &HeaderMap,
        name: &HeaderName,
    ) -> Option<ResponseDirectives> {
        let mut joined = Vec::new();
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(value.as_bytes());
        }
        if joined.is_empty() {
            return None;
        }
        let members = super::structured::parse_dictionary(&joined)?;
        let mut directives = ResponseDirectives::default();
        for (key, item) in &members {
            let arg = match item {
                Item::Boolean(true) => None,
                Item::Boolean(false) => continue,
                Item::Integer(n) if *n >= 0 => {
                    Some(Argument::Token(Cow::Owned(n.to_string().into_bytes())))
                }
                // Structured fields are typed: only the field-name lists of `no-cache`
                // and `private` are strings; a string `max-age` is the wrong type.
                Item::String(s) if matches!(key.as_str(), "no-cache" | "private") => {
                    Some(Argument::Quoted(Cow::Borrowed(s.as_bytes())))
                }
                Item::String(_) => Some(Argument::Malformed),
                Item::Token(t) => Some(Argument::Token(Cow::Borrowed(t.as_bytes()))),
                Item::Integer(_) | Item::Other => Some(Argument::Malformed),
            };
            directives.apply(key.as_bytes(), arg.as_ref());
        }
        Some(directives)
    }

    fn apply(&mut self, name: &[u8], arg: Option<&Argument<'_>>) {
        match_name(name, |name| match name {
            "max-age" => set_delta(&mut self.max_age, arg, &mut self.conflicting_max_age),
            "s-maxage" => set_delta(&mut self.s_maxage, arg, &mut self.conflicting_s_maxage),
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache.merge(field_scope(arg)),
            "private" => self.private.merge(field_scope(arg)),
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "stale-while-revalidate" => {
                set_delta(&mut self.stale_while_revalidate, arg, &mut false)
            }
            "stale-if-error" => set_delta(&mut self.stale_if_error, arg, &mut false),
            _ => {}
        });
    }
}

/// How stale a response the client accepts (`max-stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// `max-stale` without an argument: any staleness.
    Any,
    /// `max-stale=N`: at most N seconds past its freshness lifetime.
    Seconds(u32),
}

/// The directives of a request that a cache acts on (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`: the client does not want a response older than this.
    pub max_age: Option<Delta>,
    /// `max-stale`: the client accepts a stale response.
    pub max_stale: Option<MaxStale>,
    /// `min-fresh`: the client wants a response that stays fresh at least this long.
    pub min_fresh: Option<Delta>,
    /// `no-cache` (or `Pragma: no-cache` without Cache-Control): revalidate first.
    pub no_cache: bool,
    /// `no-store`: store nothing of this request or its response.
    pub no_store: bool,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// Parses the request's Cache-Control field lines, and `Pragma: no-cache` when
    /// there is no Cache-Control field (RFC 9111 §5.4).
    pub fn from_headers(headers: &HeaderMap) -> RequestDirectives {
        let mut directives = RequestDirectives::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            parse_list(value.as_bytes(), |name, arg| {
                match_name(name, |name| match name {
                    "max-age" => set_delta(&mut directives.max_age, arg, &mut false),
                    "min-fresh" => set_delta(&mut directives.min_fresh, arg, &mut false),
                    "max-stale" if directives.max_stale.is_none() => {
                        directives.max_stale = match arg.map(delta) {
                            None => Some(MaxStale::Any),
                            Some(Delta::Seconds(s)) => Some(MaxStale::Seconds(s)),
                            // An unreadable limit grants nothing.
                            Some(Delta::Invalid) => None,
                        };
                    }
                    "no-cache" => directives.no_cache = true,
                    "no-store" => directives.no_store = true,
                    "only-if-cached" => directives.only_if_cached = true,
                    _ => {}
                })
            });
        }
        if !any && pragma_no_cache(headers) {
            directives.no_cache = true;
        }
        directives
    }

    /// Whether the request has no directive at all (the common case, checked first on
    /// the hit path).
    pub fn is_empty(&self) -> bool {
        *self == RequestDirectives::default()
    }
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers.get_all(PRAGMA).iter().any(|value| {
        let mut found = false;
        parse_list(value.as_bytes(), |name, _| {
            found |= name.eq_ignore_ascii_case(b"no-cache");
        });
        found
    })
}

/// The argument of a directive, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Argument<'a> {
    /// `name=token`
    Token(Cow<'a, [u8]>),
    /// `name="quoted string"`, unescaped.
    Quoted(Cow<'a, [u8]>),
    /// `name=` followed by something that is neither.
    Malformed,
}

fn match_name(name: &[u8], f: impl FnOnce(&str)) {
    // Directive names we act on are short; lower-case them on the stack.
    let mut buf = [0u8; 32];
    if name.len() > buf.len() {
        return;
    }
    for (dst, src) in buf.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    if let Ok(lower) = std::str::from_utf8(&buf[..name.len()]) {
        f(lower);
    }
}

fn set_delta(slot: &mut Option<Delta>, arg: Option<&Argument<'_>>, conflict: &mut bool) {
    let value = arg.map_or(Delta::Invalid, delta);
    match slot {
        None => *slot = Some(value),
        Some(first) if *first != value => *conflict = true,
        Some(_) => {}
    }
}

/// delta-seconds = 1*DIGIT (RFC 9111 §1.2.2). Senders must use the token form, but
/// RFC 9111 §5.2 says recipients ought to accept the quoted form too (`max-age="60"`).
fn delta(arg: &Argument<'_>) -> Delta {
    let digits = match arg {
        Argument::Token(digits) | Argument::Quoted(digits) => digits,
        Argument::Malformed => return Delta::Invalid,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Delta::Invalid;
    }
    let mut value: u64 = 0;
    for digit in digits.iter() {
        value = value * 10 + u64::from(digit - b'0');
        if value >= u64::from(DELTA_SECONDS_MAX) {
            return Delta::Seconds(DELTA_SECONDS_MAX);
        }
    }
    Delta::Seconds(value as u32)
}

/// The argument of `no-cache` and `private`: field names, in the quoted form senders
/// use or (RFC 9111 §5.2: recipients ought to accept both) a single token.
fn field_scope(arg: Option<&Argument<'_>>) -> FieldScope {
    let names = match arg {
        None => return FieldScope::All,
        Some(Argument::Quoted(names) | Argument::Token(names)) => names,
        // An argument that cannot be read is taken as the most restrictive form.
        Some(Argument::Malformed) => return FieldScope::All,
    };
    let fields: Vec<HeaderName> = names
        .split(|b| *b == b',')
        .map(|name| name.trim_ascii())
        .filter(|name| !name.is_empty())
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    if fields.is_empty() {
        FieldScope::All
    } else {
        FieldScope::Fields(fields)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
        i += 1;
    }
    i
}

/// Skips to the next comma that is not inside a quoted string.
fn skip_to_comma(bytes: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b'\\' if quoted => i += 1,
            b',' if !quoted => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Calls `f(name, argument)` for each directive of one field line.
pub(crate) fn parse_list(bytes: &[u8], mut f: impl FnMut(&[u8], Option<&Argument<'_>>)) {
    let mut i = 0;
    while i < bytes.len() {
        i = skip_ows(bytes, i);
        if i < bytes.len() && bytes[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_tchar(bytes[i]) {
            i += 1;
        }
        let name = &bytes[start..i];
        if name.is_empty() {
            // Not a directive: skip this list element.
            i = skip_to_comma(bytes, i + 1);
            continue;
        }
        let mut arg = None;
        // No white space around `=`: the grammar has none, and `max-age =60` is
        // better read as broken than guessed at.
        if i < bytes.len() && bytes[i] == b'=' {
            let (value, next) = parse_argument(bytes, i + 1);
            arg = Some(value);
            i = next;
        }
        i = skip_ows(bytes, i);
        if i < bytes.len() && bytes[i] != b',' {
            // Trailing garbage after the directive (`max-age=10 20`, `max-age =10`):
            // the argument cannot be trusted.
            arg = Some(Argument::Malformed);
            i = skip_to_comma(bytes, i);
        }
        f(name, arg.as_ref());
    }
}

fn parse_argument(bytes: &[u8], start: usize) -> (Argument<'_>, usize) {
    if start < bytes.len() && bytes[start] == b'"' {
        let mut value = Vec::new();
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => return (Argument::Quoted(Cow::Owned(value)), i + 1),
                b'\\' if i + 1 < bytes.len() => {
                    value.push(bytes[i + 1]);
                    i += 2;
                }
                b => {
                    value.push(b);
                    i += 1;
                }
            }
        }
        // Unterminated quoted string.
        return (Argument::Malformed, i);
    }
    let mut i = start;
    while i < bytes.len() && is_tchar(bytes[i]) {
        i += 1;
    }
    if i == start {
        (Argument::Malformed, i)
    } else {
        (Argument::Token(Cow::Borrowed(&bytes[start..i])), i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn response(lines: &[&str]) -> ResponseDirectives {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        ResponseDirectives::from_headers(&headers)
    }

    fn request(lines: &[&str]) -> RequestDirectives {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        RequestDirectives::from_headers(&headers)
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let d = response(&["Max-Age=60, PUBLIC", "must-REVALIDATE"]);
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert!(d.public && d.must_revalidate);
    }

    #[test]
    fn invalid_delta_seconds_are_invalid() {
        for arg in ["100a", "-1", "1.5", "\"6 0\"", "", "a100", "0x10", "'60'"] {
            let d = response(&[&format!("max-age={arg}")]);
            assert_eq!(d.max_age, Some(Delta::Invalid), "max-age={arg}");
        }
        assert_eq!(response(&["max-age"]).max_age, Some(Delta::Invalid));
    }

    #[test]
    fn white_space_around_equals_makes_the_argument_invalid() {
        assert_eq!(response(&["max-age =60"]).max_age, Some(Delta::Invalid));
        assert_eq!(response(&["max-age= 60"]).max_age, Some(Delta::Invalid));
        assert_eq!(
            response(&["max-age=003600"]).max_age,
            Some(Delta::Seconds(3600))
        );
        assert_eq!(response(&["max-age='3600'"]).max_age, Some(Delta::Invalid));
    }

    #[test]
    fn directives_inside_quoted_strings_are_not_directives() {
        assert_eq!(
            response(&["extension=\"max-age=3600\", max-age=1"]).max_age,
            Some(Delta::Seconds(1))
        );
        assert_eq!(
            response(&["max-age=1, extension=\"max-age=3600\""]).max_age,
            Some(Delta::Seconds(1))
        );
    }

    #[test]
    fn quoted_arguments_are_accepted_as_recipients_ought_to() {
        assert_eq!(
            response(&["max-age=\"60\""]).max_age,
            Some(Delta::Seconds(60))
        );
        assert_eq!(
            response(&["no-cache=set-cookie"]).no_cache.fields(),
            &[HeaderName::from_static("set-cookie")]
        );
    }

    #[test]
    fn huge_delta_seconds_are_capped() {
        let d = response(&["max-age=99999999999999999999999999"]);
        assert_eq!(d.max_age, Some(Delta::Seconds(DELTA_SECONDS_MAX)));
        assert_eq!(
            response(&["max-age=2147483647"]).max_age,
            Some(Delta::Seconds(2_147_483_647))
        );
    }

    #[test]
    fn conflicting_max_age_is_flagged_but_repeats_are_not() {
        assert!(response(&["max-age=60, max-age=3600"]).conflicting_max_age);
        assert!(response(&["max-age=60", "max-age=3600"]).conflicting_max_age);
        assert!(!response(&["max-age=60, max-age=60"]).conflicting_max_age);
        assert!(response(&["s-maxage=1, s-maxage=2"]).conflicting_s_maxage);
        assert!(!response(&["s-maxage=1, s-maxage=2"]).conflicting_max_age);
        assert_eq!(
            response(&["max-age=60, max-age=3600"]).max_age,
            Some(Delta::Seconds(60))
        );
    }

    #[test]
    fn field_names_in_no_cache_and_private() {
        let d = response(&["no-cache=\"Set-Cookie, X-Foo\", private=\"x-user\""]);
        assert_eq!(
            d.no_cache.fields(),
            &[
                HeaderName::from_static("set-cookie"),
                HeaderName::from_static("x-foo")
            ]
        );
        assert_eq!(d.private.fields(), &[HeaderName::from_static("x-user")]);
        // The unqualified form wins over a qualified one, in either order.
        assert!(response(&["no-cache=\"a\", no-cache"]).no_cache.is_all());
        assert!(response(&["no-cache, no-cache=\"a\""]).no_cache.is_all());
    }

    #[test]
    fn quoted_strings_may_hold_commas_and_escapes() {
        let d = response(&[r#"no-cache="a,b", max-age=5, x-ext="q\"uote,d", public"#]);
        assert_eq!(d.no_cache.fields().len(), 2);
        assert_eq!(d.max_age, Some(Delta::Seconds(5)));
        assert!(d.public);
    }

    #[test]
    fn garbage_does_not_hide_other_directives() {
        let d = response(&["max-age=10 20, ,, =x, no-store, @@, public"]);
        assert_eq!(d.max_age, Some(Delta::Invalid));
        assert!(d.no_store && d.public);
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(RequestDirectives::from_headers(&headers).no_cache);
        assert!(ResponseDirectives::from_headers(&headers).no_cache.is_all());
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=10"));
        assert!(!RequestDirectives::from_headers(&headers).no_cache);
        assert!(!ResponseDirectives::from_headers(&headers).no_cache.is_all());
    }

    #[test]
    fn request_directives() {
        let d = request(&[
            "max-stale, min-fresh=5, only-if-cached",
            "no-store, max-age=0",
        ]);
        assert_eq!(d.max_stale, Some(MaxStale::Any));
        assert_eq!(d.min_fresh, Some(Delta::Seconds(5)));
        assert_eq!(d.max_age, Some(Delta::Seconds(0)));
        assert!(d.only_if_cached && d.no_store && !d.no_cache);
        assert_eq!(
            request(&["max-stale=30"]).max_stale,
            Some(MaxStale::Seconds(30))
        );
        assert_eq!(request(&["max-stale=abc"]).max_stale, None);
        assert!(request(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut headers = HeaderMap::new();
                headers.insert(CACHE_CONTROL, value.clone());
                headers.insert(PRAGMA, value.clone());
                headers.insert("cdn-cache-control", value);
                let _ = ResponseDirectives::from_headers(&headers);
                let _ = RequestDirectives::from_headers(&headers);
                let _ = ResponseDirectives::from_targeted_field(&headers, &HeaderName::from_static("cdn-cache-control"));
            }
        }

        #[test]
        fn any_digits_parse_to_their_value_or_the_cap(n in any::<u64>()) {
            let d = response(&[&format!("max-age={n}")]);
            let expected = n.min(u64::from(DELTA_SECONDS_MAX)) as u32;
            prop_assert_eq!(d.max_age, Some(Delta::Seconds(expected)));
        }

        #[test]
        fn tokens_from_the_directive_alphabet(parts in proptest::collection::vec("[a-zA-Z-]{1,16}(=[0-9a-z\"]{0,6})?", 0..6)) {
            let line = parts.join(", ");
            if let Ok(value) = HeaderValue::from_str(&line) {
                let mut headers = HeaderMap::new();
                headers.insert(CACHE_CONTROL, value);
                let _ = ResponseDirectives::from_headers(&headers);
            }
        }
    }
}
