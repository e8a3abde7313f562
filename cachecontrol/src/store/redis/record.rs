//! What the store writes: the record under an entry's metadata key (which body it
//! points to, or the body itself when it is small, and the metadata), and the header
//! of each body chunk.
//!
//! ```text
//! "CCr" | version: u8 | generation: u64 | body_id: u64 | body_len: u64 | chunk_size: u32
//!       | stored_at: u64 | kind: u8 | key_len: u32 | key | format::encode(meta)
//!       | the body, when it is inline
//! ```
//!
//! Integers are little-endian. The first [`GUARD_LEN`] bytes (magic, version,
//! generation, body id) identify one write of one response: the Lua scripts that
//! update or remove an entry compare them with what the client read, so that they
//! never touch an entry that was replaced in between. The fields after them let a
//! listing describe an entry without decoding its metadata. The metadata carries its
//! own checksum ([`format`](mod@crate::store::format)); the fields here are checked for
//! consistency, and a reader checks every chunk's length against them.
//!
//! A body of at most [`INLINE_MAX`] bytes, shorter than a chunk, is *inline*: its
//! bytes end the record (`chunk_size` is then 0, and there are no chunks), so that a
//! hit on it is one plain `GET`. Version 1 records had no inline bodies; this build
//! writes version 2 and reads a record of any other version as a miss.

use crate::store::Meta;
use crate::store::format;

const MAGIC: &[u8; 3] = b"CCr";
const VERSION: u8 = 2;
const KIND_RESPONSE: u8 = 1;
const KIND_VARIANTS: u8 = 2;
/// The bytes that name one write of one entry: magic, version, generation, body id.
pub(super) const GUARD_LEN: usize = 20;
const HEADER_LEN: usize = 45;
/// Redis refuses larger values by default (`proto-max-bulk-len`).
pub(super) const MAX_CHUNK: u32 = 512 << 20;
/// The most chunks a record may name: 16 Mi (16 TiB in 1 MiB chunks). A garbage
/// value that names more is not a record, rather than a list of keys that fills
/// memory when its chunks are deleted.
pub(super) const MAX_CHUNKS: u64 = 1 << 24;
/// The largest body kept inline in its record (when it is also shorter than a chunk):
/// small enough that listings, which read records by the page, stay small.
pub(super) const INLINE_MAX: usize = 64 << 10;

/// Why a stored value is not a record of this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a cache record: {0}")]
pub(super) struct NotARecord(pub(super) &'static str);

/// What kind of entry a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A stored response.
    Response,
    /// A variants marker.
    Variants,
}

/// A record, read in place from the stored bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    /// The write this body belongs to: its chunks' keys carry it.
    pub(super) generation: u64,
    /// The policy's body id (0 for a variants marker).
    pub(super) body_id: u64,
    /// The body's length in bytes.
    pub(super) body_len: u64,
    /// The length of every chunk but the last; 0 when the body is inline.
    pub(super) chunk_size: u32,
    /// When the response was received (0 for a variants marker).
    pub(super) stored_at: u64,
    /// What the entry is.
    pub(super) kind: Kind,
    /// The cache key it was stored under.
    pub(super) key: &'a str,
    /// The metadata, as [`format::encode`] wrote it.
    pub(super) meta: &'a [u8],
    /// The whole record.
    pub(super) bytes: &'a [u8],
}

/// The body a record points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BodyShape {
    /// Its generation.
    pub(super) generation: u64,
    /// Its length.
    pub(super) len: u64,
    /// The length of every chunk but the last; 0 when the body is inline.
    pub(super) chunk_size: u32,
}

impl BodyShape {
    /// How many chunks hold the body (none when it is empty or inline).
    pub(super) fn chunk_count(&self) -> u64 {
        if self.len == 0 || self.chunk_size == 0 {
            0
        } else {
            self.len.div_ceil(u64::from(self.chunk_size))
        }
    }

    /// Whether the body is in the record.
    pub(super) fn is_inline(&self) -> bool {
        self.len > 0 && self.chunk_size == 0
    }

    /// The length chunk `index` must have.
    pub(super) fn chunk_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(u64::from(self.chunk_size));
        self.len
            .saturating_sub(start)
            .min(u64::from(self.chunk_size))
    }
}

impl<'a> Record<'a> {
    /// The bytes that name this write of this entry (see [`GUARD_LEN`]).
    pub(super) fn guard(&self) -> &'a [u8] {
        &self.bytes[..GUARD_LEN]
    }

    /// Where the inline body is in [`bytes`](Record::bytes) (empty when it is not
    /// inline).
    pub(super) fn inline_body(&self) -> std::ops::Range<usize> {
        let len = if self.body().is_inline() {
            self.body_len as usize
        } else {
            0
        };
        self.bytes.len() - len..self.bytes.len()
    }

    /// The record without its inline body: what identifies its version for
    /// [`DecodedCache`](crate::store::format::DecodedCache), whatever the body's size.
    pub(super) fn without_body(&self) -> &'a [u8] {
        &self.bytes[..self.inline_body().start]
    }

    /// The body it points to.
    pub(super) fn body(&self) -> BodyShape {
        BodyShape {
            generation: self.generation,
            len: self.body_len,
            chunk_size: self.chunk_size,
        }
    }

    /// Whether `meta`, decoded from this record, agrees with its fields.
    pub(super) fn agrees_with(&self, meta: &Meta) -> bool {
        match meta {
            Meta::Response(policy) => {
                self.kind == Kind::Response
                    && policy.body_id() == self.body_id
                    && policy.response_time() == self.stored_at
            }
            Meta::Variants(_) => self.kind == Kind::Variants,
        }
    }
}

