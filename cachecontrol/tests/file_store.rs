//! The file store: the store contract on disk, damaged entries, several threads and
//! processes, `forever`, modes, the size bound, large bodies in constant memory, and
//! the middleware over it.
//!
//! Two tests re-run this test binary as child processes (`several_processes_*` and
//! `a_large_body_*`); the child's side is a test that does nothing unless the
//! environment variable its parent sets is there.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cachecontrol::policy::{CachePolicy, Exchange, PolicyOptions};
use cachecontrol::store::{Body, Entry, EntryInfo, FileBody, Meta, Variants};
use cachecontrol::{Cache, CacheControl, CacheStatus, FileCache, StoreError};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use testbed::origin::{Origin, Reply};

// ---------------------------------------------------------------------------------
// Helpers

/// A stored response whose headers say `max-age=60` and `extra`.
fn policy(extra: &[(&str, &str)]) -> Arc<CachePolicy> {
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    for (name, value) in extra {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let exchange = Exchange {
        method: &Method::GET,
        request_headers: &HeaderMap::new(),
        status: StatusCode::OK,
        response_headers: &headers,
        request_time: 1000,
        response_time: 1000,
    };
    Arc::new(CachePolicy::new(&exchange, &PolicyOptions::default()).unwrap())
}

fn response(extra: &[(&str, &str)]) -> Meta {
    Meta::Response(policy(extra))
}

fn bytes(body: &'static [u8]) -> Body {
    Body::Bytes(Bytes::from_static(body))
}

/// The marker of a URL whose responses vary.
fn variants_marker() -> Meta {
    Meta::Variants(Arc::new(Variants {
        names: vec![],
        nonce: 1,
    }))
}

/// A body that arrives as a stream of these chunks.
fn streamed<I>(chunks: I) -> Body
where
    I: IntoIterator<Item = Result<Bytes, StoreError>>,
    I::IntoIter: Send + 'static,
{
    Body::Stream(Box::pin(futures_util::stream::iter(chunks)))
}

fn header(meta: &Meta, name: &str) -> Option<String> {
    match meta {
        Meta::Response(policy) => policy
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned()),
        Meta::Variants(_) => None,
    }
}

/// The whole body, read as the middleware would.
async fn read(body: Body) -> Vec<u8> {
    let chunks: Vec<Bytes> = body.into_stream().try_collect().await.unwrap();
    chunks.concat()
}

/// The entry under `key`, which must be there, with its body read.
async fn stored(store: &FileCache, key: &str) -> (Meta, Vec<u8>) {
    let Entry { meta, body, .. } = store.get(key).await.unwrap().expect("stored");
    assert!(matches!(body, Body::File(_)), "a file body: {body:?}");
    (meta, read(body).await)
}

/// Where the layout puts `key`'s files.
fn entry_dir(root: &Path, key: &str) -> (PathBuf, String) {
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (root.join(&hex[..2]).join(&hex[2..4]), hex)
}

fn meta_file(root: &Path, key: &str) -> PathBuf {
    let (dir, hex) = entry_dir(root, key);
    dir.join(format!("{hex}.meta"))
}

fn body_files(root: &Path, key: &str) -> Vec<PathBuf> {
    let (dir, hex) = entry_dir(root, key);
    let Ok(listing) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    listing
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("{hex}.")) && name.ends_with(".body")
        })
        .collect()
}

/// Every file under `root`, recursively.
fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    all_files(root)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "tmp"))
        .collect()
}

fn bytes_on_disk(root: &Path) -> u64 {
    all_files(root)
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

/// Waits (a bounded time) for a condition the store reaches in the background.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// Re-runs this test binary for the test `name` alone, with `env` set.
fn run_child(name: &str, env: &[(&str, String)]) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------
// The contract

#[tokio::test]
async fn a_stored_entry_is_read_back_as_an_open_file() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    assert!(store.get("http://a/x").await.unwrap().is_none());
    store
        .put("http://a/x", response(&[("x-a", "1")]), bytes(b"hello"))
        .await
        .unwrap();
    let Entry { meta, body, .. } = store.get("http://a/x").await.unwrap().unwrap();
    let Body::File(file) = body else {
        panic!("not a file body");
    };
    assert_eq!(file.len(), 5);
    assert_eq!(header(&meta, "x-a").as_deref(), Some("1"));
    assert_eq!(read(Body::File(file)).await, b"hello");
    assert!(meta_file(dir.path(), "http://a/x").exists());
    assert_eq!(body_files(dir.path(), "http://a/x").len(), 1);
}

