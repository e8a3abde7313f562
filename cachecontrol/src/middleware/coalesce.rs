//! Coalescing concurrent misses: one request goes to the origin, the others wait.
//!
//! The first request that misses a key becomes its leader and gets a
//! [`FlightGuard`]. The guard travels with the response until the store has committed
//! (or discarded) the entry; dropping it wakes the followers, which look in the cache
//! again. Followers wait a bounded time; after it, or when the leader's response could
//! not be stored, they go to the origin themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

type FlightMap = HashMap<String, (u64, watch::Receiver<()>)>;

/// The keys being fetched right now.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<FlightMap>>,
    next_id: AtomicU64,
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
    _done: watch::Sender<()>,
}

/// A follower's wait for the leader.
pub(crate) struct Waiter(watch::Receiver<()>);

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = self.map.lock();
        if let Some((_, receiver)) = map.get(key) {
            return Join::Follower(Waiter(receiver.clone()));
        }
        let (sender, receiver) = watch::channel(());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.to_owned(), (id, receiver));
        Join::Leader(FlightGuard {
            map: Arc::clone(&self.map),
            key: key.to_owned(),
            id,
            _done: sender,
        })
    }
}

impl Waiter {
    /// Waits until the leader is done, or `limit` has passed.
    pub(crate) async fn wait(mut self, limit: Duration) {
        // The leader never sends: the channel closes when its guard is dropped.
        let _ = tokio::time::timeout(limit, self.0.changed()).await;
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
}
