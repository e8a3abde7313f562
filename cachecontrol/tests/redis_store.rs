//! RedisCache against real `redis-server` processes (a server, a three-node cluster)
//! started by the test bed on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cachecontrol::policy::{CachePolicy, Exchange, PolicyOptions};
use cachecontrol::store::{Body, BodyStream, Entry, EntryInfo, Meta, Variants};
use cachecontrol::{Cache, CacheControl, CacheStatus, RedisCache, StoreError};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use redis::Commands;
use testbed::origin::{Origin, Reply};
use testbed::redis::{RedisCluster, RedisServer};

const NAME: &str = "cachecontrol-test";
const PREFIX: &str = "t:";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A policy for a response received now with these headers.
fn policy(headers: &[(&str, &str)]) -> Arc<CachePolicy> {
    let mut response = HeaderMap::new();
    for (name, value) in headers {
        response.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let exchange = Exchange {
        method: &Method::GET,
        request_headers: &HeaderMap::new(),
        status: StatusCode::OK,
        response_headers: &response,
        request_time: now(),
        response_time: now(),
    };
    Arc::new(CachePolicy::new(&exchange, &PolicyOptions::default()).unwrap())
}

fn fresh() -> Meta {
    Meta::Response(policy(&[("cache-control", "max-age=600")]))
}

/// Bytes that differ from one offset to the next, so that a shifted or mixed body
/// shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + i as u64 / 251 + u64::from(seed)) as u8)
        .collect()
}

/// `data` as a body stream of pieces of `piece` bytes.
fn streamed(data: &[u8], piece: usize) -> Body {
    let pieces: Vec<Result<Bytes, StoreError>> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::Stream(Box::pin(futures_util::stream::iter(pieces)))
}

async fn read(body: Body) -> Result<Vec<u8>, StoreError> {
    let chunks: Vec<Bytes> = body.into_stream().try_collect().await?;
    Ok(chunks.concat())
}

async fn get_body(store: &RedisCache, key: &str) -> Option<Vec<u8>> {
    let entry = store.get(key).await.unwrap()?;
    Some(read(entry.body).await.unwrap())
}

fn builder(server: &RedisServer) -> cachecontrol::RedisCacheBuilder {
    RedisCache::builder(server.url())
        .prefix(PREFIX)
        .client_name(NAME)
}

/// A server, a store on it with chunks of 1 KiB (so that small bodies take several),
/// and a plain connection to look at what it wrote.
async fn small_chunks() -> (RedisServer, RedisCache, redis::Connection) {
    let server = RedisServer::start().unwrap();
    let store = builder(&server).chunk_size(1024).build().await.unwrap();
    let redis = raw(&server);
    (server, store, redis)
}

async fn store_on(server: &RedisServer) -> RedisCache {
    builder(server).build().await.unwrap()
}

/// A plain connection, to look at and tamper with what the store wrote.
fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn keys(connection: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = connection
        .scan_match(pattern)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    keys.sort();
    keys
}

/// Whether a connection named `name` is open on `server`.
fn has_named_connection(server: &RedisServer, name: &str) -> bool {
    let list = server.cli(&["client", "list"]).unwrap();
    list.lines()
        .any(|line| line.split(' ').any(|field| field == format!("name={name}")))
}

#[tokio::test]
async fn an_entry_reads_back_with_its_metadata_and_a_small_body_whole() {
    let server = RedisServer::start().unwrap();
    let store = store_on(&server).await;
    let stored = policy(&[("cache-control", "max-age=600"), ("x-a", "1")]);
    store
        .put(
            "http://a/x",
            Meta::Response(Arc::clone(&stored)),
            Body::Bytes(Bytes::from_static(b"hello")),
        )
        .await
        .unwrap();
    let Some(Entry {
        meta: Meta::Response(read_back),
        body: Body::Bytes(body),
        ..
    }) = store.get("http://a/x").await.unwrap()
    else {
        panic!("a response with its body in one piece");
    };
    assert_eq!(&body[..], b"hello");
    assert_eq!(format!("{read_back:?}"), format!("{stored:?}"));
    assert!(store.get("http://a/other").await.unwrap().is_none());
    let empty_marker = Meta::Variants(Arc::new(Variants {
        names: vec![http::header::ACCEPT],
        nonce: 9,
    }));
    store
        .put("http://a/v", empty_marker, Body::empty())
        .await
        .unwrap();
    let Some(Entry {
        meta: Meta::Variants(variants),
        body,
        ..
    }) = store.get("http://a/v").await.unwrap()
    else {
        panic!("the marker");
    };
    assert_eq!(variants.nonce, 9);
    assert!(read(body).await.unwrap().is_empty());
}