#[tokio::test]
async fn small_and_large_bodies_stream_whole_and_leave_the_file_at_its_start() {
    use std::io::Read;
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    // Up to 64 KiB the body is read with the lookup; above, it is read as streamed,
    // in chunks of 256 KiB.
    for len in [5, 64 << 10, (64 << 10) + 1, 600_000] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let key = format!("http://a/{len}");
        store
            .put(&key, response(&[]), Body::Bytes(Bytes::from(data.clone())))
            .await
            .unwrap();
        let Body::File(file) = store.get(&key).await.unwrap().unwrap().body else {
            panic!("not a file body");
        };
        let mut copied = Vec::new();
        file.file().read_to_end(&mut copied).unwrap();
        assert_eq!(copied, data, "the file, from its start ({len} bytes)");
        let Body::File(file) = store.get(&key).await.unwrap().unwrap().body else {
            panic!("not a file body");
        };
        assert_eq!(read(Body::File(file)).await, data, "streamed ({len} bytes)");
        let Body::File(file) = store.get(&key).await.unwrap().unwrap().body else {
            panic!("not a file body");
        };
        let range: Vec<Bytes> = file.range_stream(1, 3).try_collect().await.unwrap();
        assert_eq!(range.concat(), data[1..4], "a range ({len} bytes)");
    }
}

#[tokio::test]
async fn streamed_and_file_bodies_are_stored_whole() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    let chunks = (0..100u8).map(|i| Ok(Bytes::from(vec![i; 1000])));
    let stream = streamed(chunks);
    store.put("k", response(&[]), stream).await.unwrap();
    let (_, body) = stored(&store, "k").await;
    assert_eq!(body.len(), 100_000);
    assert!(
        body.chunks(1000)
            .enumerate()
            .all(|(i, c)| c == vec![i as u8; 1000])
    );

    // A body handed over as a file (another store's, say) is copied in.
    let Entry {
        body: Body::File(file),
        ..
    } = store.get("k").await.unwrap().unwrap()
    else {
        panic!("a file body");
    };
    store
        .put("copy", response(&[]), Body::File(file))
        .await
        .unwrap();
    assert_eq!(stored(&store, "copy").await.1, body);
}

#[tokio::test]
async fn a_new_write_publishes_a_new_body_while_a_reader_keeps_the_old_one() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    store
        .put("k", response(&[("x-v", "1")]), bytes(b"first body"))
        .await
        .unwrap();
    let old = store.get("k").await.unwrap().unwrap();
    let old_files = body_files(dir.path(), "k");
    store
        .put("k", response(&[("x-v", "2")]), bytes(b"second"))
        .await
        .unwrap();
    let new_files = body_files(dir.path(), "k");
    assert_eq!(new_files.len(), 1, "the old body file was unlinked");
    assert_ne!(old_files, new_files, "the new body is a new file");
    assert_eq!(header(&old.meta, "x-v").as_deref(), Some("1"));
    assert_eq!(
        read(old.body).await,
        b"first body",
        "the reader holding the old body reads it whole"
    );
    let (meta, body) = stored(&store, "k").await;
    assert_eq!(
        (header(&meta, "x-v").as_deref(), &body[..]),
        (Some("2"), &b"second"[..])
    );
}

#[tokio::test]
async fn update_rewrites_only_the_metadata_and_only_for_the_same_body() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    let first = policy(&[("x-v", "1")]);
    store
        .put("k", Meta::Response(Arc::clone(&first)), bytes(b"body"))
        .await
        .unwrap();
    let body_before = body_files(dir.path(), "k");
    let freshened = Arc::new(
        (*policy(&[("x-v", "freshened")]))
            .clone()
            .with_body_of(&first),
    );
    assert!(store.update("k", freshened).await.unwrap());
    assert_eq!(
        body_files(dir.path(), "k"),
        body_before,
        "the body file is kept"
    );
    let (meta, body) = stored(&store, "k").await;
    assert_eq!(header(&meta, "x-v").as_deref(), Some("freshened"));
    assert_eq!(body, b"body");

    let other = policy(&[("x-v", "other")]);
    assert!(
        !store.update("k", other.clone()).await.unwrap(),
        "a policy made for another body is refused"
    );
    assert!(!store.update("missing", other).await.unwrap());
    let marker = variants_marker();
    store.put("marker", marker, Body::empty()).await.unwrap();
    assert!(!store.update("marker", first).await.unwrap());
    assert_eq!(
        header(&stored(&store, "k").await.0, "x-v").as_deref(),
        Some("freshened")
    );
}

#[tokio::test]
async fn a_body_stream_that_ends_in_an_error_stores_nothing_and_keeps_the_old_entry() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    store.put("k", response(&[]), bytes(b"old")).await.unwrap();
    let chunks = vec![
        Ok(Bytes::from_static(b"new, but ")),
        Err(StoreError::Incomplete { key: "k".into() }),
    ];
    let result = store.put("k", response(&[]), streamed(chunks)).await;
    assert!(
        matches!(result, Err(StoreError::Incomplete { .. })),
        "{result:?}"
    );
    assert_eq!(stored(&store, "k").await.1, b"old");
    eventually("the temp file is removed", || {
        temp_files(dir.path()).is_empty()
    })
    .await;
}

