//! Bodies in chunks: written as they arrive, read as they are consumed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use redis::{RedisWrite, ToRedisArgs};
use std::io::Write;

use super::connection::{Session, failed, is_wrong_type};
use super::keys::EntryKeys;
use super::record::{BodyShape, CHUNK_HEADER_LEN, INLINE_MAX, chunk_header};
use super::{BATCH, PENDING_TTL, Shared};
use crate::store::{BodyStream, StoreError};

/// Writes a body's chunks under its generation's keys, one chunk at a time: memory
/// holds at most one chunk.
pub(super) struct ChunkWriter<'a> {
    session: &'a mut Session,
    keys: &'a EntryKeys,
    key: &'a str,
    generation: u64,
    chunk_size: usize,
    buffer: BytesMut,
    /// Chunks written so far.
    written: u64,
    len: u64,
}

impl<'a> ChunkWriter<'a> {
    pub(super) fn new(
        session: &'a mut Session,
        keys: &'a EntryKeys,
        key: &'a str,
        generation: u64,
        chunk_size: u32,
    ) -> Self {
        ChunkWriter {
            session,
            keys,
            key,
            generation,
            chunk_size: chunk_size as usize,
            buffer: BytesMut::new(),
            written: 0,
            len: 0,
        }
    }

    /// Takes the next piece of the body, writing every chunk it completes.
    pub(super) async fn push(&mut self, mut data: Bytes) -> Result<(), StoreError> {
        self.len += data.len() as u64;
        if !self.buffer.is_empty() {
            let take = (self.chunk_size - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data.split_to(take));
            if self.buffer.len() == self.chunk_size {
                let chunk = self.buffer.split().freeze();
                self.write(chunk).await?;
            }
        }
        // Whole chunks of a large piece are written from it, without a copy.
        while data.len() >= self.chunk_size {
            let chunk = data.split_to(self.chunk_size);
            self.write(chunk).await?;
        }
        if !data.is_empty() {
            if self.buffer.capacity() < self.chunk_size {
                self.buffer.reserve(self.chunk_size);
            }
            self.buffer.extend_from_slice(&data);
        }
        Ok(())
    }

    /// The body is complete: the shape of the body and, when it is small and was
    /// not written (it is shorter than a chunk), its bytes, to go inline in the record;
    /// otherwise what is left is written as the last chunk, and the bytes returned
    /// are empty.
    pub(super) async fn finish(&mut self) -> Result<(BodyShape, Bytes), StoreError> {
        let rest = self.buffer.split().freeze();
        let mut shape = BodyShape {
            generation: self.generation,
            len: self.len,
            chunk_size: self.chunk_size as u32,
        };
        if self.written == 0 && rest.len() <= INLINE_MAX {
            shape.chunk_size = 0;
            return Ok((shape, rest));
        }
        if !rest.is_empty() {
            self.write(rest).await?;
        }
        Ok((shape, Bytes::new()))
    }

    /// Removes the chunks written so far (best effort: they expire anyway).
    pub(super) async fn discard(&mut self) {
        let keys: Vec<String> = self.keys.chunks(self.generation, self.written).collect();
        if let Err(error) = delete_keys(self.session, &keys).await {
            tracing::debug!(key = self.key, %error, "could not remove the chunks of an abandoned write; they will expire");
        }
    }

    /// A chunk is written with a TTL that outlasts the write; the commit gives it the
    /// entry's.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let index = self.written;
        let mut set = redis::cmd("SET");
        set.arg(self.keys.chunk(self.generation, index))
            .arg(ChunkValue {
                header: chunk_header(self.generation, index),
                payload: &chunk,
            })
            .arg("PX")
            .arg(PENDING_TTL.as_millis() as u64);
        self.session
            .query::<()>(&set)
            .await
            .map_err(|error| failed(&format!("writing chunk {index} of {}", self.key), error))?;
        self.written += 1;
        Ok(())
    }
}

/// A chunk as stored: its header, then its bytes, written as one argument.
struct ChunkValue<'a> {
    header: [u8; CHUNK_HEADER_LEN],
    payload: &'a [u8],
}

impl ToRedisArgs for ChunkValue<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut arg = out.writer_for_next_arg();
        // Writing to the command's own buffer cannot fail.
        let _ = arg.write_all(&self.header);
        let _ = arg.write_all(self.payload);
    }
}