/// A record [`encode`] made with the inline body `inline`, without that body: as
/// [`Record::without_body`] gives it when the record is read back.
pub(super) fn without_inline<'a>(encoded: &'a [u8], inline: &[u8]) -> &'a [u8] {
    &encoded[..encoded.len() - inline.len()]
}

/// The record of `meta` for `key`, whose body of `body` was written by the given
/// generation; `inline` is the body when it is inline (`body.chunk_size` is 0), and
/// empty otherwise.
pub(super) fn encode(key: &str, meta: &Meta, body: BodyShape, inline: &[u8]) -> Vec<u8> {
    debug_assert_eq!(
        inline.len() as u64,
        if body.is_inline() { body.len } else { 0 }
    );
    let encoded = format::encode(meta);
    let (kind, body_id, stored_at) = match meta {
        Meta::Response(policy) => (KIND_RESPONSE, policy.body_id(), policy.response_time()),
        Meta::Variants(_) => (KIND_VARIANTS, 0, 0),
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + key.len() + encoded.len() + inline.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(&body.generation.to_le_bytes());
    bytes.extend_from_slice(&body_id.to_le_bytes());
    bytes.extend_from_slice(&body.len.to_le_bytes());
    bytes.extend_from_slice(&body.chunk_size.to_le_bytes());
    bytes.extend_from_slice(&stored_at.to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&encoded);
    bytes.extend_from_slice(inline);
    bytes
}

/// Reads a record in place, checking that its fields hang together. The metadata is
/// not decoded here.
pub(super) fn parse(bytes: &[u8]) -> Result<Record<'_>, NotARecord> {
    if bytes.len() < HEADER_LEN || !bytes.starts_with(MAGIC) {
        return Err(NotARecord("too short, or no magic"));
    }
    if bytes[3] != VERSION {
        return Err(NotARecord("another version"));
    }
    let u64_at = |at: usize| {
        let mut field = [0u8; 8];
        field.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(field)
    };
    let u32_at = |at: usize| {
        let mut field = [0u8; 4];
        field.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(field)
    };
    let generation = u64_at(4);
    let body_id = u64_at(12);
    let body_len = u64_at(20);
    let chunk_size = u32_at(28);
    let stored_at = u64_at(32);
    let kind = match bytes[40] {
        KIND_RESPONSE => Kind::Response,
        KIND_VARIANTS => Kind::Variants,
        _ => return Err(NotARecord("unknown kind")),
    };
    let key_len = u32_at(41) as usize;
    if chunk_size > MAX_CHUNK {
        return Err(NotARecord("impossible chunk size"));
    }
    if chunk_size > 0 && body_len.div_ceil(u64::from(chunk_size)) > MAX_CHUNKS {
        return Err(NotARecord("impossible chunk count"));
    }
    let inline_len = match (body_len, chunk_size) {
        (1.., 0) if body_len <= INLINE_MAX as u64 => body_len as usize,
        (1.., 0) => return Err(NotARecord("an inline body too large")),
        _ => 0,
    };
    let rest = &bytes[HEADER_LEN..];
    if key_len.saturating_add(inline_len) > rest.len() {
        return Err(NotARecord("the key or the body runs past the end"));
    }
    let (key, meta) = rest[..rest.len() - inline_len].split_at(key_len);
    let key = std::str::from_utf8(key).map_err(|_| NotARecord("the key is not UTF-8"))?;
    if meta.is_empty() {
        return Err(NotARecord("no metadata"));
    }
    Ok(Record {
        generation,
        body_id,
        body_len,
        chunk_size,
        stored_at,
        kind,
        key,
        meta,
        bytes,
    })
}

const CHUNK_MAGIC: &[u8; 3] = b"CCc";
/// The version of the chunk header, which did not change with the record's.
const CHUNK_VERSION: u8 = 1;
/// The length of the header that starts every chunk.
pub(super) const CHUNK_HEADER_LEN: usize = 20;