#[tokio::test]
async fn entries_list_responses_and_prefixes_and_clear_remove_entries() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    let body = || bytes(b"12345");
    store
        .put("http://a/x", response(&[]), body())
        .await
        .unwrap();
    store
        .put("http://a/x vary:1:ab", response(&[]), body())
        .await
        .unwrap();
    let marker = variants_marker();
    store
        .put("http://a/y", marker, Body::empty())
        .await
        .unwrap();
    store
        .put("http://b/z", response(&[]), body())
        .await
        .unwrap();

    let mut listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["http://a/x", "http://a/x vary:1:ab", "http://b/z"]);
    assert!(listed.iter().all(|e| e.size == 5 && e.stored_at == 1000));

    store.delete("http://b/z").await.unwrap();
    assert!(store.get("http://b/z").await.unwrap().is_none());
    assert!(!meta_file(dir.path(), "http://b/z").exists());
    assert!(body_files(dir.path(), "http://b/z").is_empty());
    store.delete("never stored").await.unwrap();

    store
        .put("http://b/z", response(&[]), body())
        .await
        .unwrap();
    assert_eq!(store.delete_prefix("http://a/").await.unwrap(), 3);
    let listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    store.clear().await.unwrap();
    assert!(store.entries().next().await.is_none());
    assert!(
        all_files(dir.path()).is_empty(),
        "{:?}",
        all_files(dir.path())
    );
}

#[tokio::test]
async fn after_close_every_operation_is_closed_and_the_entries_stay_on_disk() {
    let dir = tempdir();
    let store = FileCache::new(dir.path()).unwrap();
    store.put("k", response(&[]), bytes(b"kept")).await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.get("k").await, Err(StoreError::Closed)));
    assert!(matches!(
        store.put("k", response(&[]), bytes(b"x")).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.update("k", policy(&[])).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.delete("k").await, Err(StoreError::Closed)));
    assert!(matches!(
        store.delete_prefix("").await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.clear().await, Err(StoreError::Closed)));
    assert!(matches!(
        store.entries().next().await,
        Some(Err(StoreError::Closed))
    ));
    store.close().await.unwrap();
    // What was stored is on disk for the next one.
    let reopened = FileCache::new(dir.path()).unwrap();
    assert_eq!(stored(&reopened, "k").await.1, b"kept");
}