/// Deletes keys of one entry (one slot), in batches.
pub(super) async fn delete_keys(
    session: &mut Session,
    keys: &[String],
) -> Result<(), redis::RedisError> {
    for batch in keys.chunks(BATCH) {
        let mut del = redis::cmd("DEL");
        del.arg(batch);
        session.query::<()>(&del).await?;
    }
    Ok(())
}

/// What a reader needs to fetch the rest of a body.
pub(super) struct Reading {
    pub(super) key: String,
    pub(super) keys: EntryKeys,
    pub(super) shape: BodyShape,
    /// The record's guard, to remove the entry if a chunk turns out bad.
    pub(super) guard: Vec<u8>,
}

/// A chunk as read.
pub(super) enum Fetched {
    /// The chunk, of the length the record says.
    Chunk(Bytes),
    /// The chunk is missing or of the wrong length: why. The entry was removed if it
    /// had not changed since it was read.
    Broken(String),
}

/// The body as a stream: `first` (chunk 0, already read), then every other chunk
/// fetched as the stream is consumed, at most two ahead of it. A chunk that is missing or of the
/// wrong length ends the stream with an error (the entry was replaced, removed or
/// damaged while it was read); a body is never made of two writes.
pub(super) fn stream(shared: Arc<Shared>, reading: Reading, first: Bytes) -> BodyStream {
    let reading = Arc::new(reading);
    let rest = futures_util::stream::iter(1..reading.shape.chunk_count())
        .map(move |index| {
            let shared = Arc::clone(&shared);
            let reading = Arc::clone(&reading);
            async move {
                match fetch(&shared, &reading, index).await? {
                    Fetched::Chunk(chunk) => Ok(chunk),
                    Fetched::Broken(problem) => Err(StoreError::Backend(format!(
                        "Redis: chunk {index} of {}: {problem}",
                        reading.key
                    ))),
                }
            }
        })
        .buffered(2);
    let chunks = futures_util::stream::once(std::future::ready(Ok(first))).chain(rest);
    // The first error ends the stream.
    Box::pin(chunks.scan(false, |failed, chunk| {
        let item = (!*failed).then(|| {
            *failed = chunk.is_err();
            chunk
        });
        std::future::ready(item)
    }))
}

/// Chunk `index` of the body being read.
pub(super) async fn fetch(
    shared: &Shared,
    reading: &Reading,
    index: u64,
) -> Result<Fetched, StoreError> {
    let mut session = shared.link.session().await?;
    let mut get = redis::cmd("GET");
    get.arg(reading.keys.chunk(reading.shape.generation, index));
    let chunk: Option<Bytes> = match session.query(&get).await {
        Ok(chunk) => chunk,
        Err(error) if is_wrong_type(&error) => None,
        Err(error) => {
            return Err(failed(
                &format!("reading chunk {index} of {}", reading.key),
                error,
            ));
        }
    };
    check(shared, &mut session, reading, index, chunk).await
}

/// Checks chunk `index` as read (`None`: not there): its header names this write and
/// place, and its length is the record's. A bad chunk removes the entry if it has
/// not changed since it was read.
pub(super) async fn check(
    shared: &Shared,
    session: &mut Session,
    reading: &Reading,
    index: u64,
    chunk: Option<Bytes>,
) -> Result<Fetched, StoreError> {
    let expected = reading.shape.chunk_len(index);
    let header = chunk_header(reading.shape.generation, index);
    let problem = match chunk {
        Some(chunk) if !chunk.starts_with(&header) => {
            "it was not written there by this store (its header does not match)".to_owned()
        }
        Some(chunk) if (chunk.len() - CHUNK_HEADER_LEN) as u64 == expected => {
            return Ok(Fetched::Chunk(chunk.slice(CHUNK_HEADER_LEN..)));
        }
        Some(chunk) => format!(
            "it has {} bytes instead of {expected}",
            chunk.len() - CHUNK_HEADER_LEN
        ),
        None => {
            "it is gone (the entry was replaced, removed or expired while it was read)".to_owned()
        }
    };
    shared
        .remove_if_unchanged(
            session,
            &reading.key,
            &reading.keys,
            reading.shape,
            &reading.guard,
        )
        .await;
    Ok(Fetched::Broken(problem))
}