#[tokio::test]
async fn bodies_of_several_mib_are_written_in_chunks_and_read_back_exactly() {
    let server = RedisServer::start().unwrap();
    let store = store_on(&server).await;
    let mut redis = raw(&server);
    // Pieces that do not line up with the 1 MiB chunks, and one larger than a chunk.
    let data = pattern(5 * (1 << 20) + 12_345, 1);
    store
        .put("http://a/big", fresh(), streamed(&data, 100_003))
        .await
        .unwrap();
    assert_eq!(
        keys(&mut redis, "t:*:body:*").len(),
        6,
        "five whole chunks and a partial one"
    );
    let entry = store.get("http://a/big").await.unwrap().unwrap();
    assert!(
        matches!(entry.body, Body::Stream(_)),
        "a large body is streamed"
    );
    let mut stream = entry.body.into_stream();
    let mut read_back = Vec::new();
    let mut largest = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        largest = largest.max(chunk.len());
        read_back.extend_from_slice(&chunk);
    }
    assert_eq!(read_back.len(), data.len());
    assert!(read_back == data, "the body reads back exactly");
    assert_eq!(largest, 1 << 20, "read a chunk at a time");

    // A body given whole is chunked too, and an exact multiple of the chunk size
    // leaves no empty chunk.
    let small_chunks = builder(&server)
        .prefix("s:")
        .chunk_size(64 * 1024)
        .build()
        .await
        .unwrap();
    let data = pattern(3 * 64 * 1024, 2);
    small_chunks
        .put("k", fresh(), Body::Bytes(Bytes::from(data.clone())))
        .await
        .unwrap();
    assert_eq!(keys(&mut redis, "s:*:body:*").len(), 3);
    assert!(get_body(&small_chunks, "k").await.unwrap() == data);
}

