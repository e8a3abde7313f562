//! The stored form of an entry's metadata: versioned and checked.
//!
//! Stores that keep entries outside the process (files, Redis) write the metadata
//! with [`encode`] and read it back with [`decode`]. The layout:
//!
//! ```text
//! "CCm" | version: u8 | kind: u8 | payload | checksum: 8 bytes
//! ```
//!
//! The checksum is the start of the SHA-256 of everything before it. An entry that is
//! too short, of another version, whose checksum does not match, or whose payload does
//! not read back as a valid policy (a header that is not a header, a length past the
//! end, bytes left over) is a [`FormatError`]: a store treats it as a miss and removes
//! it. Nothing here panics on any input.
//!
//! Decoding costs a few allocations (one per header); stores keep decoded policies in
//! memory ([`DecodedCache`]) so that a hit decodes nothing as long as the stored
//! metadata has not changed.

use std::num::NonZeroUsize;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{Meta, Variants};
use crate::policy::CachePolicy;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

const MAGIC: &[u8; 3] = b"CCm";
const KIND_RESPONSE: u8 = 1;
const KIND_VARIANTS: u8 = 2;
const CHECKSUM_LEN: usize = 8;
/// No field of a valid entry is anywhere near this long; a length beyond it is
/// garbage, not a reason to allocate.
const MAX_FIELD: usize = 16 << 20;

/// Why stored metadata could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Not an entry of this format at all.
    #[error("not cache metadata (bad magic or too short)")]
    NotMetadata,
    /// Written by another version.
    #[error("cache metadata of version {0}, this build reads version {VERSION}")]
    Version(u8),
    /// The checksum does not match: the bytes were damaged or cut.
    #[error("cache metadata fails its checksum")]
    Checksum,
    /// The payload does not read back as valid metadata.
    #[error("cache metadata is malformed: {0}")]
    Malformed(&'static str),
}

/// The bytes that stand for `meta`.
pub fn encode(meta: &Meta) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.bytes.extend_from_slice(MAGIC);
    writer.u8(VERSION);
    match meta {
        Meta::Response(policy) => {
            writer.u8(KIND_RESPONSE);
            policy.encode(&mut writer);
        }
        Meta::Variants(variants) => {
            writer.u8(KIND_VARIANTS);
            writer.len(variants.names.len());
            for name in &variants.names {
                writer.blob(name.as_str().as_bytes());
            }
            writer.u64(variants.nonce);
        }
    }
    let checksum = Sha256::digest(&writer.bytes);
    writer.bytes.extend_from_slice(&checksum[..CHECKSUM_LEN]);
    writer.bytes
}

/// The metadata `bytes` stand for.
pub fn decode(bytes: &[u8]) -> Result<Meta, FormatError> {
    if bytes.len() < MAGIC.len() + 2 + CHECKSUM_LEN || !bytes.starts_with(MAGIC) {
        return Err(FormatError::NotMetadata);
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if Sha256::digest(content)[..CHECKSUM_LEN] != *checksum {
        return Err(FormatError::Checksum);
    }
    let mut reader = Reader {
        bytes: &content[MAGIC.len() + 1..],
    };
    let meta = match reader.u8()? {
        KIND_RESPONSE => Meta::Response(Arc::new(CachePolicy::decode(&mut reader)?)),
        KIND_VARIANTS => {
            let count = reader.len()?;
            let mut names = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                names.push(reader.header_name()?);
            }
            let nonce = reader.u64()?;
            Meta::Variants(Arc::new(Variants { names, nonce }))
        }
        _ => return Err(FormatError::Malformed("unknown entry kind")),
    };
    if !reader.bytes.is_empty() {
        return Err(FormatError::Malformed("bytes left over"));
    }
    Ok(meta)
}

/// Decoded metadata kept in memory by a store, keyed by the store key and a
/// fingerprint of the stored bytes (a digest, a file's identity, a generation): a hit
/// whose metadata has not changed since it was last read decodes nothing.
#[derive(Debug)]
pub struct DecodedCache {
    entries: Mutex<LruCache<String, (u64, Meta)>>,
}