#[tokio::test]
async fn a_write_still_receiving_its_body_when_the_store_closes_is_not_published() {
    let dir = tempdir();
    let store = Arc::new(FileCache::new(dir.path()).unwrap());
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(1);
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let writer = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .put("k", response(&[]), Body::Stream(Box::pin(body)))
                .await
        }
    });
    sender.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
    let root = dir.path().to_owned();
    eventually("the body is being written", || {
        !temp_files(&root).is_empty()
    })
    .await;
    // Close does not wait for a body still on its way.
    tokio::time::timeout(Duration::from_secs(10), store.close())
        .await
        .unwrap()
        .unwrap();
    sender
        .send(Ok(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(sender);
    assert!(matches!(writer.await.unwrap(), Err(StoreError::Closed)));
    eventually("the temp file is removed", || temp_files(&root).is_empty()).await;
    let reopened = FileCache::new(dir.path()).unwrap();
    assert!(reopened.get("k").await.unwrap().is_none());
}

#[tokio::test]
async fn errors_name_the_file_and_the_operation() {
    let dir = tempdir();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let Err(StoreError::Io { context, .. }) = FileCache::new(not_a_dir.join("cache")) else {
        panic!("a store under a file");
    };
    assert!(
        context.contains("creating the directory") && context.contains("file/cache"),
        "{context}"
    );

    let store = FileCache::new(dir.path().join("cache")).unwrap();
    let (entry_dir, _) = entry_dir(store.dir(), "k");
    // The entry's first-level directory is taken by a file.
    std::fs::write(entry_dir.parent().unwrap(), b"").unwrap();
    let Err(StoreError::Io { context, .. }) = store.put("k", response(&[]), bytes(b"x")).await
    else {
        panic!("the entry directory cannot be made");
    };
    assert!(
        context.contains("file cache: creating") && context.contains(".tmp"),
        "{context}"
    );
}

// ---------------------------------------------------------------------------------
// Damaged entries: a miss, removed, never a wrong body

async fn store_two(dir: &Path) -> FileCache {
    let store = FileCache::new(dir).unwrap();
    store
        .put("k", response(&[]), bytes(b"the body"))
        .await
        .unwrap();
    store
        .put("other", response(&[]), bytes(b"other"))
        .await
        .unwrap();
    store
}

/// Changes the bytes of the file at `path`.
fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// `key` is a miss, its files are gone, and the other entry is untouched.
async fn assert_removed(store: &FileCache, root: &Path, key: &str) {
    assert!(store.get(key).await.unwrap().is_none());
    assert!(!meta_file(root, key).exists(), "the metadata was removed");
    assert!(body_files(root, key).is_empty(), "the body was removed");
    assert_eq!(stored(store, "other").await.1, b"other");
    // And the key can be stored again.
    store
        .put(key, response(&[]), bytes(b"again"))
        .await
        .unwrap();
    assert_eq!(stored(store, key).await.1, b"again");
}

#[tokio::test]
async fn garbage_in_a_metadata_file_is_a_miss_and_is_removed() {
    let dir = tempdir();
    let store = store_two(dir.path()).await;
    std::fs::write(meta_file(dir.path(), "k"), b"garbage, not metadata").unwrap();
    assert_removed(&store, dir.path(), "k").await;

    // Flipped bits in the header and in the policy, and a file cut short, likewise.
    let path = meta_file(dir.path(), "k");
    rewrite(&path, |meta| meta[20] ^= 1);
    assert_removed(&store, dir.path(), "k").await;
    rewrite(&path, |meta| {
        let at = meta.len() - 3;
        meta[at] ^= 0x40;
    });
    assert_removed(&store, dir.path(), "k").await;
    rewrite(&path, |meta| meta.truncate(meta.len() / 2));
    assert_removed(&store, dir.path(), "k").await;
}

#[tokio::test]
async fn a_truncated_or_missing_body_file_is_a_miss_and_is_removed() {
    let dir = tempdir();
    let store = store_two(dir.path()).await;
    let body = &body_files(dir.path(), "k")[0];
    std::fs::OpenOptions::new()
        .write(true)
        .open(body)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_removed(&store, dir.path(), "k").await;

    std::fs::remove_file(&body_files(dir.path(), "k")[0]).unwrap();
    assert_removed(&store, dir.path(), "k").await;
}

#[tokio::test]
async fn metadata_of_another_version_is_a_miss_and_is_removed() {
    let dir = tempdir();
    let store = store_two(dir.path()).await;
    let path = meta_file(dir.path(), "k");

    // The file's own layout version (the byte after "CCf")...
    rewrite(&path, |meta| {
        assert_eq!(&meta[..3], b"CCf");
        meta[3] += 1;
    });
    assert_removed(&store, dir.path(), "k").await;

    // ...and the version of the policy encoding inside it (the byte after "CCm").
    rewrite(&path, |meta| {
        let at = meta.windows(3).position(|w| w == b"CCm").unwrap() + 3;
        meta[at] += 1;
    });
    assert_removed(&store, dir.path(), "k").await;
}

#[tokio::test]
async fn metadata_of_another_key_is_a_miss_and_is_removed() {
    // Two keys whose hashes collide: the metadata at k's place names `other`.
    let dir = tempdir();
    let store = store_two(dir.path()).await;
    std::fs::copy(meta_file(dir.path(), "other"), meta_file(dir.path(), "k")).unwrap();
    assert_removed(&store, dir.path(), "k").await;
}

#[tokio::test]
async fn a_hit_reads_no_metadata_while_the_metadata_file_is_unchanged() {
    let dir = tempdir();
    let store = store_two(dir.path()).await;
    assert!(store.get("k").await.unwrap().is_some());
    // Garbage written in place, the file's size and modification time kept: its
    // identity has not changed, so the hit does not even read it.
    let path = meta_file(dir.path(), "k");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![b'x'; len], 0).unwrap();
    file.set_times(std::fs::FileTimes::new().set_modified(modified))
        .unwrap();
    assert_eq!(stored(&store, "k").await.1, b"the body");
    // Once the identity changes, it is read, found damaged, and removed.
    file.set_times(std::fs::FileTimes::new().set_modified(modified + Duration::from_secs(1)))
        .unwrap();
    assert_removed(&store, dir.path(), "k").await;
}

// ---------------------------------------------------------------------------------
// Several writers and readers

const KEYS: usize = 6;

/// The body of `version`: the version all over, of a length that varies.
fn versioned_body(version: &str) -> Vec<u8> {
    let repeat = 50 + version.bytes().map(usize::from).sum::<usize>() * 37 % 2000;
    format!("{version}|").repeat(repeat).into_bytes()
}

/// Writes, freshens, deletes and reads the shared keys; every entry read must have
/// the body its metadata's version says.
async fn write_and_read(store: &FileCache, writer: usize, rounds: usize) -> usize {
    let mut checked = 0;
    for round in 0..rounds {
        let key = format!("http://shared/{}", round % KEYS);
        let version = format!("{writer}-{round}");
        store
            .put(
                &key,
                response(&[("x-version", &version)]),
                Body::Bytes(versioned_body(&version).into()),
            )
            .await
            .unwrap();
        let read_key = format!("http://shared/{}", (round * 7 + writer) % KEYS);
        if let Some(Entry { meta, body, .. }) = store.get(&read_key).await.unwrap() {
            let version = header(&meta, "x-version").expect("a version");
            assert_eq!(
                read(body).await,
                versioned_body(&version),
                "{read_key}: the body is not the one of version {version}"
            );
            checked += 1;
            if round % 5 == 0
                && let Meta::Response(stored) = &meta
            {
                // A 304 freshening keeps the body: the version stays.
                let freshened = policy(&[("x-version", &version), ("x-freshened", "1")]);
                let freshened = Arc::new((*freshened).clone().with_body_of(stored));
                store.update(&read_key, freshened).await.unwrap();
            }
        }
        if round % 17 == 0 {
            store.delete(&key).await.unwrap();
        }
    }
    checked
}