#[tokio::test]
async fn replacing_an_entry_removes_the_old_body_and_ends_a_read_of_it_with_an_error() {
    let (_server, store, mut redis) = small_chunks().await;
    let old = pattern(10 * 1024, 1);
    let new = pattern(7 * 1024 + 5, 2);
    store
        .put("k", fresh(), Body::Bytes(Bytes::from(old.clone())))
        .await
        .unwrap();
    let reading = store.get("k").await.unwrap().unwrap();
    let mut stream = reading.body.into_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &old[..1024]);

    store
        .put("k", fresh(), Body::Bytes(Bytes::from(new.clone())))
        .await
        .unwrap();
    assert_eq!(
        keys(&mut redis, "t:*:body:*").len(),
        8,
        "only the new generation's chunks are left"
    );
    let mut rest = Vec::new();
    let mut ended_with_error = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => rest.extend_from_slice(&chunk),
            Err(error) => {
                assert!(error.to_string().contains("chunk"), "{error}");
                ended_with_error = true;
            }
        }
    }
    assert!(ended_with_error, "the old body cannot be finished");
    assert!(
        old[1024..].starts_with(&rest),
        "what was read before the error is the old body's, never the new one's"
    );
    assert!(get_body(&store, "k").await.unwrap() == new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_of_one_key_never_see_a_mixed_body() {
    let server = RedisServer::start().unwrap();
    let store = Arc::new(builder(&server).chunk_size(512).build().await.unwrap());
    let whole_reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for writer in 0..4u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for round in 0..25usize {
                // Every body is one repeated byte, its length in the metadata: a body
                // mixed from two writes, or not the one its metadata describes, shows.
                let len = 3_000 + (round * 7 + usize::from(writer) * 1_000) % 4_000;
                let meta = Meta::Response(policy(&[
                    ("cache-control", "max-age=600"),
                    ("x-fill", &writer.to_string()),
                    ("x-len", &len.to_string()),
                ]));
                let body = vec![writer; len];
                store.put("one", meta, streamed(&body, 700)).await.unwrap();
            }
        }));
    }
    for _ in 0..4 {
        let store = Arc::clone(&store);
        let whole_reads = Arc::clone(&whole_reads);
        tasks.push(tokio::spawn(async move {
            for _ in 0..60 {
                let Some(entry) = store.get("one").await.unwrap() else {
                    continue;
                };
                let Meta::Response(policy) = &entry.meta else {
                    panic!("a response");
                };
                let header = |name: &str| -> usize {
                    policy.headers()[name].to_str().unwrap().parse().unwrap()
                };
                let (fill, len) = (header("x-fill") as u8, header("x-len"));
                let mut stream = entry.body.into_stream();
                let mut read = 0;
                let mut whole = true;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => {
                            assert!(chunk.iter().all(|b| *b == fill), "a mixed body");
                            read += chunk.len();
                        }
                        // Replaced while it was read: an error, never a mix.
                        Err(_) => whole = false,
                    }
                }
                if whole {
                    assert_eq!(read, len, "the body its metadata describes");
                    whole_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(whole_reads.load(Ordering::Relaxed) > 0);
    let mut redis = raw(&server);
    let Some(Entry {
        meta: Meta::Response(last),
        body,
        ..
    }) = store.get("one").await.unwrap()
    else {
        panic!("the last write");
    };
    let len: usize = last.headers()["x-len"].to_str().unwrap().parse().unwrap();
    assert_eq!(read(body).await.unwrap().len(), len);
    assert_eq!(
        keys(&mut redis, "t:*:body:*").len(),
        len.div_ceil(512),
        "the replaced bodies were removed"
    );
}

#[tokio::test]
async fn a_body_that_fails_is_not_stored_and_leaves_nothing_behind() {
    let (_server, store, mut redis) = small_chunks().await;
    store
        .put("k", fresh(), Body::Bytes(Bytes::from_static(b"before")))
        .await
        .unwrap();
    let pieces: Vec<Result<Bytes, StoreError>> = vec![
        Ok(Bytes::from(vec![1; 3000])),
        Err(StoreError::Incomplete { key: "k".into() }),
    ];
    let failing: BodyStream = Box::pin(futures_util::stream::iter(pieces));
    let result = store.put("k", fresh(), Body::Stream(failing)).await;
    assert!(matches!(result, Err(StoreError::Incomplete { .. })));
    assert_eq!(get_body(&store, "k").await.unwrap(), b"before");
    assert_eq!(
        keys(&mut redis, "t:*").len(),
        1,
        "the record of the earlier body, which holds it (it is small)"
    );
}

#[tokio::test]
async fn a_small_body_is_kept_in_its_record_and_an_update_keeps_it() {
    let (_server, store, mut redis) = small_chunks().await;
    let stored = policy(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let data = pattern(1023, 5);
    store
        .put(
            "k",
            Meta::Response(Arc::clone(&stored)),
            streamed(&data, 100),
        )
        .await
        .unwrap();
    assert_eq!(keys(&mut redis, "t:*").len(), 1, "no chunk: one key");
    assert_eq!(get_body(&store, "k").await.unwrap(), data);

    let freshened = Arc::new(
        (*policy(&[("cache-control", "max-age=600"), ("etag", "\"v1\"")]))
            .clone()
            .with_body_of(&stored),
    );
    assert!(store.update("k", freshened).await.unwrap());
    let entry = store.get("k").await.unwrap().unwrap();
    let Meta::Response(read_back) = &entry.meta else {
        panic!("a response");
    };
    assert_eq!(read_back.headers()["cache-control"], "max-age=600");
    assert_eq!(read(entry.body).await.unwrap(), data, "the body is kept");

    // A whole chunk: in a chunk, as before.
    store
        .put("k", fresh(), streamed(&pattern(1024, 6), 100))
        .await
        .unwrap();
    assert_eq!(keys(&mut redis, "t:*:body:*").len(), 1);
    assert_eq!(get_body(&store, "k").await.unwrap(), pattern(1024, 6));
}

#[tokio::test]
async fn a_record_of_an_older_version_is_a_miss_and_is_removed() {
    let (_server, store, mut redis) = small_chunks().await;
    store
        .put("k", fresh(), Body::Bytes(Bytes::from(pattern(10, 7))))
        .await
        .unwrap();
    let meta = keys(&mut redis, "t:*:meta").remove(0);
    let mut record: Vec<u8> = redis.get(&meta).unwrap();
    // Version 1 read the bytes after the metadata as nothing; as this version, they
    // would be an inline body.
    record[3] = 1;
    let _: () = redis.set(&meta, record).unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(!redis.exists::<_, bool>(&meta).unwrap(), "removed");
}

#[tokio::test]
async fn update_rewrites_the_metadata_only_for_the_same_body() {
    let server = RedisServer::start().unwrap();
    let store = builder(&server).chunk_size(1024).build().await.unwrap();
    let stored = policy(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let data = pattern(5000, 3);
    store
        .put(
            "k",
            Meta::Response(Arc::clone(&stored)),
            Body::Bytes(Bytes::from(data.clone())),
        )
        .await
        .unwrap();
    let freshened = Arc::new(
        (*policy(&[("cache-control", "max-age=600"), ("etag", "\"v1\"")]))
            .clone()
            .with_body_of(&stored),
    );
    assert!(store.update("k", Arc::clone(&freshened)).await.unwrap());
    let entry = store.get("k").await.unwrap().unwrap();
    let Meta::Response(read_back) = &entry.meta else {
        panic!("a response");
    };
    assert_eq!(read_back.headers()["cache-control"], "max-age=600");
    assert!(read(entry.body).await.unwrap() == data, "the body is kept");

    let other = policy(&[("cache-control", "max-age=1")]);
    assert!(
        !store.update("k", other).await.unwrap(),
        "another body's policy is refused"
    );
    assert!(
        !store.update("missing", freshened).await.unwrap(),
        "nothing to update"
    );
}

#[tokio::test]
async fn delete_entries_delete_prefix_and_clear() {
    let (_server, store, mut redis) = small_chunks().await;
    let body = || Body::Bytes(Bytes::from(vec![7u8; 2500]));
    for key in [
        "http://a/x",
        "http://a/x vary:1:ab",
        "http://b/z",
        "http://b/w",
    ] {
        store.put(key, fresh(), body()).await.unwrap();
    }
    let marker = Meta::Variants(Arc::new(Variants {
        names: vec![],
        nonce: 1,
    }));
    store
        .put("http://a/y", marker, Body::empty())
        .await
        .unwrap();
    let _: () = redis.set("unrelated", "kept").unwrap();

    let mut listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let listed_keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        listed_keys,
        [
            "http://a/x",
            "http://a/x vary:1:ab",
            "http://b/w",
            "http://b/z"
        ],
        "responses, not markers"
    );
    assert!(
        listed
            .iter()
            .all(|e| e.size == 2500 && e.stored_at.abs_diff(now()) < 60)
    );

    store.delete("http://b/w").await.unwrap();
    assert!(store.get("http://b/w").await.unwrap().is_none());
    assert_eq!(
        keys(&mut redis, "t:*").len(),
        3 * 4 + 1,
        "the deleted entry's record and chunks are gone"
    );
    store.delete("http://b/none").await.unwrap();

    assert_eq!(store.delete_prefix("http://a/").await.unwrap(), 3);
    assert!(store.get("http://a/x").await.unwrap().is_none());
    assert!(store.get("http://a/y").await.unwrap().is_none());
    assert_eq!(keys(&mut redis, "t:*").len(), 4);

    store.clear().await.unwrap();
    assert!(keys(&mut redis, "t:*").is_empty());
    assert!(store.get("http://b/z").await.unwrap().is_none());
    let kept: String = redis.get("unrelated").unwrap();
    assert_eq!(kept, "kept", "only the prefix is cleared");
}

#[tokio::test]
async fn every_key_has_the_ttl_of_its_entry_and_an_update_renews_them_all() {
    let server = RedisServer::start().unwrap();
    let store = builder(&server)
        .chunk_size(1024)
        .retention(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let mut redis = raw(&server);
    let ttls = |redis: &mut redis::Connection, pattern: &str| -> Vec<i64> {
        keys(redis, pattern)
            .iter()
            .map(|key| redis.pttl(key).unwrap())
            .collect()
    };
    let within = |ttls: &[i64], seconds: i64| {
        ttls.iter()
            .all(|ttl| (seconds * 1000 - 5_000..=seconds * 1000).contains(ttl))
    };

    // Without a validator: fresh for 100 s, then useful for 50 more (stale-if-error).
    let short = policy(&[("cache-control", "max-age=100, stale-if-error=50")]);
    store
        .put(
            "short",
            Meta::Response(Arc::clone(&short)),
            Body::Bytes(Bytes::from(vec![1; 3000])),
        )
        .await
        .unwrap();
    let short_ttls = ttls(&mut redis, "t:*");
    assert_eq!(short_ttls.len(), 4, "the record and three chunks");
    assert!(within(&short_ttls, 150), "{short_ttls:?}");

    let longer = Arc::new(
        (*policy(&[("cache-control", "max-age=1000")]))
            .clone()
            .with_body_of(&short),
    );
    assert!(store.update("short", longer).await.unwrap());
    let updated = ttls(&mut redis, "t:*");
    assert!(within(&updated, 1000), "{updated:?}");

    // With a validator, and a variants marker: the retention.
    store.clear().await.unwrap();
    store
        .put(
            "validated",
            Meta::Response(policy(&[
                ("cache-control", "max-age=10"),
                ("etag", "\"x\""),
            ])),
            Body::Bytes(Bytes::from(vec![1; 1500])),
        )
        .await
        .unwrap();
    store
        .put(
            "marker",
            Meta::Variants(Arc::new(Variants {
                names: vec![],
                nonce: 2,
            })),
            Body::empty(),
        )
        .await
        .unwrap();
    let kept = ttls(&mut redis, "t:*");
    assert_eq!(kept.len(), 4);
    assert!(within(&kept, 3600), "{kept:?}");
}

#[tokio::test]
async fn garbage_under_the_stores_keys_is_a_miss_and_is_removed() {
    let (_server, store, mut redis) = small_chunks().await;
    let record_key = |redis: &mut redis::Connection| -> String {
        let found = keys(redis, "t:*:meta");
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    };
    let put = |key: &'static str, len: usize| {
        let store = store.clone();
        async move {
            store
                .put(key, fresh(), Body::Bytes(Bytes::from(pattern(len, 4))))
                .await
                .unwrap()
        }
    };

    // Bytes that are not a record.
    put("k", 10).await;
    let meta = record_key(&mut redis);
    let _: () = redis.set(&meta, "garbage").unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(!redis.exists::<_, bool>(&meta).unwrap(), "removed");

    // Another type of value: a miss, and a put replaces it.
    let _: () = redis.hset(&meta, "field", "value").unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(!redis.exists::<_, bool>(&meta).unwrap());
    let _: () = redis.hset(&meta, "field", "value").unwrap();
    put("k", 10).await;
    assert_eq!(get_body(&store, "k").await.unwrap(), pattern(10, 4));

    // A record cut short, or damaged: its checksum fails.
    let record: Vec<u8> = redis.get(&meta).unwrap();
    let _: () = redis.set(&meta, &record[..record.len() - 3]).unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    put("k", 10).await;
    let mut damaged: Vec<u8> = redis.get(&meta).unwrap();
    let last = damaged.len() - 20;
    damaged[last] ^= 0x55;
    let _: () = redis.set(&meta, damaged).unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(!redis.exists::<_, bool>(&meta).unwrap());

    // Another key's record under this key: never served as this key's.
    put("k", 10).await;
    let record: Vec<u8> = redis.get(&meta).unwrap();
    store.delete("k").await.unwrap();
    put("other", 10).await;
    let other_meta = record_key(&mut redis);
    let _: () = redis.set(&other_meta, record).unwrap();
    assert!(store.get("other").await.unwrap().is_none());
    store.clear().await.unwrap();

    // A first chunk of the wrong length: a miss, and the whole entry is removed.
    put("k", 3000).await;
    let chunks = keys(&mut redis, "t:*:body:*");
    let first = chunks.iter().find(|k| k.ends_with(":0")).unwrap();
    let _: () = redis.set(first, "short").unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    assert!(
        keys(&mut redis, "t:*").is_empty(),
        "record and chunks removed"
    );

    // A later chunk missing or damaged: the body ends with an error, never with
    // wrong bytes, and the entry is removed.
    put("k", 3000).await;
    let chunks = keys(&mut redis, "t:*:body:*");
    let last = chunks.iter().find(|k| k.ends_with(":2")).unwrap();
    let _: () = redis.set(last, vec![0u8; 952]).unwrap();
    let entry = store.get("k").await.unwrap().unwrap();
    let mut stream = entry.body.into_stream();
    let mut good = Vec::new();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => good.extend_from_slice(&chunk),
            Err(error) => {
                assert!(error.to_string().contains("chunk 2"), "{error}");
                failed = true;
            }
        }
    }
    assert!(failed);
    assert!(pattern(3000, 4).starts_with(&good));
    assert!(keys(&mut redis, "t:*").is_empty());

    // A garbage record is skipped by listings, and nothing panics on it.
    put("k", 10).await;
    let meta = record_key(&mut redis);
    let _: () = redis.set(&meta, "CCr\x01garbage").unwrap();
    let listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    assert!(listed.is_empty());
    assert!(
        !store
            .update("k", policy(&[("cache-control", "max-age=1")]))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lets_writes_in_flight_finish_then_releases_the_connections() {
    let server = RedisServer::start().unwrap();
    let store = builder(&server).chunk_size(1024).build().await.unwrap();
    assert!(has_named_connection(&server, NAME));
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
    let body: BodyStream = Box::pin(tokio_stream_of(receiver));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { store.put("k", fresh(), Body::Stream(body)).await })
    };
    sender.send(Ok(Bytes::from(vec![5; 2048]))).await.unwrap();
    let mut redis = raw(&server);
    while keys(&mut redis, "t:*:body:*").len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closing = {
        let store = store.clone();
        tokio::spawn(async move { store.close().await })
    };
    // Once closing has begun, operations fail at once, while close waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(store.get("other").await, Err(StoreError::Closed)) {
        assert!(Instant::now() < deadline, "closing never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!closing.is_finished(), "close waits for the write");
    let started = Instant::now();
    assert!(matches!(store.get("k").await, Err(StoreError::Closed)));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "closed at once"
    );
    sender.send(Ok(Bytes::from(vec![5; 100]))).await.unwrap();
    drop(sender);
    writer.await.unwrap().unwrap();
    closing.await.unwrap().unwrap();
    assert!(
        !has_named_connection(&server, NAME),
        "no connection of the store is left open"
    );

    // The write was committed.
    let reader = builder(&server)
        .client_name("reader")
        .build()
        .await
        .unwrap();
    assert_eq!(get_body(&reader, "k").await.unwrap(), vec![5; 2148]);
    // Everything fails at once on the closed store.
    assert!(matches!(
        store.put("k", fresh(), Body::empty()).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store
            .update("k", policy(&[("cache-control", "max-age=1")]))
            .await,
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_abandons_a_write_that_outlasts_the_grace_and_removes_its_chunks() {
    let server = RedisServer::start().unwrap();
    let store = builder(&server)
        .chunk_size(1024)
        .close_grace(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let mut redis = raw(&server);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
    let writer = {
        let store = store.clone();
        let body: BodyStream = Box::pin(tokio_stream_of(receiver));
        tokio::spawn(async move { store.put("k", fresh(), Body::Stream(body)).await })
    };
    sender.send(Ok(Bytes::from(vec![5; 4096]))).await.unwrap();
    while keys(&mut redis, "t:*:body:*").len() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    store.close().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(writer.await.unwrap(), Err(StoreError::Closed)));
    assert!(
        keys(&mut redis, "t:*").is_empty(),
        "its chunks were removed"
    );
    assert!(!has_named_connection(&server, NAME));
    drop(sender);
}

/// A body stream fed through a channel.
fn tokio_stream_of(
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
) -> impl futures_util::Stream<Item = Result<Bytes, StoreError>> + Send {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[tokio::test]
async fn a_store_built_while_redis_is_down_connects_once_it_is_up() {
    let mut server = RedisServer::start().unwrap();
    server.kill();
    let store = builder(&server)
        .connect_timeout(Duration::from_millis(500))
        .build_lazy()
        .unwrap();
    let started = Instant::now();
    let error = store.get("k").await.unwrap_err();
    assert!(matches!(error, StoreError::Backend(_)), "{error}");
    assert!(error.to_string().contains("connect"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "it fails fast");
    assert!(RedisCache::new(server.url()).await.is_err());
    server.restart().unwrap();
    store
        .put("k", fresh(), Body::Bytes(Bytes::from_static(b"up")))
        .await
        .unwrap();
    assert_eq!(get_body(&store, "k").await.unwrap(), b"up");
    assert!(has_named_connection(&server, NAME));
}

#[test]
fn a_bad_configuration_is_refused_with_a_reason() {
    let refused =
        |builder: cachecontrol::RedisCacheBuilder| builder.build_lazy().unwrap_err().to_string();
    let url = "redis://127.0.0.1:1/";
    assert!(refused(RedisCache::builder("not a url")).contains("URL"));
    assert!(refused(RedisCache::builder(url).prefix("a{b}")).contains("brace"));
    assert!(refused(RedisCache::builder(url).chunk_size(0)).contains("chunk size"));
    assert!(refused(RedisCache::builder(url).client_name("two words")).contains("client name"));
}

/// A client whose cache is on `store`, answering within `store_timeout` whatever
/// Redis does.
fn client_on(
    store: &RedisCache,
    store_timeout: Duration,
) -> reqwest_middleware::ClientWithMiddleware {
    let cache = CacheControl::builder(store.clone())
        .store_timeout(store_timeout)
        .build();
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build()
}

fn item_body(n: usize) -> Vec<u8> {
    pattern(20_000 + n, n as u8)
}

fn serve_items(origin: &Origin, count: usize) {
    for n in 0..count {
        origin.always(
            &format!("/item/{n}"),
            Reply::ok(item_body(n)).header("cache-control", "max-age=600"),
        );
    }
}

/// GETs item `n`; the body must be right. Returns how it was served.
async fn fetch_item(
    client: &reqwest_middleware::ClientWithMiddleware,
    origin: &Origin,
    n: usize,
) -> Option<CacheStatus> {
    let response = client
        .get(origin.url(&format!("/item/{n}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status = response.extensions().get::<CacheStatus>().copied();
    let body = response.bytes().await.unwrap();
    assert!(body == item_body(n), "item {n} has its own body");
    status
}

/// Until item `n` is served from the cache, within a few requests.
async fn becomes_a_hit(
    client: &reqwest_middleware::ClientWithMiddleware,
    origin: &Origin,
    n: usize,
) -> bool {
    for _ in 0..5 {
        if fetch_item(client, origin, n).await == Some(CacheStatus::Hit) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_succeed_while_redis_is_killed_and_the_cache_works_again_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let origin = Origin::start().await.unwrap();
    serve_items(&origin, 40);
    let store = store_on(&server).await;
    let timeout = Duration::from_secs(2);
    let client = client_on(&store, timeout);
    for n in 0..20 {
        fetch_item(&client, &origin, n).await;
    }
    assert!(becomes_a_hit(&client, &origin, 0).await);

    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let client = client.clone();
            let origin_url = origin.url("/");
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for round in 0..40usize {
                    let n = (worker * 7 + round * 3) % 40;
                    let started = Instant::now();
                    let response = client
                        .get(format!("{origin_url}item/{n}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let body = response.bytes().await.unwrap();
                    assert!(body == item_body(n), "item {n} has its own body");
                    slowest = slowest.max(started.elapsed());
                    done.fetch_add(1, Ordering::SeqCst);
                }
                slowest
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let before_restart = done.load(Ordering::SeqCst);
    for worker in workers {
        let slowest = worker.await.unwrap();
        assert!(
            slowest < timeout + Duration::from_secs(2),
            "a request took {slowest:?}"
        );
    }
    assert!(
        done.load(Ordering::SeqCst) > before_restart,
        "requests were made while Redis was down"
    );

    server.restart().unwrap();
    assert!(
        becomes_a_hit(&client, &origin, 33).await,
        "the same middleware caches again"
    );
    let hits = origin.hits("/item/33");
    assert_eq!(
        fetch_item(&client, &origin, 33).await,
        Some(CacheStatus::Hit)
    );
    assert_eq!(origin.hits("/item/33"), hits);
    // The new connection gets its name too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has_named_connection(&server, NAME) {
        assert!(
            Instant::now() < deadline,
            "the new connection was never named"
        );
        fetch_item(&client, &origin, 33).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_within_the_store_timeout_while_redis_is_frozen() {
    let server = RedisServer::start().unwrap();
    let origin = Origin::start().await.unwrap();
    serve_items(&origin, 4);
    let store = builder(&server)
        .response_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let timeout = Duration::from_millis(500);
    let client = client_on(&store, timeout);
    assert!(becomes_a_hit(&client, &origin, 0).await);
    server.pause().unwrap();
    for n in 0..4 {
        let started = Instant::now();
        fetch_item(&client, &origin, n).await;
        assert!(
            started.elapsed() < timeout * 2 + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
    }
    server.resume().unwrap();
    assert!(becomes_a_hit(&client, &origin, 3).await);
    assert!(becomes_a_hit(&client, &origin, 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_entries_over_its_masters_and_lists_and_clears_them_all() {
    let cluster = RedisCluster::start().unwrap();
    let store = RedisCache::cluster_builder(cluster.urls())
        .prefix(PREFIX)
        .client_name(NAME)
        .chunk_size(4096)
        .build()
        .await
        .unwrap();
    let count = 60;
    for n in 0..count {
        let data = pattern(100 + n * 300, n as u8);
        store
            .put(&format!("http://c/{n}"), fresh(), streamed(&data, 1000))
            .await
            .unwrap();
    }
    for n in 0..count {
        let data = pattern(100 + n * 300, n as u8);
        assert!(
            get_body(&store, &format!("http://c/{n}")).await.unwrap() == data,
            "entry {n} reads back"
        );
    }
    for node in cluster.nodes() {
        let size: u64 = node.cli(&["dbsize"]).unwrap().trim().parse().unwrap();
        assert!(size > 0, "every master holds entries");
        assert!(has_named_connection(node, NAME));
    }
    let listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    assert_eq!(listed.len(), count);

    let stored = match store.get("http://c/5").await.unwrap().unwrap().meta {
        Meta::Response(policy) => policy,
        Meta::Variants(_) => panic!("a response"),
    };
    let freshened = Arc::new(
        (*policy(&[("cache-control", "max-age=900")]))
            .clone()
            .with_body_of(&stored),
    );
    assert!(store.update("http://c/5", freshened).await.unwrap());
    assert_eq!(store.delete_prefix("http://c/1").await.unwrap(), 11);
    store.delete("http://c/2").await.unwrap();
    let listed: Vec<EntryInfo> = store.entries().try_collect().await.unwrap();
    assert_eq!(listed.len(), count - 12);

    store.clear().await.unwrap();
    for node in cluster.nodes() {
        assert_eq!(node.cli(&["dbsize"]).unwrap().trim(), "0");
    }
    store.close().await.unwrap();
    for node in cluster.nodes() {
        assert!(!has_named_connection(node, NAME));
    }
}
