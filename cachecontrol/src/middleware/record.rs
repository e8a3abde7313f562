//! Recording a response body into the store while it streams to the caller.
//!
//! The caller reads the origin's body as it arrives; each chunk is also sent, shared
//! and not copied, over a bounded channel to a task that writes it to the store. The
//! channel gives back-pressure: a store slower than the network slows the caller down
//! rather than piling chunks up in memory, but only up to the store timeout: a store
//! that stalls longer is left behind, and the response is simply not stored.
//!
//! The store commits the entry only when the body ended normally and its length is the
//! one announced. The end is recognized with the last chunk (its length reaches the
//! Content-Length, or the origin's body says it has ended), because a consumer that
//! knows the length, hyper forwarding the body for example, stops reading right there.
//! An error, a wrong length, or the caller dropping the body early closes the channel
//! without the end marker, and the store discards what it had.
//!
//! A caller that does read to the end gets the end only once the store has committed
//! (or the store timeout has passed), so that a request made right after reading a
//! response finds it in the cache: read-your-writes, within a bounded wait. Unless
//! the request asked otherwise ([`StoreInBackground`](crate::StoreInBackground)): then
//! the end comes with the origin's, and the response's
//! [`Recording`](crate::Recording) tells when the store is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Shared;
use futures_util::stream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_util::sync::PollSender;

use super::coalesce::FlightGuard;
use crate::store::{BodyStream, StoreError};

/// How many chunks may wait for the store.
pub(crate) const CHANNEL_CAPACITY: usize = 16;

/// A message from the recording body to the store task.
pub(crate) enum Chunk {
    /// A piece of the body; `last` when it completes the body.
    Data { bytes: Bytes, last: bool },
    /// The body ended normally, with the right length, after the last piece sent.
    End,
}

/// The response body the caller gets: the origin's, recorded on its way.
pub(crate) struct RecordingBody {
    inner: reqwest::Body,
    sink: Option<PollSender<Chunk>>,
    expected_len: Option<u64>,
    received: u64,
    /// The store was told the body is complete.
    ended: bool,
    /// The origin's body has returned its end.
    finished: bool,
    /// Resolves when the store task is done with the entry; `None` when the caller
    /// does not wait for it ([`StoreInBackground`](crate::StoreInBackground)).
    stored: Option<Shared<oneshot::Receiver<bool>>>,
    /// The store timeout: the longest wait for room in the channel or for the commit.
    patience: Duration,
    /// Armed while waiting for the store.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl RecordingBody {
    pub(crate) fn new(
        inner: reqwest::Body,
        sender: mpsc::Sender<Chunk>,
        stored: Option<Shared<oneshot::Receiver<bool>>>,
        expected_len: Option<u64>,
        patience: Duration,
    ) -> Self {
        let mut body = RecordingBody {
            inner,
            sink: None,
            expected_len,
            received: 0,
            ended: false,
            finished: false,
            stored,
            patience,
            deadline: None,
        };
        // An empty body may never be polled at all (hyper does not poll a body that
        // says it has ended): it is complete from the start.
        if body.inner.is_end_stream() && expected_len.is_none_or(|len| len == 0) {
            body.ended = sender.try_send(Chunk::End).is_ok();
        } else {
            body.sink = Some(PollSender::new(sender));
        }
        body
    }

    /// Waits for the store task, at most `patience`.
    fn poll_stored(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(stored) = &mut self.stored {
            let patience = self.patience;
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
            if Pin::new(stored).poll(cx).is_pending() && deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.stored = None;
            self.deadline = None;
        }
        Poll::Ready(())
    }

    /// Waits for room in the channel, at most `patience`; a store that does not keep
    /// up is left behind.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sink) = &mut self.sink else {
            return Poll::Ready(());
        };
        match sink.poll_reserve(cx) {
            Poll::Ready(Ok(())) => self.deadline = None,
            // The store task gave up (store error, or the body is too large for it).
            Poll::Ready(Err(_)) => self.abandon(),
            Poll::Pending => {
                let patience = self.patience;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                tracing::warn!(
                    ?patience,
                    "cache store too slow; this response is not stored"
                );
                self.abandon();
            }
        }
        Poll::Ready(())
    }

    /// Stops recording: the store task sees the channel close without the end.
    fn abandon(&mut self) {
        self.sink = None;
        self.deadline = None;
    }

    fn record(&mut self, data: &Bytes) {
        self.received += data.len() as u64;
        if self.expected_len.is_some_and(|len| self.received > len) {
            self.abandon();
            return;
        }
        let last = self.expected_len == Some(self.received) || self.inner.is_end_stream();
        let Some(sink) = &mut self.sink else { return };
        let chunk = Chunk::Data {
            bytes: data.clone(),
            last,
        };
        if sink.send_item(chunk).is_err() {
            self.abandon();
        } else if last {
            self.ended = true;
            self.sink = None;
        }
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
        if this.finished {
            ready!(this.poll_stored(cx));
            return Poll::Ready(None);
        }
        // Room for what comes next is reserved before taking it from the origin, so
        // that a chunk is never taken without a place to put it.
        ready!(this.poll_room(cx));
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.record(data);
                }
            }
            Some(Err(_)) => this.abandon(),
            None => {
                this.finished = true;
                let complete = this.expected_len.is_none_or(|len| len == this.received);
                if let Some(mut sink) = this.sink.take()
                    && complete
                {
                    // Room was reserved above; a failure means the store task is gone.
                    this.ended = sink.send_item(Chunk::End).is_ok();
                }
                if this.ended {
                    ready!(this.poll_stored(cx));
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

/// The store's side of the channel: chunks until the end (the last chunk, or the end
/// marker); an error if the channel closes before. Each chunk tells the followers of a
/// coalesced request that the leader's response is making progress.
pub(crate) fn receiver_stream(
    receiver: mpsc::Receiver<Chunk>,
    key: Arc<str>,
    flight: Option<Arc<FlightGuard>>,
) -> BodyStream {
    Box::pin(stream::unfold(Some(receiver), move |state| {
        let key = Arc::clone(&key);
        let flight = flight.clone();
        async move {
            let mut receiver = state?;
            match receiver.recv().await {
                Some(Chunk::Data { bytes, last }) => {
                    if let Some(flight) = &flight {
                        flight.progress();
                    }
                    Some((Ok(bytes), (!last).then_some(receiver)))
                }
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