/// The body generation a metadata file names (the layout: "CCf", version, generation).
fn generation_in(meta: &Path) -> u64 {
    let bytes = std::fs::read(meta).unwrap();
    u64::from_le_bytes(bytes[4..12].try_into().unwrap())
}

/// After the storm: on disk, each entry's metadata names the one body file it has,
/// an entry without metadata has no body, no temp file is left; and every entry reads
/// back whole.
async fn assert_whole(root: &Path) {
    assert!(temp_files(root).is_empty(), "{:?}", temp_files(root));
    for n in 0..KEYS {
        let key = format!("http://shared/{n}");
        let bodies = body_files(root, &key);
        let meta = meta_file(root, &key);
        if meta.exists() {
            let (_, hex) = entry_dir(root, &key);
            let named = format!("{hex}.{:016x}.body", generation_in(&meta));
            assert_eq!(bodies.len(), 1, "{key}: one body file, not {bodies:?}");
            assert!(
                bodies[0].ends_with(&named),
                "{key}: {bodies:?} is not {named}"
            );
        } else {
            assert!(bodies.is_empty(), "{key}: no body without metadata");
        }
    }
    let store = FileCache::new(root).unwrap();
    for n in 0..KEYS {
        let key = format!("http://shared/{n}");
        let on_disk = meta_file(root, &key).exists();
        match store.get(&key).await.unwrap() {
            Some(Entry { meta, body, .. }) => {
                let version = header(&meta, "x-version").unwrap();
                assert_eq!(read(body).await, versioned_body(&version));
            }
            None => assert!(!on_disk, "{key} is on disk but cannot be read"),
        }
    }
}

const STORM_DIR: &str = "CACHECONTROL_FILE_STORE_STORM_DIR";
const STORM_WRITERS: &str = "CACHECONTROL_FILE_STORE_STORM_WRITERS";

/// Runs `processes` child processes with `tasks` concurrent writers and readers each
/// on one directory, then checks what they left.
async fn storm(processes: usize, tasks: usize) {
    let dir = tempdir();
    let children: Vec<_> = (0..processes)
        .map(|process| {
            let writers = format!("{}..{}", process * tasks, (process + 1) * tasks);
            run_child(
                "storm_child",
                &[
                    (STORM_DIR, dir.path().display().to_string()),
                    (STORM_WRITERS, writers),
                ],
            )
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "a child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_whole(dir.path()).await;
}

#[tokio::test]
async fn concurrent_writers_and_readers_in_threads_always_see_whole_entries() {
    storm(1, 8).await;
}

#[tokio::test]
async fn several_processes_writing_and_reading_the_same_keys_always_see_whole_entries() {
    storm(4, 2).await;
}

/// Counts the warnings logged: in a storm, no entry is ever found damaged.
struct CountWarnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// One process of a storm: the writers `STORM_WRITERS` (a range) as concurrent tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_child() {
    use tracing_subscriber::layer::SubscriberExt;
    let Ok(dir) = std::env::var(STORM_DIR) else {
        return;
    };
    let warnings = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(CountWarnings(Arc::clone(&warnings))),
    )
    .unwrap();
    let writers = std::env::var(STORM_WRITERS).unwrap();
    let (first, end) = writers.split_once("..").unwrap();
    let store = Arc::new(FileCache::new(dir).unwrap());
    let tasks: Vec<_> = (first.parse().unwrap()..end.parse().unwrap())
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { write_and_read(&store, writer, 100).await })
        })
        .collect();
    let mut checked = 0;
    for task in tasks {
        checked += task.await.unwrap();
    }
    assert!(checked > 0, "the readers saw entries");
    store.close().await.unwrap();
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        0,
        "no entry was found damaged"
    );
}

// ---------------------------------------------------------------------------------
// Options