impl DecodedCache {
    /// Keeps at most `capacity` decoded entries.
    pub fn new(capacity: usize) -> DecodedCache {
        DecodedCache {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The metadata of `key` whose stored form has `fingerprint`, decoding `bytes`
    /// only when it is not known yet.
    pub fn get_or_decode(
        &self,
        key: &str,
        fingerprint: u64,
        bytes: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<Option<Meta>, FormatError> {
        if let Some((known, meta)) = self.entries.lock().get(key)
            && *known == fingerprint
        {
            return Ok(Some(meta.clone()));
        }
        let Some(bytes) = bytes() else {
            return Ok(None);
        };
        let meta = decode(&bytes)?;
        self.remember(key, fingerprint, meta.clone());
        Ok(Some(meta))
    }

    /// Remembers metadata just written, so that the next read need not decode it.
    pub fn remember(&self, key: &str, fingerprint: u64, meta: Meta) {
        self.entries.lock().put(key.to_owned(), (fingerprint, meta));
    }

    /// Forgets `key`.
    pub fn forget(&self, key: &str) {
        self.entries.lock().pop(key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// A fingerprint of stored bytes, for [`DecodedCache`].
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Appends the fields of a policy.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub(crate) fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn len(&mut self, len: usize) {
        self.bytes.extend_from_slice(&(len as u32).to_le_bytes());
    }

    pub(crate) fn blob(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.bytes.extend_from_slice(bytes);
    }

    pub(crate) fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
        }
    }
}

/// Reads the fields of a policy, checking every length and value.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.bytes.len() {
            return Err(FormatError::Malformed("a field runs past the end"));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn bool(&mut self) -> Result<bool, FormatError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FormatError::Malformed("a flag that is neither 0 nor 1")),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        let mut value = [0u8; 8];
        value.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(value))
    }

    pub(crate) fn len(&mut self) -> Result<usize, FormatError> {
        let mut value = [0u8; 4];
        value.copy_from_slice(self.take(4)?);
        let len = u32::from_le_bytes(value) as usize;
        if len > MAX_FIELD {
            return Err(FormatError::Malformed("an impossible length"));
        }
        Ok(len)
    }

    pub(crate) fn blob(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.len()?;
        self.take(len)
    }

    pub(crate) fn header_name(&mut self) -> Result<HeaderName, FormatError> {
        HeaderName::from_bytes(self.blob()?).map_err(|_| FormatError::Malformed("a header name"))
    }

    pub(crate) fn header_value(&mut self) -> Result<HeaderValue, FormatError> {
        HeaderValue::from_bytes(self.blob()?).map_err(|_| FormatError::Malformed("a header value"))
    }

    pub(crate) fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(FormatError::Malformed(
                "an option tag that is neither 0 nor 1",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Exchange, PolicyOptions};
    use http::{HeaderMap, Method, StatusCode};
    use proptest::prelude::*;

    fn stored_policy() -> CachePolicy {
        let mut response = HeaderMap::new();
        for (name, value) in [
            (
                "cache-control",
                "max-age=60, stale-if-error=30, no-cache=\"x-a\"",
            ),
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("vary", "accept-language"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-type", "text/plain"),
        ] {
            response.append(name, HeaderValue::from_static(value));
        }
        let mut request = HeaderMap::new();
        request.insert("authorization", HeaderValue::from_static("Bearer x"));
        request.insert(
            "accept-language",
            HeaderValue::from_bytes(b"en\xff").unwrap(),
        );
        let exchange = Exchange {
            method: &Method::GET,
            request_headers: &request,
            status: StatusCode::OK,
            response_headers: &response,
            request_time: 1_000,
            response_time: 1_002,
        };
        CachePolicy::new(&exchange, &PolicyOptions::default()).unwrap()
    }

    #[test]
    fn a_policy_reads_back_as_it_was_written() {
        let policy = stored_policy();
        let bytes = encode(&Meta::Response(Arc::new(policy.clone())));
        let Ok(Meta::Response(read)) = decode(&bytes) else {
            panic!("not read back");
        };
        assert_eq!(format!("{policy:?}"), format!("{read:?}"));
    }

    #[test]
    fn a_variants_marker_reads_back() {
        let variants = Variants {
            names: vec![
                HeaderName::from_static("accept"),
                HeaderName::from_static("x-b"),
            ],
            nonce: 42,
        };
        let bytes = encode(&Meta::Variants(Arc::new(variants.clone())));
        let Ok(Meta::Variants(read)) = decode(&bytes) else {
            panic!("not read back");
        };
        assert_eq!(*read, variants);
    }

    #[test]
    fn damaged_or_foreign_bytes_are_errors() {
        let bytes = encode(&Meta::Response(Arc::new(stored_policy())));
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), FormatError::Checksum);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            FormatError::Checksum
        );
        let mut other_version = bytes.clone();
        other_version[3] = VERSION + 1;
        assert_eq!(
            decode(&other_version).unwrap_err(),
            FormatError::Version(VERSION + 1)
        );
        assert_eq!(decode(b"garbage").unwrap_err(), FormatError::NotMetadata);
        assert_eq!(decode(b"").unwrap_err(), FormatError::NotMetadata);
    }

    #[test]
    fn decoded_cache_decodes_once_per_fingerprint() {
        let cache = DecodedCache::new(8);
        let bytes = encode(&Meta::Response(Arc::new(stored_policy())));
        let mut reads = 0;
        for _ in 0..3 {
            cache
                .get_or_decode("k", fingerprint(&bytes), || {
                    reads += 1;
                    Some(bytes.clone())
                })
                .unwrap();
        }
        assert_eq!(reads, 1);
        cache
            .get_or_decode("k", 7, || {
                reads += 1;
                Some(bytes.clone())
            })
            .unwrap();
        assert_eq!(reads, 2, "another fingerprint is read again");
    }

    proptest! {
        #[test]
        fn no_bytes_make_decoding_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn no_valid_checksum_over_garbage_makes_decoding_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Well-formed envelope, arbitrary payload: every field check is exercised.
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&payload);
            let checksum = Sha256::digest(&bytes);
            bytes.extend_from_slice(&checksum[..CHECKSUM_LEN]);
            let _ = decode(&bytes);
        }
    }
}
