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

/// The keys being fetched right now.
/// How many counters the stored responses are counted in.
const STORED_STRIPES: usize = 32;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<FlightMap>>,
    next_id: AtomicU64,
    /// How many responses from the origin have been stored, counted by stripe
    /// of their key (so that stores of other keys rarely move a key's count).
    stored: [AtomicU64; STORED_STRIPES],
}

/// What a request is for a key: the one that fetches it, or one that waits.
pub(crate) enum Join {
    Leader(FlightGuard),
    Follower(Waiter),
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
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = self.map.lock();
        if let Some((_, receiver)) = map.get(key) {
            return Join::Follower(Waiter(receiver.clone()));
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

    /// How many responses from the origin have been stored so far under keys of
    /// `key`'s stripe. A request that misses and then finds no flight of its key
    /// may have missed an entry stored in between: it compares this count from
    /// before its lookup with the count after.
    pub(crate) fn stored(&self, key: &str) -> u64 {
        self.stored[stripe(key)].load(Ordering::Acquire)
    }

    /// A response from the origin has been stored under `key` (before its
    /// leader's guard, if it has one, is dropped).
    pub(crate) fn note_stored(&self, key: &str) {
        self.stored[stripe(key)].fetch_add(1, Ordering::Release);
    }
}

/// The counter of [`Flights::stored`] that `key` is counted in.
fn stripe(key: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash =
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    // The remainder is below STORED_STRIPES: it fits.
    (hash % STORED_STRIPES as u64) as usize
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

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k") else {
            panic!("the first request must lead");
        };
        let Join::Follower(waiter) = flights.join("k") else {
            panic!("the second request must follow");
        };
        let waiting = tokio::spawn(waiter.wait(Duration::from_secs(30)));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the follower woke up")
            .unwrap();
        assert!(
            matches!(flights.join("k"), Join::Leader(_)),
            "the key is free again"
        );
    }

    #[tokio::test]
    async fn followers_stop_waiting_after_the_limit() {
        let flights = Flights::default();
        let _guard = flights.join("k");
        let Join::Follower(waiter) = flights.join("k") else {
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
        let Join::Leader(guard) = flights.join("k") else {
            panic!("the first request must lead");
        };
        let Join::Follower(waiter) = flights.join("k") else {
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
