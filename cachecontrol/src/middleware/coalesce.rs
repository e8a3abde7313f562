//! Coalescing concurrent misses: one request goes to the origin, the others wait.
//!
//! The first request that misses a key becomes its leader and gets a
//! [`FlightGuard`]. The guard travels with the response until the store has committed
//! (or discarded) the entry; dropping it wakes the followers, which then look in the
//! cache again and go on from what they find there, like any request. The guard is
//! dropped early when the leader's response will not answer the followers: not
//! storable, not fresh on arrival, or varying on request headers.
//!
//! Followers never wait for long without a reason: at most the configured wait in
//! all, and once the leader's response has started arriving, at most a few seconds
//! without progress (a leader whose caller holds the response without reading it
//! must not hold everyone else).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long followers wait for the leader's body to move before going themselves.
pub(crate) const STALL: Duration = Duration::from_secs(3);

type FlightMap = HashMap<String, (u64, watch::Receiver<u64>)>;

/// How many counters the stored responses are counted in.
const STORED_STRIPES: usize = 32;

/// The keys being fetched right now, and how many responses have been stored.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<FlightMap>>,
    next_id: AtomicU64,
    /// How many responses from the origin have been stored, counted by stripe
    /// of their key (so that stores of other keys rarely move a key's count).
    stored: [AtomicU64; STORED_STRIPES],
}

/// What a request is for a key: the one that fetches it, or one that waits; or
/// one that is to look in the store again first, since a response of its key's
/// stripe was stored after it looked.
pub(crate) enum Join {
    Leader(FlightGuard),
    Follower(Waiter),
    LookAgain,
}

/// How many responses had been stored under a key's stripe when a request looked
/// for it in the store ([`Flights::stamp`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    stripe: usize,
    stored: u64,
}

/// Held by the leader until its response is stored or given up on.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    map: Arc<Mutex<FlightMap>>,
    key: String,
    id: u64,
    /// Counts the leader's progress: its response head, then each body chunk.
    progress: watch::Sender<u64>,
}

/// A follower's wait for the leader.
pub(crate) struct Waiter(watch::Receiver<u64>);

impl Flights {
    /// Joins the flight of `key`, or leads a new one. With the [`Stamp`] taken
    /// before the request looked in the store: a request that finds no flight
    /// while a response of its key's stripe was stored since then may have missed
    /// this very entry (stored, its flight ended, between its lookup and now), and
    /// is told to look again rather than lead.
    pub(crate) fn join(&self, key: &str, looked: Option<Stamp>) -> Join {
        let mut map = self.map.lock();
        if let Some((_, receiver)) = map.get(key) {
            return Join::Follower(Waiter(receiver.clone()));
        }
        if looked
            .is_some_and(|stamp| self.stored[stamp.stripe].load(Ordering::Acquire) != stamp.stored)
        {
            return Join::LookAgain;
        }
        let (progress, receiver) = watch::channel(0);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.to_owned(), (id, receiver));
        Join::Leader(FlightGuard {
            map: Arc::clone(&self.map),
            key: key.to_owned(),
            id,
            progress,
        })
    }

    /// How many responses have been stored so far under keys of `key`'s stripe:
    /// taken before a lookup, for [`join`](Flights::join).
    pub(crate) fn stamp(&self, key: &str) -> Stamp {
        let stripe = stripe(key);
        Stamp {
            stripe,
            stored: self.stored[stripe].load(Ordering::Acquire),
        }
    }

    /// A response from the origin has been stored under `key` (before its
    /// leader's guard, if it has one, is dropped).
    pub(crate) fn note_stored(&self, key: &str) {
        self.stored[stripe(key)].fetch_add(1, Ordering::Release);
    }
}

/// The counter of [`Flights::stored`] that `key` is counted in. Taken on every
/// lookup, hits included, so it is cheap: the key eight bytes at a time, each word
/// mixed in with a multiply (two keys in one stripe only cost a second lookup, now
/// and then).
fn stripe(key: &str) -> usize {
    let bytes = key.as_bytes();
    let mut words = bytes.chunks_exact(8);
    let mix = |hash: u64, word: u64| {
        (hash ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
    };
    let mut hash = words.by_ref().fold(bytes.len() as u64, |hash, word| {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        mix(hash, u64::from_le_bytes(eight))
    });
    let mut rest = [0u8; 8];
    rest[..words.remainder().len()].copy_from_slice(words.remainder());
    hash = mix(hash, u64::from_le_bytes(rest)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // From the best mixed (high) bits; the remainder is below STORED_STRIPES: it fits.
    ((hash >> 32) % STORED_STRIPES as u64) as usize
}

impl FlightGuard {
    /// Tells the followers that the leader's response is arriving.
    pub(crate) fn progress(&self) {
        self.progress.send_modify(|n| *n += 1);
    }
}

impl Waiter {
    /// Waits until the leader is done, `limit` has passed, or the leader's response,
    /// once started, has made no progress for [`STALL`].
    pub(crate) async fn wait(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let started = *self.0.borrow_and_update() > 0;
            let until = if started {
                deadline.min(Instant::now() + STALL)
            } else {
                deadline
            };
            match tokio::time::timeout_at(until, self.0.changed()).await {
                // Progress: wait on.
                Ok(Ok(())) => {}
                // The leader's guard is gone, or the wait is over.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_looked_before_a_store_of_its_stripe_looks_again() {
        let flights = Flights::default();
        let looked = flights.stamp("k");
        assert!(matches!(flights.join("k", Some(looked)), Join::Leader(_)));
        let looked = flights.stamp("k");
        flights.note_stored("k");
        assert!(matches!(flights.join("k", Some(looked)), Join::LookAgain));
        assert!(matches!(flights.join("k", None), Join::Leader(_)));
    }

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k", None) else {
            panic!("the first request must lead");
        };
        let Join::Follower(waiter) = flights.join("k", None) else {
            panic!("the second request must follow");
        };
        let waiting = tokio::spawn(waiter.wait(Duration::from_secs(30)));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the follower woke up")
            .unwrap();
        assert!(
            matches!(flights.join("k", None), Join::Leader(_)),
            "the key is free again"
        );
    }

    #[tokio::test]
    async fn followers_stop_waiting_after_the_limit() {
        let flights = Flights::default();
        let _guard = flights.join("k", None);
        let Join::Follower(waiter) = flights.join("k", None) else {
            panic!("the second request must follow");
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            waiter.wait(Duration::from_millis(10)),
        )
        .await
        .expect("the wait is bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn followers_stop_waiting_when_a_started_response_stalls() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k", None) else {
            panic!("the first request must lead");
        };
        let Join::Follower(waiter) = flights.join("k", None) else {
            panic!("the second request must follow");
        };
        guard.progress();
        let started = Instant::now();
        waiter.wait(Duration::from_secs(600)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gave up after the stall, not the limit"
        );
        drop(guard);
    }
}
