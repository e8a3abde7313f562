//! Cache keys.
//!
//! A GET response is stored under its URL without the fragment, which is never sent
//! (the query is part of it: RFC 9111 §4 keys on the whole target URI). HEAD reads the
//! GET entry. Other cacheable methods have the method and a digest of the request body
//! in the key, so that two POSTs with different bodies never share an entry; a body
//! that is a stream cannot be digested and is not cached.
//!
//! A response with Vary is stored under a variant key: the URL's key, the nonce of the
//! URL's variants marker, and a digest of the Vary'd request values.

use http::Method;
use reqwest::Request;
use sha2::{Digest, Sha256};
use url::Url;

use crate::policy::VaryKey;

/// The key of a request, or `None` when it cannot be cached.
pub(super) fn cache_key(request: &Request) -> Option<String> {
    let method = request.method();
    if method == Method::GET || method == Method::HEAD {
        return Some(url_key(request.url()));
    }
    let body = match request.body() {
        None => &[][..],
        Some(body) => body.as_bytes()?,
    };
    Some(format!(
        "{method} {} {}",
        url_key(request.url()),
        hex(&Sha256::digest(body))
    ))
}

/// The key of GET responses for a URL.
pub(super) fn url_key(url: &Url) -> String {
    url[..url::Position::AfterQuery].to_owned()
}

/// The key of one variant of the URL stored under `key`.
pub(super) fn variant_key(key: &str, nonce: u64, vary: &VaryKey) -> String {
    let mut digest = Sha256::new();
    for (name, value) in vary.names().iter().zip(vary.values()) {
        digest.update(name.as_str().as_bytes());
        match value {
            // A tag byte keeps "absent" and "present and empty" apart.
            Some(value) => {
                digest.update([1]);
                digest.update(value.len().to_le_bytes());
                digest.update(value.as_bytes());
            }
            None => digest.update([0]),
        }
    }
    format!("{key} vary:{nonce:016x}:{}", hex(&digest.finalize()))
}

/// A random number for variants markers.
pub(super) fn random_u64() -> u64 {
    crate::policy::random_u64()
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
        let a = Url::parse("http://example.com/a?x=1#top").unwrap();
        let b = Url::parse("http://example.com/a?x=1").unwrap();
        let c = Url::parse("http://example.com/a?x=2").unwrap();
        assert_eq!(url_key(&a), url_key(&b));
        assert_ne!(url_key(&b), url_key(&c));
    }

    #[test]
    fn bodies_are_part_of_other_methods_keys() {
        let url = Url::parse("http://example.com/q").unwrap();
        let mut one = Request::new(Method::POST, url.clone());
        *one.body_mut() = Some(reqwest::Body::from("one"));
        let mut two = Request::new(Method::POST, url.clone());
        *two.body_mut() = Some(reqwest::Body::from("two"));
        assert_ne!(cache_key(&one), cache_key(&two));
        assert_eq!(
            cache_key(&Request::new(Method::HEAD, url.clone())),
            Some(url_key(&url))
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
