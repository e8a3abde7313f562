//! Recording a response body into the store while it streams to the caller.
//!
//! The caller reads the origin's body as it arrives; each chunk is also sent, shared
//! and not copied, over a bounded channel to a task that writes it to the store. The
//! channel gives back-pressure: a store slower than the network slows the caller down
//! rather than piling chunks up in memory. The store commits the entry only when the
//! body ended normally and its length is the one announced; an error, a wrong length,
//! or the caller dropping the body closes the channel without the end marker, and the
//! store discards what it had.
//!
//! The end of the body reaches the caller only once the store has committed (or
//! given up), so that a request made right after reading a response finds it in the
//! cache: read-your-writes, within a bounded wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::store::{BodyStream, StoreError};

/// How many chunks may wait for the store.
pub(crate) const CHANNEL_CAPACITY: usize = 16;

/// How long the end of a body waits for the store to commit it.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// A message from the recording body to the store task.
pub(crate) enum Chunk {
    Data(Bytes),
    /// The body ended normally, with the right length.
    End,
}

/// The response body the caller gets: the origin's, recorded on its way.
pub(crate) struct RecordingBody {
    inner: reqwest::Body,
    sink: Option<PollSender<Chunk>>,
    expected_len: Option<u64>,
    received: u64,
    /// Resolves when the store task is done with the entry.
    stored: Option<oneshot::Receiver<()>>,
    /// Set once the origin's body has ended and the end marker was sent.
    commit_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RecordingBody {
    pub(crate) fn new(
        inner: reqwest::Body,
        sender: mpsc::Sender<Chunk>,
        stored: oneshot::Receiver<()>,
        expected_len: Option<u64>,
    ) -> Self {
        RecordingBody {
            inner,
            sink: Some(PollSender::new(sender)),
            expected_len,
            received: 0,
            stored: Some(stored),
            commit_wait: None,
        }
    }

    /// After the end marker: waits for the store task, at most [`COMMIT_WAIT`].
    fn poll_committed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(stored) = &mut self.stored {
            let timed_out = self
                .commit_wait
                .as_mut()
                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
            if !timed_out && Pin::new(stored).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.stored = None;
        }
        Poll::Ready(())
    }
}

impl HttpBody for RecordingBody {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.commit_wait.is_some() {
            ready!(this.poll_committed(cx));
            return Poll::Ready(None);
        }
        // Reserve room for what comes next before taking it from the origin, so that
        // a chunk is never taken without a place to put it.
        if let Some(sink) = &mut this.sink
            && ready!(sink.poll_reserve(cx)).is_err()
        {
            // The store task gave up (store error, or the body is too large for it).
            this.sink = None;
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let too_long = this.expected_len.is_some_and(|len| this.received > len);
                    match &mut this.sink {
                        Some(sink) if !too_long => {
                            if sink.send_item(Chunk::Data(data.clone())).is_err() {
                                this.sink = None;
                            }
                        }
                        _ => this.sink = None,
                    }
                }
            }
            Some(Err(_)) => this.sink = None,
            None => {
                let complete = this.expected_len.is_none_or(|len| len == this.received);
                // Room was reserved above; a failure means the store task is gone.
                let ended = this
                    .sink
                    .take()
                    .is_some_and(|mut sink| complete && sink.send_item(Chunk::End).is_ok());
                if ended {
                    this.commit_wait = Some(Box::pin(tokio::time::sleep(COMMIT_WAIT)));
                    ready!(this.poll_committed(cx));
                } else {
                    this.stored = None;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The store's side of the channel: chunks until the end marker; an error if the
/// channel closes without it.
pub(crate) fn receiver_stream(receiver: mpsc::Receiver<Chunk>, key: Arc<str>) -> BodyStream {
    Box::pin(stream::unfold(Some(receiver), move |state| {
        let key = Arc::clone(&key);
        async move {
            let mut receiver = state?;
            match receiver.recv().await {
                Some(Chunk::Data(bytes)) => Some((Ok(bytes), Some(receiver))),
                Some(Chunk::End) => None,
                None => Some((
                    Err(StoreError::Incomplete {
                        key: key.to_string(),
                    }),
                    None,
                )),
            }
        }
    }))
}
