//! Serving a byte range of a stored complete response (RFC 9110 §14).
//!
//! Only a single satisfiable range is served as a 206; for anything else (several
//! ranges, a range past the end, an unknown length) the whole stored response is
//! served, which RFC 9110 §14.2 allows ("a server MAY ignore the Range header").

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};
use reqwest::Response;
use url::Url;

use super::build_response;
use crate::store::Body;

/// The bytes a request's `Range` asks of a stored body, when they can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Satisfiable {
    first: u64,
    last: u64,
    length: u64,
}

/// Whether `range` is a single range that `body` can satisfy.
pub(super) fn satisfiable(
    range: &HeaderValue,
    headers: &HeaderMap,
    body: &Body,
) -> Option<Satisfiable> {
    let length = match body {
        Body::Bytes(bytes) => bytes.len() as u64,
        Body::File(file) => file.len(),
        // A streamed body was checked against its Content-Length when it was stored.
        Body::Stream(_) => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())?,
    };
    let (first, last) = single_range(range.as_bytes(), length)?;
    Some(Satisfiable {
        first,
        last,
        length,
    })
}

/// The 206 for a satisfiable range.
pub(super) fn partial_response(
    url: &Url,
    range: Satisfiable,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let Satisfiable {
        first,
        last,
        length,
    } = range;
    if let Ok(value) = HeaderValue::try_from(format!("bytes {first}-{last}/{length}")) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
    let body = match body {
        Body::Bytes(bytes) => reqwest::Body::from(bytes.slice(first as usize..=last as usize)),
        Body::Stream(stream) => reqwest::Body::wrap_stream(slice_stream(stream, first, last)),
        // A file is read from where the range starts, not from its beginning.
        Body::File(file) => reqwest::Body::wrap_stream(file.range_stream(first, last - first + 1)),
    };
    build_response(url, StatusCode::PARTIAL_CONTENT, headers, body)
}

/// The first and last byte of a single `bytes=` range, when satisfiable.
fn single_range(value: &[u8], length: u64) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (unit, spec) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') || length == 0 {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let suffix = number(last)?;
            (suffix > 0).then(|| (length - suffix.min(length), length - 1))
        }
        (false, _) => {
            let start = number(first)?;
            let end = if last.trim().is_empty() {
                length - 1
            } else {
                number(last)?.min(length - 1)
            };
            (start < length && start <= end).then_some((start, end))
        }
        (true, true) => None,
    }
}

/// The bytes `start..=end` of a streamed body.
fn slice_stream(
    stream: crate::store::BodyStream,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::store::StoreError>> + Send {
    stream
        .scan(0u64, move |offset, chunk| {
            if *offset > end {
                return std::future::ready(None);
            }
            let item = chunk.map(|bytes| {
                let chunk_start = *offset;
                let chunk_end = chunk_start + bytes.len() as u64; // exclusive
                *offset = chunk_end;
                let from = start.max(chunk_start);
                let to = (end + 1).min(chunk_end);
                (from < to).then(|| {
                    bytes.slice((from - chunk_start) as usize..(to - chunk_start) as usize)
                })
            });
            std::future::ready(Some(item.transpose()))
        })
        .filter_map(std::future::ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(single_range(b"bytes=0-1", 11), Some((0, 1)));
        assert_eq!(single_range(b"bytes=1-", 11), Some((1, 10)));
        assert_eq!(single_range(b"bytes=-1", 11), Some((10, 10)));
        assert_eq!(single_range(b"bytes=-100", 11), Some((0, 10)));
        assert_eq!(single_range(b"bytes=5-100", 11), Some((5, 10)));
        assert_eq!(single_range(b"bytes=11-", 11), None);
        assert_eq!(single_range(b"bytes=0-1,3-4", 11), None);
        assert_eq!(single_range(b"items=0-1", 11), None);
        assert_eq!(single_range(b"bytes=2-1", 11), None);
        assert_eq!(single_range(b"bytes=-0", 11), None);
    }

    #[tokio::test]
    async fn streamed_bodies_are_sliced_across_chunks() {
        let chunks: Vec<Result<Bytes, crate::store::StoreError>> = vec![
            Ok(Bytes::from_static(b"0123")),
            Ok(Bytes::from_static(b"4567")),
            Ok(Bytes::from_static(b"89")),
        ];
        let stream: crate::store::BodyStream = Box::pin(futures_util::stream::iter(chunks));
        let sliced: Vec<Bytes> = slice_stream(stream, 3, 8)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(sliced.concat(), b"345678");
    }
}