#[tokio::test]
async fn forever_makes_deletes_no_ops() {
    let dir = tempdir();
    let store = FileCache::builder(dir.path())
        .forever(true)
        .build()
        .unwrap();
    store
        .put("http://a/1", response(&[]), bytes(b"one"))
        .await
        .unwrap();
    store.delete("http://a/1").await.unwrap();
    assert_eq!(store.delete_prefix("http://a/").await.unwrap(), 0);
    assert_eq!(stored(&store, "http://a/1").await.1, b"one");
    // A newer response still replaces the stored one.
    store
        .put("http://a/1", response(&[]), bytes(b"two"))
        .await
        .unwrap();
    assert_eq!(stored(&store, "http://a/1").await.1, b"two");
    assert_eq!(body_files(dir.path(), "http://a/1").len(), 1);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The modes of the entry directories and files of `key`.
fn modes_of(root: &Path, key: &str) -> (u32, u32, u32, u32) {
    let (dir, _) = entry_dir(root, key);
    (
        mode(dir.parent().unwrap()),
        mode(&dir),
        mode(&meta_file(root, key)),
        mode(&body_files(root, key)[0]),
    )
}

#[tokio::test]
async fn files_are_0600_and_directories_0700_by_default() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let store = FileCache::new(&root).unwrap();
    store.put("k", response(&[]), bytes(b"x")).await.unwrap();
    assert_eq!(mode(&root), 0o700);
    assert_eq!(modes_of(&root, "k"), (0o700, 0o700, 0o600, 0o600));
}

#[tokio::test]
async fn configured_modes_are_applied_exactly() {
    let dir = tempdir();
    let root = dir.path().join("cache");
    let store = FileCache::builder(&root)
        .file_mode(0o664)
        .dir_mode(0o2775)
        .build()
        .unwrap();
    store.put("k", response(&[]), bytes(b"x")).await.unwrap();
    let freshened = {
        let Meta::Response(stored) = store.get("k").await.unwrap().unwrap().meta else {
            panic!("a response");
        };
        Arc::new((*policy(&[])).clone().with_body_of(&stored))
    };
    assert!(store.update("k", freshened).await.unwrap());
    assert_eq!(mode(&root), 0o2775);
    assert_eq!(modes_of(&root, "k"), (0o2775, 0o2775, 0o664, 0o664));
}

// ---------------------------------------------------------------------------------
// The size bound

/// An entry of about 10 kB.
fn ten_kb() -> Body {
    Body::Bytes(Bytes::from(vec![7; 10_000]))
}

#[tokio::test]
async fn least_recently_used_entries_are_evicted_over_the_bound() {
    let dir = tempdir();
    let bound = 35_000;
    let store = FileCache::builder(dir.path())
        .max_bytes(bound)
        .build()
        .unwrap();
    for key in ["a", "b", "c"] {
        store.put(key, response(&[]), ten_kb()).await.unwrap();
    }
    assert!(store.get("a").await.unwrap().is_some());
    store.put("d", response(&[]), ten_kb()).await.unwrap();
    assert!(
        store.get("b").await.unwrap().is_none(),
        "b was the least recently used"
    );
    assert!(!meta_file(dir.path(), "b").exists());
    assert!(body_files(dir.path(), "b").is_empty());
    for key in ["a", "c", "d"] {
        assert!(store.get(key).await.unwrap().is_some(), "{key} is kept");
    }
    assert!(bytes_on_disk(dir.path()) <= bound);
}

#[tokio::test]
async fn an_entry_larger_than_the_bound_is_not_stored_and_replaces_the_old_one() {
    let dir = tempdir();
    let store = FileCache::builder(dir.path())
        .max_bytes(20_000)
        .build()
        .unwrap();
    store
        .put("neighbour", response(&[]), bytes(b"small"))
        .await
        .unwrap();
    store.put("k", response(&[]), ten_kb()).await.unwrap();
    // A streamed body that goes past the bound...
    let large = (0..30).map(|_| Ok(Bytes::from(vec![1; 1000])));
    store
        .put("k", response(&[]), streamed(large))
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    // ...and a body of exactly the bound, which its metadata takes over it: neither
    // is stored, and the other entries are not evicted to make room.
    store.put("k", response(&[]), ten_kb()).await.unwrap();
    store
        .put("k", response(&[]), Body::Bytes(vec![2; 20_000].into()))
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert_eq!(stored(&store, "neighbour").await.1, b"small");
    let root = dir.path().to_owned();
    eventually("only the neighbour is left", || all_files(&root).len() == 2).await;
}

#[tokio::test]
async fn a_restarted_store_counts_what_is_on_disk() {
    let dir = tempdir();
    let unbounded = FileCache::new(dir.path()).unwrap();
    for n in 0..10 {
        unbounded
            .put(&format!("old{n}"), response(&[]), ten_kb())
            .await
            .unwrap();
    }
    let bound = 35_000;
    let restarted = FileCache::builder(dir.path())
        .max_bytes(bound)
        .build()
        .unwrap();
    restarted.put("new", response(&[]), ten_kb()).await.unwrap();
    assert!(bytes_on_disk(dir.path()) <= bound);
    assert!(restarted.get("new").await.unwrap().is_some());
}

