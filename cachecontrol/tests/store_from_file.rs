//! `StoreFromFile`: the caller writes the body to a file of its own and hands the
//! file over; the store copies it, and a guarded file that changed meanwhile is not
//! stored. Runs on the store `CACHECONTROL_TEST_STORE` names (memory by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use cachecontrol::store::FileBody;
use cachecontrol::{CacheStatus, PendingStore, Recording, StoreFromFile};
use common::Fixture;
use testbed::origin::Reply;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// What a caller that keeps the body gets: the response's status, its hand-over
/// and recording, and the body written to a file (still open, at its end).
struct Kept {
    cache: Option<CacheStatus>,
    pending: Option<PendingStore>,
    recording: Option<Recording>,
    file: std::fs::File,
    len: u64,
    _dir: tempfile::TempDir,
}

async fn fetch_to_file(fixture: &Fixture, path: &str, from_file: StoreFromFile) -> Kept {
    let mut response = fixture
        .client
        .get(fixture.url(path))
        .with_extension(from_file)
        .send()
        .await
        .unwrap();
    let cache = response.extensions().get::<CacheStatus>().copied();
    let pending = response.extensions().get::<PendingStore>().cloned();
    let recording = response.extensions().get::<Recording>().cloned();
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("body"))
        .unwrap();
    let mut len = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        file.write_all(&chunk).unwrap();
        len += chunk.len() as u64;
    }
    Kept {
        cache,
        pending,
        recording,
        file,
        len,
        _dir: dir,
    }
}

fn fresh(body: Vec<u8>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=600")
}

#[tokio::test]
async fn a_body_handed_over_in_a_file_is_stored_and_served_from_the_cache() {
    let fixture = Fixture::new().await;
    let data = pattern(300_000);
    fixture.origin.always("/big", fresh(data.clone()));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    assert_eq!(kept.cache, Some(CacheStatus::Miss));
    assert_eq!(
        kept.len,
        data.len() as u64,
        "the body is the origin's, whole"
    );
    assert_eq!(
        fixture.stored().await,
        0,
        "nothing stored before the hand-over"
    );
    let pending = kept
        .pending
        .expect("a response that may be stored has a hand-over");
    assert!(pending.store(FileBody::new(kept.file, kept.len)));
    assert!(
        !pending.store(FileBody::new(tempfile::tempfile().unwrap(), 0)),
        "taken once"
    );
    assert!(kept.recording.unwrap().stored().await);

    let again = fixture.get("/big").await;
    assert_eq!(again.cache, Some(CacheStatus::Hit));
    assert_eq!(again.body, data);
    assert_eq!(fixture.origin.hits("/big"), 1);
}

#[tokio::test]
async fn a_guarded_file_that_changed_while_it_was_copied_is_not_stored() {
    let fixture = Fixture::new().await;
    fixture.origin.always("/big", fresh(pattern(300_000)));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&asked);
    let body = FileBody::guarded(kept.file, kept.len, move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        false
    });
    assert!(kept.pending.unwrap().store(body));
    assert!(!kept.recording.unwrap().stored().await);
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the store asked"
    );
    assert_eq!(fixture.stored().await, 0);

    let again = fixture.get("/big").await;
    assert_eq!(again.cache, Some(CacheStatus::Miss));
    assert_eq!(fixture.origin.hits("/big"), 2);
}

#[tokio::test]
async fn a_guarded_file_that_did_not_change_is_stored() {
    let fixture = Fixture::new().await;
    let data = pattern(300_000);
    fixture.origin.always("/big", fresh(data.clone()));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    let body = FileBody::guarded(kept.file, kept.len, |_| true);
    assert!(kept.pending.unwrap().store(body));
    assert!(kept.recording.unwrap().stored().await);
    assert_eq!(fixture.get("/big").await.body, data);
    assert_eq!(fixture.origin.hits("/big"), 1);
}

/// The store asks after it has read the whole file: a change made just before it
/// asks (after the copy) does not reach the entry.
#[tokio::test]
async fn the_store_asks_once_it_has_the_whole_file() {
    let fixture = Fixture::new().await;
    let data = pattern(300_000);
    fixture.origin.always("/big", fresh(data.clone()));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    let writer = kept.file.try_clone().unwrap();
    let body = FileBody::guarded(kept.file, kept.len, move |_| {
        // Changes the file the first time it is asked, and says it did not.
        let _ = std::os::unix::fs::FileExt::write_all_at(&writer, b"changed", 0);
        true
    });
    assert!(kept.pending.unwrap().store(body));
    assert!(kept.recording.unwrap().stored().await);
    let again = fixture.get("/big").await;
    assert_eq!(again.cache, Some(CacheStatus::Hit));
    assert!(
        again.body == data,
        "the entry holds what the file held before"
    );
}

#[tokio::test]
async fn a_file_of_another_length_than_announced_is_not_stored() {
    let fixture = Fixture::new().await;
    fixture.origin.always("/big", fresh(pattern(300_000)));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    assert!(
        kept.pending
            .unwrap()
            .store(FileBody::new(kept.file, kept.len - 1))
    );
    assert!(!kept.recording.unwrap().stored().await);
    assert_eq!(fixture.stored().await, 0);
}

#[tokio::test]
async fn without_a_hand_over_nothing_is_stored() {
    let fixture = Fixture::new().await;
    fixture.origin.always("/big", fresh(pattern(300_000)));

    let kept = fetch_to_file(&fixture, "/big", StoreFromFile::new()).await;
    drop(kept.pending);
    let stored = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        kept.recording.unwrap().stored(),
    )
    .await;
    assert_eq!(stored, Ok(false), "told at once that nothing is stored");
    assert_eq!(fixture.stored().await, 0);
    assert_eq!(fixture.get("/big").await.cache, Some(CacheStatus::Miss));
}

#[tokio::test]
async fn a_body_shorter_than_asked_for_is_recorded_as_usual() {
    let fixture = Fixture::new().await;
    fixture.origin.always("/small", fresh(b"small".to_vec()));

    let kept = fetch_to_file(&fixture, "/small", StoreFromFile::at_least(1024)).await;
    assert!(kept.pending.is_none(), "no hand-over for a small body");
    assert!(kept.recording.unwrap().stored().await);
    let again = fixture.get("/small").await;
    assert_eq!(again.cache, Some(CacheStatus::Hit));
    assert_eq!(again.body, "small");
}
