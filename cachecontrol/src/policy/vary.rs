//! Vary (RFC 9111 §4.1): which request headers select a stored response.

use http::header::VARY;
use http::{HeaderMap, HeaderName};

/// The request headers a stored response varies on, and the values they had in the
/// request that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaryKey {
    /// Field names, lower-case, in the order the response listed them, without repeats.
    names: Vec<HeaderName>,
    /// The normalized value of each field in that request; `None` when it was absent.
    /// Bytes, not text: two values that differ only in bytes that are not UTF-8 are
    /// still different.
    values: Vec<Option<Vec<u8>>>,
}

/// What a response's Vary says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No Vary field (or only empty ones): one response for every request.
    None,
    /// `Vary: *`: no later request can be known to match.
    Any,
    /// The response varies on these request fields.
    Fields(Vec<HeaderName>),
}

impl Vary {
    /// Reads the Vary field lines of a response.
    pub fn from_response(headers: &HeaderMap) -> Vary {
        let mut names: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(VARY) {
            for name in value.as_bytes().split(|b| *b == b',') {
                let name = name.trim_ascii();
                if name == b"*" {
                    return Vary::Any;
                }
                // An unparsable name cannot be matched: treat it like `*`.
                let Ok(name) = HeaderName::from_bytes(name) else {
                    if name.is_empty() {
                        continue;
                    }
                    return Vary::Any;
                };
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            Vary::None
        } else {
            Vary::Fields(names)
        }
    }
}

impl VaryKey {
    /// Records the values that `request` has for `names`.
    pub fn new(names: Vec<HeaderName>, request: &HeaderMap) -> VaryKey {
        let values = names.iter().map(|name| normalized(request, name)).collect();
        VaryKey { names, values }
    }

    /// A key read back from a store.
    pub(crate) fn from_parts(
        names: Vec<HeaderName>,
        values: Vec<Option<Vec<u8>>>,
    ) -> Option<VaryKey> {
        (names.len() == values.len()).then_some(VaryKey { names, values })
    }

    /// The field names.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// The normalized values, one per name.
    pub fn values(&self) -> &[Option<Vec<u8>>] {
        &self.values
    }

    /// Whether `request` has the same normalized values (RFC 9111 §4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.names
            .iter()
            .zip(&self.values)
            .all(|(name, value)| normalized(request, name) == *value)
    }
}

/// The value of `name` in `request` as a cache compares it: all field lines combined
/// into one list, with the white space around commas and at the ends removed
/// (RFC 9111 §4.1 allows this normalization; case is kept, because it matters for
/// some fields).
pub fn normalized(request: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    let mut first = true;
    for value in values {
        for element in value.as_bytes().split(|b| *b == b',') {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            out.extend_from_slice(element.trim_ascii());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn vary_names_are_combined_and_deduplicated() {
        let vary = Vary::from_response(&headers(&[
            ("vary", "Accept-Encoding, accept"),
            ("vary", "ACCEPT-ENCODING"),
        ]));
        assert_eq!(
            vary,
            Vary::Fields(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept")
            ])
        );
        assert_eq!(
            Vary::from_response(&headers(&[("vary", "accept, *")])),
            Vary::Any
        );
        assert_eq!(
            Vary::from_response(&headers(&[("vary", " , ")])),
            Vary::None
        );
    }

    #[test]
    fn values_are_normalized_before_comparison() {
        let names = vec![HeaderName::from_static("accept-language")];
        let key = VaryKey::new(names, &headers(&[("accept-language", "en,  fr")]));
        assert!(key.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-language", "fr")
        ])));
        assert!(key.matches(&headers(&[("accept-language", " en , fr ")])));
        assert!(!key.matches(&headers(&[("accept-language", "fr, en")])));
        assert!(!key.matches(&headers(&[])));
    }

    #[test]
    fn values_that_are_not_utf8_are_compared_as_bytes() {
        let name = HeaderName::from_static("x-token");
        let mut one = HeaderMap::new();
        one.insert(&name, HeaderValue::from_bytes(b"a\xff").unwrap());
        let mut two = HeaderMap::new();
        two.insert(&name, HeaderValue::from_bytes(b"a\xfe").unwrap());
        assert!(!VaryKey::new(vec![name], &one).matches(&two));
    }

    #[test]
    fn absent_and_empty_differ() {
        let names = vec![HeaderName::from_static("x-flag")];
        let absent = VaryKey::new(names.clone(), &headers(&[]));
        assert!(absent.matches(&headers(&[])));
        assert!(!absent.matches(&headers(&[("x-flag", "")])));
    }
}