#[tokio::test]
async fn other_processes_entries_count_at_the_next_scan_or_when_read() {
    let bound = 35_000;
    // At the next scan.
    let dir = tempdir();
    let this = FileCache::builder(dir.path())
        .max_bytes(bound)
        .rescan_interval(Duration::ZERO)
        .build()
        .unwrap();
    let other = FileCache::new(dir.path()).unwrap();
    this.put("mine", response(&[]), ten_kb()).await.unwrap();
    for n in 0..5 {
        other
            .put(&format!("theirs{n}"), response(&[]), ten_kb())
            .await
            .unwrap();
    }
    assert!(bytes_on_disk(dir.path()) > bound);
    this.put("mine too", response(&[]), ten_kb()).await.unwrap();
    assert!(bytes_on_disk(dir.path()) <= bound);

    // When read, before any scan shows them.
    let dir = tempdir();
    let this = FileCache::builder(dir.path())
        .max_bytes(bound)
        .build()
        .unwrap();
    let other = FileCache::new(dir.path()).unwrap();
    this.put("mine", response(&[]), ten_kb()).await.unwrap();
    for n in 0..5 {
        let key = format!("theirs{n}");
        other.put(&key, response(&[]), ten_kb()).await.unwrap();
        assert!(this.get(&key).await.unwrap().is_some());
    }
    this.put("mine too", response(&[]), ten_kb()).await.unwrap();
    assert!(bytes_on_disk(dir.path()) <= bound);
    assert!(this.get("mine too").await.unwrap().is_some());
}

#[tokio::test]
async fn the_scan_removes_what_crashed_writers_left() {
    let dir = tempdir();
    let root = dir.path();
    let first = FileCache::new(root).unwrap();
    first.put("k", response(&[]), bytes(b"body")).await.unwrap();
    first
        .put("gone", response(&[]), bytes(b"gone"))
        .await
        .unwrap();
    let (entry, hex) = entry_dir(root, "k");
    // A writer died before publishing (an hour ago, and just now), one died between
    // its body and its metadata, and one after its metadata, before the old body.
    let stale_temp = entry.join(format!(".{hex}.00000000000000aa.tmp"));
    let fresh_temp = entry.join(format!(".{hex}.00000000000000bb.tmp"));
    for temp in [&stale_temp, &fresh_temp] {
        std::fs::write(temp, b"partial").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&stale_temp)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600)),
        )
        .unwrap();
    let extra_body = entry.join(format!("{hex}.00000000000000cc.body"));
    std::fs::write(&extra_body, b"an old body").unwrap();
    std::fs::remove_file(meta_file(root, "gone")).unwrap();
    assert_eq!(body_files(root, "gone").len(), 1);

    let bounded = FileCache::builder(root).max_bytes(1 << 20).build().unwrap();
    bounded
        .put("new", response(&[]), bytes(b"new"))
        .await
        .unwrap();
    assert!(!stale_temp.exists(), "an hour-old temp file is removed");
    assert!(fresh_temp.exists(), "a temp file being written is not");
    assert!(!extra_body.exists(), "a body no metadata names is removed");
    assert!(body_files(root, "gone").is_empty());
    assert_eq!(stored(&bounded, "k").await.1, b"body");
}

// ---------------------------------------------------------------------------------
// A large body, in constant memory

const LARGE_BODY_DIR: &str = "CACHECONTROL_FILE_STORE_LARGE_BODY_DIR";
const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 4096; // 256 MiB

/// The peak resident set size of this process so far, in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn chunk_byte(index: usize) -> u8 {
    (index % 251) as u8
}

#[test]
fn a_large_body_is_streamed_to_disk_and_back_in_constant_memory() {
    // In a process of its own, so that no other test's memory counts.
    let dir = tempdir();
    let output = run_child(
        "large_body_child",
        &[(LARGE_BODY_DIR, dir.path().display().to_string())],
    )
    .wait_with_output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(line) = stdout.lines().find(|line| line.contains("peak RSS")) {
        eprintln!("{line}");
    }
}

/// The child of `a_large_body_is_streamed_to_disk_and_back_in_constant_memory`.
#[tokio::test]
async fn large_body_child() {
    let Ok(dir) = std::env::var(LARGE_BODY_DIR) else {
        return;
    };
    let store = FileCache::new(dir).unwrap();
    let before = peak_rss_kib();
    // Generated on the fly: never more than a chunk of it in memory here.
    let chunks = (0..CHUNKS).map(|index| Ok(Bytes::from(vec![chunk_byte(index); CHUNK])));
    store
        .put("large", response(&[]), streamed(chunks))
        .await
        .unwrap();
    let after_put = peak_rss_kib();

    let Entry {
        body: Body::File(file),
        ..
    } = store.get("large").await.unwrap().unwrap()
    else {
        panic!("a file body");
    };
    assert_eq!(file.len(), (CHUNK * CHUNKS) as u64);
    let mut stream = FileBody::into_stream(file);
    let mut offset = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let mut at = 0;
        while at < chunk.len() {
            let index = (offset + at) / CHUNK;
            let run = (CHUNK - (offset + at) % CHUNK).min(chunk.len() - at);
            assert!(
                chunk[at..at + run] == vec![chunk_byte(index); run][..],
                "wrong bytes at {}",
                offset + at
            );
            at += run;
        }
        offset += chunk.len();
    }
    assert_eq!(offset, CHUNK * CHUNKS);
    let after_get = peak_rss_kib();

    if let (Some(before), Some(after_put), Some(after_get)) = (before, after_put, after_get) {
        let put_growth = after_put - before;
        let get_growth = after_get - before;
        println!(
            "peak RSS (VmHWM) growth for a 256 MiB body: put {} KiB, put and read back {} KiB",
            put_growth, get_growth
        );
        assert!(get_growth < 64 * 1024, "grew by {get_growth} KiB");
    }
}

