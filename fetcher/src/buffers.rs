//! A few fixed buffers that carry a download from the network to its writer thread.
//!
//! The network's chunks are copied into one of [`BUFFERS`] buffers of [`BUFFER`]
//! bytes as they arrive, and dropped at once; full buffers go to the writer, which
//! writes each one and hands it back. Handing the chunks themselves to the writer
//! would keep each one alive past the next read from the socket, so that the HTTP
//! client could never reuse its read buffer: every read would then land in memory
//! just allocated (and, once the allocator has given it back to the kernel, just
//! faulted in again), which costs more than this one copy of bytes still in the
//! processor's cache. And the writer writes whole buffers, in few large writes.

use tokio::sync::mpsc;

/// The size of a buffer.
pub(crate) const BUFFER: usize = 1 << 20;

/// How many buffers a download has: the most it holds in memory.
pub(crate) const BUFFERS: usize = 8;

/// The writer has stopped (its result says why).
#[derive(Debug)]
pub(crate) struct WriterGone;

/// The network's side: fills buffers and sends them to the writer.
pub(crate) struct Filler {
    current: Vec<u8>,
    made: usize,
    to_writer: mpsc::Sender<Vec<u8>>,
    returned: mpsc::Receiver<Vec<u8>>,
}

/// The writer's side: receives full buffers and hands them back.
pub(crate) struct Drain {
    from_filler: mpsc::Receiver<Vec<u8>>,
    back: mpsc::Sender<Vec<u8>>,
}

/// A filler and its drain.
pub(crate) fn pair() -> (Filler, Drain) {
    let (to_writer, from_filler) = mpsc::channel(BUFFERS);
    let (back, returned) = mpsc::channel(BUFFERS);
    (
        Filler {
            current: Vec::new(),
            made: 0,
            to_writer,
            returned,
        },
        Drain { from_filler, back },
    )
}

impl Filler {
    /// Copies `chunk` into the buffers, sending each one that fills up; waits for
    /// the writer when every buffer is in its hands.
    pub(crate) async fn push(&mut self, mut chunk: &[u8]) -> Result<(), WriterGone> {
        while !chunk.is_empty() {
            if self.current.capacity() == 0 {
                self.current = self.next_buffer().await?;
            }
            let take = (BUFFER - self.current.len()).min(chunk.len());
            let (now, rest) = chunk.split_at(take);
            self.current.extend_from_slice(now);
            chunk = rest;
            if self.current.len() == BUFFER {
                self.send().await?;
            }
        }
        Ok(())
    }

    /// Sends what is left; the writer sees the end once the filler is gone.
    pub(crate) async fn finish(mut self) -> Result<(), WriterGone> {
        self.send().await
    }

    async fn next_buffer(&mut self) -> Result<Vec<u8>, WriterGone> {
        if self.made < BUFFERS {
            self.made += 1;
            return Ok(Vec::with_capacity(BUFFER));
        }
        self.returned.recv().await.ok_or(WriterGone)
    }

    async fn send(&mut self) -> Result<(), WriterGone> {
        let full = std::mem::take(&mut self.current);
        if full.is_empty() {
            // Not sent: kept for the next bytes, if any come.
            self.current = full;
            return Ok(());
        }
        self.to_writer.send(full).await.map_err(|_| WriterGone)
    }
}

impl Drain {
    /// The next full buffer, waiting (on a blocking thread) for it; `None` at the end.
    pub(crate) fn next_blocking(&mut self) -> Option<Vec<u8>> {
        self.from_filler.blocking_recv()
    }

    /// Hands a written buffer back to the filler.
    pub(crate) fn give_back(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        // There is room for every buffer; a filler that is gone needs none.
        let _ = self.back.try_send(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_in_whole_buffers_and_buffers_are_reused() {
        let (mut filler, mut drain) = pair();
        let writer = tokio::task::spawn_blocking(move || {
            let mut written = Vec::new();
            let mut sizes = Vec::new();
            let mut addresses = std::collections::HashSet::new();
            while let Some(buffer) = drain.next_blocking() {
                written.extend_from_slice(&buffer);
                sizes.push(buffer.len());
                addresses.insert(buffer.as_ptr() as usize);
                drain.give_back(buffer);
            }
            (written, sizes, addresses.len())
        });
        let body: Vec<u8> = (0..(20 * BUFFER + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        for chunk in body.chunks(70_001) {
            filler.push(chunk).await.unwrap();
        }
        filler.finish().await.unwrap();
        let (written, sizes, buffers) = writer.await.unwrap();
        assert!(written == body, "the bytes, in order");
        assert!(sizes[..sizes.len() - 1].iter().all(|&size| size == BUFFER));
        assert_eq!(sizes.last(), Some(&12_345));
        assert!(buffers <= BUFFERS, "{buffers} buffers used");
    }

    #[tokio::test]
    async fn a_writer_that_stops_stops_the_filler() {
        let (mut filler, drain) = pair();
        drop(drain);
        let chunk = vec![0; BUFFER];
        assert!(filler.push(&chunk).await.is_err());
    }
}