/// The header of chunk `index` of the body of write `generation`:
/// `"CCc" | version: u8 | generation: u64 | index: u64`. A value under a chunk key
/// that does not start with the header of that very place was not written there by
/// this store.
pub(super) fn chunk_header(generation: u64, index: u64) -> [u8; CHUNK_HEADER_LEN] {
    let mut header = [0u8; CHUNK_HEADER_LEN];
    header[..3].copy_from_slice(CHUNK_MAGIC);
    header[3] = CHUNK_VERSION;
    header[4..12].copy_from_slice(&generation.to_le_bytes());
    header[12..].copy_from_slice(&index.to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Variants;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn response() -> Meta {
        Meta::Response(super::super::tests::policy("max-age=60"))
    }

    const SHAPE: BodyShape = BodyShape {
        generation: 7,
        len: 2_500,
        chunk_size: 1_000,
    };

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let meta = response();
        let bytes = encode("http://a/x", &meta, SHAPE, &[]);
        let record = parse(&bytes).unwrap();
        assert_eq!(record.key, "http://a/x");
        assert_eq!(record.body(), SHAPE);
        assert_eq!(record.kind, Kind::Response);
        assert_eq!(record.stored_at, 1_000);
        assert!(record.agrees_with(&format::decode(record.meta).unwrap()));
        assert!(record.agrees_with(&meta));
        assert_eq!(record.guard(), &bytes[..GUARD_LEN]);
        assert!(record.inline_body().is_empty());
        assert_eq!(record.without_body(), &bytes[..]);
    }

    #[test]
    fn a_small_body_ends_its_record() {
        let meta = response();
        let shape = BodyShape {
            len: 5,
            chunk_size: 0,
            ..SHAPE
        };
        let bytes = encode("http://a/x", &meta, shape, b"hello");
        let record = parse(&bytes).unwrap();
        assert_eq!(record.body(), shape);
        assert!(shape.is_inline());
        assert_eq!(shape.chunk_count(), 0, "no chunk keys");
        assert_eq!(&bytes[record.inline_body()], b"hello");
        assert_eq!(record.without_body(), &bytes[..bytes.len() - 5]);
        assert!(record.agrees_with(&format::decode(record.meta).unwrap()));

        // A body longer than what follows the key, or than an inline body may be.
        let mut too_long = bytes.clone();
        too_long[20..28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        assert!(parse(&too_long).is_err());
        let mut too_large = bytes;
        too_large[20..28].copy_from_slice(&(INLINE_MAX as u64 + 1).to_le_bytes());
        assert!(parse(&too_large).is_err());
    }

    #[test]
    fn a_record_of_version_1_is_not_read() {
        // Version 1 had no inline bodies: whatever follows its metadata is not read
        // as one.
        let mut bytes = encode("k", &response(), SHAPE, &[]);
        bytes[3] = 1;
        assert_eq!(parse(&bytes).unwrap_err(), NotARecord("another version"));
    }

    #[test]
    fn a_marker_is_its_own_kind() {
        let marker = Meta::Variants(Arc::new(Variants {
            names: vec![],
            nonce: 3,
        }));
        let bytes = encode("k", &marker, BodyShape { len: 0, ..SHAPE }, &[]);
        let record = parse(&bytes).unwrap();
        assert_eq!(record.kind, Kind::Variants);
        assert!(record.agrees_with(&marker));
        assert!(!record.agrees_with(&response()));
    }

    #[test]
    fn chunks_cover_the_body_exactly() {
        assert_eq!(SHAPE.chunk_count(), 3);
        assert_eq!(
            (0..4).map(|i| SHAPE.chunk_len(i)).collect::<Vec<_>>(),
            [1_000, 1_000, 500, 0]
        );
        let exact = BodyShape {
            len: 2_000,
            ..SHAPE
        };
        assert_eq!(exact.chunk_count(), 2);
        assert_eq!(BodyShape { len: 0, ..SHAPE }.chunk_count(), 0);
    }

    #[test]
    fn a_chunk_header_names_its_write_and_place() {
        let header = chunk_header(0x0102, 3);
        assert!(header.starts_with(b"CCc\x01\x02\x01"));
        assert_ne!(header, chunk_header(0x0102, 4));
        assert_ne!(header, chunk_header(0x0103, 3));
    }

    #[test]
    fn garbage_is_not_a_record() {
        let bytes = encode("k", &response(), SHAPE, &[]);
        assert!(parse(b"hello").is_err());
        assert!(parse(&bytes[..HEADER_LEN]).is_err(), "no metadata");
        let mut other_version = bytes.clone();
        other_version[3] = VERSION + 1;
        assert!(parse(&other_version).is_err());
        let mut zero_chunks = bytes.clone();
        zero_chunks[28..32].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse(&zero_chunks).is_err());
        let mut too_many_chunks = bytes.clone();
        too_many_chunks[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        too_many_chunks[28..32].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            parse(&too_many_chunks),
            Err(NotARecord("impossible chunk count"))
        ));
        let mut long_key = bytes;
        long_key[41..45].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&long_key).is_err());
    }

    proptest! {
        #[test]
        fn no_bytes_make_parsing_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn no_header_makes_parsing_or_chunking_panic(header in proptest::collection::vec(any::<u8>(), 42..=42), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = b"CCr".to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&header[..36]);
            bytes.push(1 + header[36] % 2);
            bytes.extend_from_slice(&[header[37] % 8, 0, 0, 0]);
            bytes.extend_from_slice(&tail);
            if let Ok(record) = parse(&bytes) {
                let body = record.body();
                let count = body.chunk_count();
                let _ = body.chunk_len(count.saturating_sub(1));
            }
        }
    }
}