// ---------------------------------------------------------------------------------
// The middleware over a FileCache

fn client(store: impl Cache) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CacheControl::new(store))
        .build()
}

async fn get(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> (Option<CacheStatus>, Bytes) {
    let response = client.get(url).send().await.unwrap();
    let status = response.extensions().get::<CacheStatus>().copied();
    (status, response.bytes().await.unwrap())
}

#[tokio::test]
async fn a_fresh_hit_is_served_from_the_file_without_the_origin() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok(vec![b'a'; 100_000]).header("cache-control", "max-age=600"),
    );
    let dir = tempdir();
    let store = Arc::new(FileCache::new(dir.path()).unwrap());
    let client = client(Arc::clone(&store));
    let url = origin.url("/a");
    assert_eq!(get(&client, &url).await.0, Some(CacheStatus::Miss));
    let Entry { body, .. } = store.get(&url).await.unwrap().unwrap();
    assert!(matches!(body, Body::File(_)), "stored in a file");
    let (status, body) = get(&client, &url).await;
    assert_eq!(status, Some(CacheStatus::Hit));
    assert_eq!(body, vec![b'a'; 100_000]);
    assert_eq!(origin.hits("/a"), 1);
}

#[tokio::test]
async fn a_stored_response_survives_a_restart() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/a",
        Reply::ok("stored before the restart").header("cache-control", "max-age=600"),
    );
    let dir = tempdir();
    let url = origin.url("/a");
    {
        let store = Arc::new(FileCache::new(dir.path()).unwrap());
        let client = client(Arc::clone(&store));
        assert_eq!(get(&client, &url).await.0, Some(CacheStatus::Miss));
        store.close().await.unwrap();
    }
    let client = client(FileCache::new(dir.path()).unwrap());
    let (status, body) = get(&client, &url).await;
    assert_eq!(status, Some(CacheStatus::Hit));
    assert_eq!(body, "stored before the restart");
    assert_eq!(origin.hits("/a"), 1);
}

#[tokio::test]
async fn a_hit_hands_out_the_stored_file_and_a_miss_does_not() {
    use std::os::unix::fs::FileExt;
    let origin = Origin::start().await.unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
    origin.always(
        "/a",
        Reply::ok(body.clone()).header("cache-control", "max-age=600"),
    );
    let dir = tempdir();
    let client = client(FileCache::new(dir.path()).unwrap());
    let url = origin.url("/a");

    let miss = client.get(&url).send().await.unwrap();
    assert!(miss.extensions().get::<cachecontrol::FromCache>().is_none());
    assert_eq!(miss.bytes().await.unwrap(), body);

    let hit = client.get(&url).send().await.unwrap();
    let from = hit
        .extensions()
        .get::<cachecontrol::FromCache>()
        .cloned()
        .expect("a hit says where its body comes from");
    assert!(!from.from_far);
    let stored = from.file.expect("a FileCache hands out its body's file");
    assert_eq!(stored.len(), body.len() as u64);
    let mut read = vec![0; body.len()];
    stored.file().read_exact_at(&mut read, 0).unwrap();
    assert_eq!(read, body, "the file holds the body");
    // Positioned reads do not disturb the response's own body.
    assert_eq!(hit.bytes().await.unwrap(), body);
    assert_eq!(origin.hits("/a"), 1);
}

#[tokio::test]
async fn an_invalidated_url_goes_back_to_the_origin() {
    let origin = Origin::start().await.unwrap();
    origin.sequence(
        "/a",
        vec![
            Reply::ok("first").header("cache-control", "max-age=600"),
            Reply::ok("second").header("cache-control", "max-age=600"),
        ],
    );
    let dir = tempdir();
    let cache = CacheControl::new(FileCache::new(dir.path()).unwrap());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build();
    let url = origin.url("/a");
    assert_eq!(get(&client, &url).await.1, "first");
    assert_eq!(
        get(&client, &url).await,
        (Some(CacheStatus::Hit), Bytes::from("first"))
    );
    cache.invalidate(&url.parse().unwrap()).await;
    assert_eq!(
        get(&client, &url).await,
        (Some(CacheStatus::Miss), Bytes::from("second"))
    );
    assert_eq!(origin.hits("/a"), 2);
}
