//! Cache keys.
//!
//! A GET response is stored under its URL without the fragment, which is never sent
//! (the query is part of it: RFC 9111 §4 keys on the whole target URI). HEAD reads the
//! GET entry. Other cacheable methods have the method and a digest of the request body
//! in the key, so that two POSTs with different bodies never share an entry; a body
//! that is a stream cannot be digested and is not cached.
//!
//! A configured partition prefixes every key: clients that share a store but not their
//! users (credentials the middleware cannot see, such as a client's default headers)
//! each get their own partition.
//!
//! A response with Vary is stored under a variant key: the URL's key, the nonce of the
//! URL's variants marker, and a digest of the Vary'd request values.

use std::borrow::Cow;

use http::Method;
use reqwest::Request;
use sha2::{Digest, Sha256};
use url::Url;

use crate::policy::VaryKey;

/// Makes the keys of one middleware.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    /// `"<partition> "`, or empty.
    prefix: String,
}

impl Keys {
    pub(super) fn partitioned(partition: Option<&str>) -> Keys {
        Keys {
            prefix: partition.map(|p| format!("{p} ")).unwrap_or_default(),
        }
    }

    /// The key of a request, or `None` when it cannot be cached. Borrowed from the
    /// request's URL in the common case (GET, no partition): the hit path allocates
    /// no key.
    pub(super) fn of_request<'a>(&self, request: &'a Request) -> Option<Cow<'a, str>> {
        let method = request.method();
        if method == Method::GET || method == Method::HEAD {
            return Some(self.of_url(request.url()));
        }
        let body = match request.body() {
            None => &[][..],
            Some(body) => body.as_bytes()?,
        };
        Some(Cow::Owned(format!(
            "{}{method} {} {}",
            self.prefix,
            &request.url()[..url::Position::AfterQuery],
            hex(&Sha256::digest(body))
        )))
    }

    /// The key of GET responses for a URL.
    pub(super) fn of_url<'a>(&self, url: &'a Url) -> Cow<'a, str> {
        let url = &url[..url::Position::AfterQuery];
        if self.prefix.is_empty() {
            Cow::Borrowed(url)
        } else {
            Cow::Owned(format!("{}{url}", self.prefix))
        }
    }
}

/// The key of one variant of the URL stored under `key`.
pub(super) fn variant_key(key: &str, nonce: u64, vary: &VaryKey) -> String {
    let mut digest = Sha256::new();
    for (name, value) in vary.names().iter().zip(vary.values()) {
        digest.update(name.as_str().as_bytes());
        match value {
            // A tag byte keeps "absent" and "present and empty" apart, and the length
            // keeps one value from running into the next name.
            Some(value) => {
                digest.update([1]);
                digest.update(value.len().to_le_bytes());
                digest.update(value);
            }
            None => digest.update([0]),
        }
    }
    format!("{key} vary:{nonce:016x}:{}", hex(&digest.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn fragments_are_not_part_of_the_key_but_queries_are() {
        let keys = Keys::default();
        let a = Url::parse("http://example.com/a?x=1#top").unwrap();
        let b = Url::parse("http://example.com/a?x=1").unwrap();
        let c = Url::parse("http://example.com/a?x=2").unwrap();
        assert_eq!(keys.of_url(&a), keys.of_url(&b));
        assert_ne!(keys.of_url(&b), keys.of_url(&c));
        assert!(matches!(keys.of_url(&a), Cow::Borrowed(_)));
    }

    #[test]
    fn partitions_keep_keys_apart() {
        let url = Url::parse("http://example.com/a").unwrap();
        let alice = Keys::partitioned(Some("alice"));
        let bob = Keys::partitioned(Some("bob"));
        assert_ne!(alice.of_url(&url), bob.of_url(&url));
        assert_ne!(alice.of_url(&url), Keys::default().of_url(&url));
    }

    #[test]
    fn bodies_are_part_of_other_methods_keys() {
        let keys = Keys::default();
        let url = Url::parse("http://example.com/q").unwrap();
        let mut one = Request::new(Method::POST, url.clone());
        *one.body_mut() = Some(reqwest::Body::from("one"));
        let mut two = Request::new(Method::POST, url.clone());
        *two.body_mut() = Some(reqwest::Body::from("two"));
        assert_ne!(keys.of_request(&one), keys.of_request(&two));
        assert_eq!(
            keys.of_request(&Request::new(Method::HEAD, url.clone())),
            Some(keys.of_url(&url))
        );
    }

    #[test]
    fn absent_and_empty_vary_values_get_different_keys() {
        let names = vec![HeaderName::from_static("x-flag")];
        let absent = VaryKey::new(names.clone(), &HeaderMap::new());
        let mut headers = HeaderMap::new();
        headers.insert("x-flag", HeaderValue::from_static(""));
        let empty = VaryKey::new(names, &headers);
        assert_ne!(variant_key("k", 1, &absent), variant_key("k", 1, &empty));
        assert_ne!(variant_key("k", 1, &absent), variant_key("k", 2, &absent));
    }
}
