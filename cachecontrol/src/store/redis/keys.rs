//! Where an entry's values live in Redis.
//!
//! ```text
//! <prefix>{<h>}:meta                     the record: metadata and which body it points to
//! <prefix>{<h>}:body:<generation>:<i>    chunk i of the body that write <generation> stored
//! ```
//!
//! `<h>` is the first half of the SHA-256 of the cache key, in hex. Between braces it
//! is the key's hash tag: Redis Cluster places every key of one entry in one slot, so
//! that scripts and pipelines over them run on one node.

use sha2::{Digest, Sha256};

use crate::store::StoreError;

/// The keys of a store, under its prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// The keys of one entry.
#[derive(Debug, Clone)]
pub(super) struct EntryKeys {
    /// `<prefix>{<h>}`
    base: String,
}

impl Keys {
    /// Keys under `prefix`, which must not contain braces: they would make a hash
    /// tag of their own and put every key of the store in one cluster slot.
    pub(super) fn new(prefix: &str) -> Result<Keys, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Backend(format!(
                "the Redis key prefix {prefix:?} contains a brace; braces would make a hash tag \
                 and put the whole cache in one cluster slot"
            )));
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of the entry stored under `key`.
    pub(super) fn entry(&self, key: &str) -> EntryKeys {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key.as_bytes());
        let mut base = String::with_capacity(self.prefix.len() + 34 + META_SUFFIX.len());
        base.push_str(&self.prefix);
        base.push('{');
        // By hand: on every operation, and `write!` costs more than the digest.
        for byte in &digest[..16] {
            base.push(char::from(HEX[usize::from(byte >> 4)]));
            base.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        base.push('}');
        EntryKeys { base }
    }

    /// The keys of an entry, from its metadata key (as SCAN lists it).
    pub(super) fn entry_of_meta_key(&self, meta_key: &str) -> Option<EntryKeys> {
        let base = meta_key.strip_suffix(META_SUFFIX)?;
        base.starts_with(&self.prefix).then(|| EntryKeys {
            base: base.to_owned(),
        })
    }

    /// A SCAN pattern for the metadata keys of the store.
    pub(super) fn meta_pattern(&self) -> String {
        format!("{}{{*}}{META_SUFFIX}", glob_escape(&self.prefix))
    }

    /// A SCAN pattern for every key under the prefix.
    pub(super) fn everything_pattern(&self) -> String {
        format!("{}*", glob_escape(&self.prefix))
    }
}

const META_SUFFIX: &str = ":meta";

impl EntryKeys {
    /// The key of the record.
    pub(super) fn meta(&self) -> String {
        [self.base.as_str(), META_SUFFIX].concat()
    }

    /// The key of chunk `index` of the body that write `generation` stored.
    pub(super) fn chunk(&self, generation: u64, index: u64) -> String {
        format!("{}:body:{generation:016x}:{index}", self.base)
    }

    /// The keys of `count` chunks of generation `generation`.
    pub(super) fn chunks(&self, generation: u64, count: u64) -> impl Iterator<Item = String> + '_ {
        (0..count).map(move |index| self.chunk(generation, index))
    }
}

/// `text` as a glob pattern that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_an_entry_has_the_same_hash_tag() {
        let keys = Keys::new("cc:").unwrap();
        let entry = keys.entry("http://a/x");
        let meta = entry.meta();
        assert!(
            meta.starts_with("cc:{") && meta.ends_with("}:meta"),
            "{meta}"
        );
        let tag = &meta[3..meta.find('}').unwrap() + 1];
        assert_eq!(tag.len(), 34);
        let chunk = entry.chunk(0xab, 2);
        assert_eq!(chunk, format!("cc:{tag}:body:00000000000000ab:2"));
        assert_ne!(keys.entry("http://a/y").meta(), meta);
        assert_eq!(keys.entry_of_meta_key(&meta).unwrap().meta(), meta);
        assert!(keys.entry_of_meta_key("other:{x}:meta").is_none());
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        assert!(Keys::new("a{b}:").is_err());
        assert!(Keys::new("cachecontrol:").is_ok());
    }

    #[test]
    fn patterns_escape_the_prefix() {
        let keys = Keys::new("a*b?[c]\\:").unwrap();
        assert_eq!(keys.everything_pattern(), "a\\*b\\?\\[c\\]\\\\:*");
        assert_eq!(keys.meta_pattern(), "a\\*b\\?\\[c\\]\\\\:{*}:meta");
    }
}
