//! The fetcher against a real loopback origin that counts requests and bytes (and a
//! real Redis for the shared tier): repeat runs, revalidation, digests, names,
//! retries, concurrent fetches, read-only artifacts, archives, progress.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fetcher::{
    Archive, Artifact, FetchError, FetchReport, Fetcher, Materialized, ProgressEvent, Retry,
    Served, Sha256,
};
use sha2::Digest;
use testbed::origin::{Origin, Recorded, Reply};

fn sha256(body: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(body).into())
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|n| (n as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A fetcher over a cache in `cache_dir`, retrying quickly.
fn fetcher(cache_dir: &Path) -> Fetcher {
    Fetcher::builder()
        .cache_dir(cache_dir)
        .retry(Retry {
            attempts: 3,
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
        .build()
        .unwrap()
}

fn artifact(origin: &Origin, name: &str, path: &str) -> Artifact {
    Artifact::new(name, origin.url(path).parse().unwrap())
}

/// An origin route that answers `304` to a matching `If-None-Match`.
fn with_etag(
    body: Vec<u8>,
    etag: &'static str,
    cache_control: &'static str,
) -> impl Fn(&Recorded) -> Reply {
    move |request| {
        if request.header("if-none-match") == Some(etag) {
            Reply::not_modified()
                .header("etag", etag)
                .header("cache-control", cache_control)
        } else {
            Reply::ok(body.clone())
                .header("etag", etag)
                .header("cache-control", cache_control)
        }
    }
}

/// Files in `dir`, recursively, relative; `.part` files included (there must be none).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{relative}/"));
                walk(root, &path, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn served(report: &FetchReport) -> Vec<Served> {
    report
        .artifacts
        .iter()
        .map(|artifact| artifact.served)
        .collect()
}

#[tokio::test]
async fn a_download_is_in_the_cache_once_stored_returns_for_a_fetcher_of_another_process() {
    let origin = Origin::start().await.unwrap();
    let data = body(5 << 20, 7);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "data.bin", "/data")];
    let run = tempfile::tempdir().unwrap();
    let first = fetcher.fetch(&artifacts, run.path()).await.unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    assert_eq!(std::fs::read(run.path().join("data.bin")).unwrap(), data);
    // The cache's copy is synced and published in the background; `stored` waits
    // for it (two callers at once included). The store of another process then has
    // it, complete.
    let clone = fetcher.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join(fetcher.stored(), clone.stored()),
    )
    .await
    .expect("both waits end once the download is stored");
    let store = cachecontrol::FileCache::new(cache.path().join("http")).unwrap();
    let listed: Vec<_> =
        futures_util::StreamExt::collect::<Vec<_>>(cachecontrol::Cache::entries(&store))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, origin.url("/data"));
    assert_eq!(listed[0].size, data.len() as u64);
    // And a new fetcher on it (as in another process) needs no request.
    let other = self::fetcher(cache.path());
    let again = tempfile::tempdir().unwrap();
    let second = other.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert_eq!(second.artifacts[0].attempts, 0);
    assert_eq!(origin.total_hits(), 1);
    other.close().await.unwrap();
    fetcher.close().await.unwrap();
}

#[tokio::test]
async fn a_second_run_sends_no_request_while_fresh() {
    let origin = Origin::start().await.unwrap();
    let data = body(3 << 20, 1);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    origin.always(
        "/script.sh",
        Reply::ok("echo hi\n").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [
        artifact(&origin, "in/data.bin", "/data"),
        artifact(&origin, "script.sh", "/script.sh"),
    ];

    let first_run = tempfile::tempdir().unwrap();
    let first = fetcher.fetch(&artifacts, first_run.path()).await.unwrap();
    assert_eq!(served(&first), [Served::Downloaded, Served::Downloaded]);
    assert_eq!(first.network_bytes(), data.len() as u64 + 8);
    assert_eq!(origin.total_hits(), 2);

    let second_run = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, second_run.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached, Served::Cached]);
    assert_eq!(second.network_bytes(), 0);
    assert_eq!(origin.total_hits(), 2, "no request while fresh");
    assert!(
        second
            .artifacts
            .iter()
            .all(|artifact| artifact.attempts == 0)
    );
    assert!(
        second.artifacts.iter().all(|artifact| matches!(
            artifact.materialized,
            Materialized::Reflink | Materialized::KernelCopy
        )),
        "copied by the kernel: {second:#?}"
    );
    assert_eq!(
        std::fs::read(second_run.path().join("in/data.bin")).unwrap(),
        data
    );
    assert_eq!(
        std::fs::read(second_run.path().join("script.sh")).unwrap(),
        b"echo hi\n"
    );
    assert_eq!(
        listing(second_run.path()),
        ["in/", "in/data.bin", "script.sh"]
    );
    // A new fetcher over the same directory (a new process) finds it too.
    let third_run = tempfile::tempdir().unwrap();
    let third = self::fetcher(cache.path())
        .fetch(&artifacts, third_run.path())
        .await
        .unwrap();
    assert_eq!(served(&third), [Served::Cached, Served::Cached]);
    assert_eq!(origin.total_hits(), 2);
    let text = third.to_string();
    assert!(
        text.contains("in/data.bin") && text.contains("cached"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stale_artifact_is_revalidated_and_a_304_moves_no_body() {
    let origin = Origin::start().await.unwrap();
    let data = body(1 << 20, 2);
    origin.route("/data", with_etag(data.clone(), "\"v1\"", "max-age=0"));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "data", "/data")];

    let first_run = tempfile::tempdir().unwrap(); // kept: the cache copies from it
    fetcher.fetch(&artifacts, first_run.path()).await.unwrap();
    let sent = origin.body_bytes_sent();
    assert_eq!(sent, data.len() as u64);

    let run = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
    assert_eq!(served(&report), [Served::Revalidated]);
    assert_eq!(report.network_bytes(), 0);
    assert_eq!(origin.body_bytes_sent(), sent, "the 304 moved no body");
    let requests = origin.requests("/data");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("if-none-match"),
        Some("\"v1\""),
        "only a conditional request"
    );
    assert_eq!(std::fs::read(run.path().join("data")).unwrap(), data);
}

#[tokio::test]
async fn a_changed_artifact_is_downloaded_again() {
    let origin = Origin::start().await.unwrap();
    origin.sequence(
        "/data",
        vec![
            Reply::ok("version 1")
                .header("etag", "\"1\"")
                .header("cache-control", "max-age=0"),
            Reply::ok("version 2")
                .header("etag", "\"2\"")
                .header("cache-control", "max-age=0"),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "data", "/data")];
    fetcher
        .fetch(&artifacts, tempfile::tempdir().unwrap().path())
        .await
        .unwrap();
    let run = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
    assert_eq!(served(&report), [Served::Downloaded]);
    assert_eq!(
        std::fs::read(run.path().join("data")).unwrap(),
        b"version 2"
    );
}

#[tokio::test]
async fn an_artifact_with_a_digest_is_verified_and_then_needs_no_request_even_when_stale() {
    let origin = Origin::start().await.unwrap();
    let data = body(2 << 20, 3);
    origin.route("/data", with_etag(data.clone(), "\"v1\"", "max-age=0"));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "data", "/data").sha256(sha256(&data))];

    let first_run = tempfile::tempdir().unwrap(); // kept: the cache copies from it
    let first = fetcher.fetch(&artifacts, first_run.path()).await.unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    assert_eq!(first.artifacts[0].sha256, Some(sha256(&data)));
    for _ in 0..2 {
        let run = tempfile::tempdir().unwrap();
        let again = fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_eq!(served(&again), [Served::Cached]);
        assert_eq!(std::fs::read(run.path().join("data")).unwrap(), data);
    }
    assert_eq!(
        origin.hits("/data"),
        1,
        "the stored copy has the digest: no request"
    );
}

#[tokio::test]
async fn a_digest_mismatch_names_both_digests_and_leaves_nothing_behind() {
    let origin = Origin::start().await.unwrap();
    let data = body(100_000, 4);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    origin.always(
        "/ok",
        Reply::ok("fine").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let wrong = sha256(b"something else");
    let run = tempfile::tempdir().unwrap();
    let error = fetcher
        .fetch(
            &[artifact(&origin, "data.bin", "/data").sha256(wrong)],
            run.path(),
        )
        .await
        .unwrap_err();
    match &error {
        FetchError::ChecksumMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "data.bin");
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, sha256(&data));
        }
        other => panic!("not a checksum mismatch: {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("data.bin")
            && message.contains(&wrong.to_string())
            && message.contains(&sha256(&data).to_string()),
        "{message}"
    );
    assert!(listing(run.path()).is_empty(), "{:?}", listing(run.path()));
    // Nothing of it in the cache: the same URL without a digest goes to the origin.
    let report = fetcher
        .fetch(&[artifact(&origin, "data.bin", "/data")], run.path())
        .await
        .unwrap();
    assert_eq!(served(&report), [Served::Downloaded]);
    assert_eq!(origin.hits("/data"), 2);
}

#[tokio::test]
async fn a_cached_copy_without_the_digest_is_replaced_by_the_origins() {
    let origin = Origin::start().await.unwrap();
    origin.sequence(
        "/data",
        vec![
            Reply::ok("old content").header("cache-control", "max-age=600"),
            Reply::ok("new content").header("cache-control", "max-age=600"),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    fetcher
        .fetch(
            &[artifact(&origin, "data", "/data")],
            tempfile::tempdir().unwrap().path(),
        )
        .await
        .unwrap();
    // The job now names the new content: the fresh but older copy will not do.
    let run = tempfile::tempdir().unwrap();
    let report = fetcher
        .fetch(
            &[artifact(&origin, "data", "/data").sha256(sha256(b"new content"))],
            run.path(),
        )
        .await
        .unwrap();
    assert_eq!(served(&report), [Served::Downloaded]);
    assert_eq!(
        std::fs::read(run.path().join("data")).unwrap(),
        b"new content"
    );
    assert_eq!(origin.hits("/data"), 2);
}

#[tokio::test]
async fn names_that_escape_the_run_directory_are_refused_before_any_request() {
    let origin = Origin::start().await.unwrap();
    origin.always("/x", Reply::ok("x"));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let run = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/tmp", run.path().join("link")).unwrap();
    for name in [
        "../escape",
        "/etc/passwd",
        "a/../../escape",
        "link/x",
        "link",
    ] {
        let artifacts = [
            artifact(&origin, "fine", "/x"),
            artifact(&origin, name, "/x"),
        ];
        let error = fetcher.fetch(&artifacts, run.path()).await.unwrap_err();
        assert!(
            matches!(error, FetchError::BadName { .. }),
            "{name}: {error:?}"
        );
        assert!(error.to_string().contains(&format!("{name:?}")), "{error}");
    }
    let error = fetcher
        .fetch(
            &[artifact(&origin, "a", "/x"), artifact(&origin, "a/b", "/x")],
            run.path(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::NamesOverlap { .. }),
        "{error:?}"
    );
    assert_eq!(origin.total_hits(), 0, "nothing was fetched");
    assert_eq!(listing(run.path()), ["link"]);
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    let origin = Origin::start().await.unwrap();
    let data = body(500_000, 5);
    origin.sequence(
        "/data",
        vec![
            Reply::status(503),
            Reply::ok(data.clone()).cut_after(100_000),
            Reply::ok(data.clone()).header("cache-control", "max-age=600"),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .retry(Retry {
            attempts: 3,
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        })
        .on_progress(move |progress| seen.lock().unwrap().push(progress.event.clone()))
        .build()
        .unwrap();
    let run = tempfile::tempdir().unwrap();
    let report = fetcher
        .fetch(&[artifact(&origin, "data", "/data")], run.path())
        .await
        .unwrap();
    assert_eq!(report.artifacts[0].attempts, 3);
    assert_eq!(std::fs::read(run.path().join("data")).unwrap(), data);
    assert_eq!(
        listing(run.path()),
        ["data"],
        "the cut download left nothing"
    );
    let events = events.lock().unwrap();
    let retries = events
        .iter()
        .filter(|event| matches!(event, ProgressEvent::Retrying { .. }))
        .count();
    assert_eq!(retries, 2, "{events:?}");
    assert_eq!(events.first(), Some(&ProgressEvent::Started));
    assert!(matches!(
        events.last(),
        Some(ProgressEvent::Done {
            served: Served::Downloaded,
            size: 500_000
        })
    ));
}

#[tokio::test]
async fn a_failing_origin_is_retried_then_reported_with_the_url() {
    let origin = Origin::start().await.unwrap();
    origin.always("/broken", Reply::status(500));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let error = fetcher
        .fetch(
            &[artifact(&origin, "b", "/broken")],
            tempfile::tempdir().unwrap().path(),
        )
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&origin.url("/broken"))
            && message.contains("500")
            && message.contains("3 attempt"),
        "{message}"
    );
    assert_eq!(origin.hits("/broken"), 3);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let origin = Origin::start().await.unwrap();
    origin.always("/missing", Reply::status(404));
    let cache = tempfile::tempdir().unwrap();
    let error = fetcher(cache.path())
        .fetch(
            &[artifact(&origin, "m", "/missing")],
            tempfile::tempdir().unwrap().path(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::Status { status, .. } if status == 404),
        "{error:?}"
    );
    assert_eq!(origin.hits("/missing"), 1);
}

#[tokio::test]
async fn a_slow_origin_times_out_and_is_retried_then_reported() {
    let origin = Origin::start().await.unwrap();
    origin.always("/slow", Reply::ok("late").delay(Duration::from_secs(5)));
    let cache = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .read_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .client(client)
        .retry(Retry {
            attempts: 2,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        })
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let error = fetcher
        .fetch(
            &[artifact(&origin, "s", "/slow")],
            tempfile::tempdir().unwrap().path(),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout cut it short"
    );
    assert!(
        matches!(error, FetchError::Network { attempts: 2, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&origin.url("/slow")), "{error}");
    assert_eq!(origin.hits("/slow"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_given_up_while_its_body_arrives_stops_and_leaves_nothing() {
    let origin = Origin::start().await.unwrap();
    // The first chunk comes, the rest never does (the gate stays shut).
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    origin.always(
        "/stalled",
        Reply::ok(body(4 << 20, 5)).chunked(64).gate(gate),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let run = tempfile::tempdir().unwrap();
    let artifacts = [artifact(&origin, "data", "/stalled")];
    let given_up = tokio::time::timeout(
        Duration::from_millis(500),
        fetcher.fetch(&artifacts, run.path()),
    )
    .await;
    assert!(given_up.is_err(), "the body never ends: {given_up:?}");
    // Its download stops with it (not at the client's read timeout, a minute away):
    // the part written is removed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !listing(run.path()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listing(run.path()), Vec::<String>::new());
    assert_eq!(origin.hits("/stalled"), 1);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let port = testbed::net::free_port().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/gone");
    let error = fetcher(cache.path())
        .fetch(
            &[Artifact::new("gone", url.parse().unwrap())],
            tempfile::tempdir().unwrap().path(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::Network { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test]
async fn two_fetches_of_one_url_at_once_download_it_once() {
    let origin = Origin::start().await.unwrap();
    let data = body(4 << 20, 6);
    origin.always(
        "/big",
        Reply::ok(data.clone())
            .header("cache-control", "max-age=600")
            .chunked(64)
            .chunk_delay(Duration::from_millis(5)),
    );
    let cache = tempfile::tempdir().unwrap();
    // Two fetchers over one cache directory, as two runs in two processes would be.
    let (one, two) = (fetcher(cache.path()), fetcher(cache.path()));
    let artifacts = [artifact(&origin, "big", "/big")];
    let (dir_one, dir_two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = tokio::join!(
        one.fetch(&artifacts, dir_one.path()),
        two.fetch(&artifacts, dir_two.path())
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(origin.hits("/big"), 1, "downloaded once");
    let mut served = [first.artifacts[0].served, second.artifacts[0].served];
    served.sort_by_key(|served| served.as_str());
    assert_eq!(served, [Served::Cached, Served::Downloaded]);
    // The one that waited was served from the cache: it made no request.
    for report in [&first, &second] {
        let artifact = &report.artifacts[0];
        let requests = u32::from(artifact.served == Served::Downloaded);
        assert_eq!(artifact.attempts, requests, "{artifact:?}");
    }
    assert_eq!(std::fs::read(dir_one.path().join("big")).unwrap(), data);
    assert_eq!(std::fs::read(dir_two.path().join("big")).unwrap(), data);
}

#[tokio::test]
async fn two_fetches_of_a_url_that_is_not_stored_download_at_once_not_in_turn() {
    let origin = Origin::start().await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    origin.always(
        "/live",
        Reply::ok(body(200_000, 9))
            .header("cache-control", "no-store")
            .chunked(8)
            .gate(Arc::clone(&gate)),
    );
    let cache = tempfile::tempdir().unwrap();
    let (one, two) = (fetcher(cache.path()), fetcher(cache.path()));
    let artifacts = [artifact(&origin, "live", "/live")];
    let (dir_one, dir_two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let both = async {
        tokio::join!(
            one.fetch(&artifacts, dir_one.path()),
            two.fetch(&artifacts, dir_two.path())
        )
    };
    let mut both = std::pin::pin!(both);
    // The bodies are held back: the second request reaches the origin only if the
    // first fetch let go of the URL's lock when its response turned out not to be
    // stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while origin.hits("/live") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second fetch waits for the first one's body"
        );
        if let Ok((first, second)) =
            tokio::time::timeout(Duration::from_millis(20), &mut both).await
        {
            panic!("the fetches ended with the bodies held back: {first:?} {second:?}");
        }
    }
    gate.add_permits(1000);
    let (first, second) = both.await;
    assert_eq!(served(&first.unwrap()), [Served::Downloaded]);
    assert_eq!(served(&second.unwrap()), [Served::Downloaded]);
}

#[tokio::test]
async fn what_a_job_does_to_its_files_does_not_change_the_cache() {
    // A small body is stored as it arrives; a large one is copied from the first
    // run's file once that is in place.
    for pristine in [b"pristine".to_vec(), body(2 << 20, 14)] {
        let origin = Origin::start().await.unwrap();
        origin.always(
            "/data",
            Reply::ok(pristine.clone()).header("cache-control", "max-age=600"),
        );
        let cache = tempfile::tempdir().unwrap();
        let fetcher = fetcher(cache.path());
        let artifacts = [artifact(&origin, "data", "/data")];
        let first = tempfile::tempdir().unwrap();
        fetcher.fetch(&artifacts, first.path()).await.unwrap();
        fetcher.stored().await;

        let run = tempfile::tempdir().unwrap();
        fetcher.fetch(&artifacts, run.path()).await.unwrap();
        for dir in [first.path(), run.path()] {
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("data"))
                .unwrap()
                .write_all(b" and changed")
                .unwrap();
        }
        let next = tempfile::tempdir().unwrap();
        let report = fetcher.fetch(&artifacts, next.path()).await.unwrap();
        assert_eq!(served(&report), [Served::Cached]);
        assert_eq!(std::fs::read(next.path().join("data")).unwrap(), pristine);
        assert_eq!(origin.total_hits(), 1);
    }
}

#[tokio::test]
async fn a_read_only_artifact_with_a_digest_is_linked_and_read_only() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data",
        Reply::ok("shared").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let linked = [artifact(&origin, "data", "/data")
        .read_only(true)
        .sha256(sha256(b"shared"))];
    let first = tempfile::tempdir().unwrap();
    fetcher.fetch(&linked, first.path()).await.unwrap();
    let mode = std::fs::metadata(first.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444, "downloaded read-only");

    let run = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        // Twice into the same directory: the link is replaced, nothing is left over.
        let report = fetcher.fetch(&linked, run.path()).await.unwrap();
        assert_eq!(report.artifacts[0].materialized, Materialized::HardLink);
        assert_eq!(listing(run.path()), ["data"]);
    }
    let path = run.path().join("data");
    assert_eq!(std::fs::read(&path).unwrap(), b"shared");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );

    // Without a digest, a read-only artifact is a read-only copy.
    let copied = [artifact(&origin, "data", "/data").read_only(true)];
    let other = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&copied, other.path()).await.unwrap();
    assert_ne!(report.artifacts[0].materialized, Materialized::HardLink);
    let mode = std::fs::metadata(other.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
}

#[tokio::test]
async fn a_job_that_writes_through_a_hard_link_does_not_get_its_change_served() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data",
        Reply::ok("pristine").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let linked = [artifact(&origin, "data", "/data")
        .read_only(true)
        .sha256(sha256(b"pristine"))];
    fetcher
        .fetch(&linked, tempfile::tempdir().unwrap().path())
        .await
        .unwrap();
    let run = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&linked, run.path()).await.unwrap();
    assert_eq!(report.artifacts[0].materialized, Materialized::HardLink);

    // The job ignores the declaration: makes it writable and writes the same length.
    let path = run.path().join("data");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"TAMPERED").unwrap();

    let next = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&linked, next.path()).await.unwrap();
    assert_eq!(
        served(&report),
        [Served::Downloaded],
        "the change was noticed"
    );
    assert_eq!(
        std::fs::read(next.path().join("data")).unwrap(),
        b"pristine"
    );
    assert_eq!(origin.hits("/data"), 2);
}

#[tokio::test]
async fn an_archive_is_unpacked_into_its_directory_every_run() {
    let origin = Origin::start().await.unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "bin/run.sh", &b"echo 1"[..])
        .unwrap();
    let archive = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive).unwrap();
    let tar_gz = gz.finish().unwrap();
    origin.always(
        "/tools.tar.gz",
        Reply::ok(tar_gz.clone()).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "tools", "/tools.tar.gz")
        .unpack(Archive::TarGz)
        .sha256(sha256(&tar_gz))];
    for expected in [Served::Downloaded, Served::Cached] {
        let run = tempfile::tempdir().unwrap();
        let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_eq!(served(&report), [expected]);
        assert_eq!(report.artifacts[0].materialized, Materialized::Unpacked);
        assert_eq!(
            listing(run.path()),
            ["tools/", "tools/bin/", "tools/bin/run.sh"]
        );
        let script = run.path().join("tools/bin/run.sh");
        assert_eq!(std::fs::read(&script).unwrap(), b"echo 1");
        assert_eq!(
            std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Fetching again into the same directory replaces what was unpacked.
        fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_eq!(
            listing(run.path()),
            ["tools/", "tools/bin/", "tools/bin/run.sh"]
        );
    }
    assert_eq!(origin.hits("/tools.tar.gz"), 1);
}

#[tokio::test]
async fn a_cached_zip_is_unpacked_from_the_cache_s_file_without_a_copy_of_it() {
    let origin = Origin::start().await.unwrap();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    // Larger than what a FileCache hit reads into memory: the body is a file.
    let a = body(300_000, 5);
    writer.start_file("data/a.bin", stored).unwrap();
    writer.write_all(&a).unwrap();
    writer.start_file("data/b.txt", stored).unwrap();
    writer.write_all(b"beta").unwrap();
    let zip = writer.finish().unwrap().into_inner();
    origin.always(
        "/data.zip",
        Reply::ok(zip).header("cache-control", "max-age=600"),
    );
    // What is in the run directory when unpacking starts.
    let run_dir: Arc<Mutex<Option<std::path::PathBuf>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let (dir, at_unpacking) = (Arc::clone(&run_dir), Arc::clone(&seen));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .on_progress(move |progress| {
            if progress.event == ProgressEvent::Unpacking
                && let Some(dir) = dir.lock().unwrap().clone()
            {
                at_unpacking.lock().unwrap().push(listing(&dir));
            }
        })
        .build()
        .unwrap();
    // No digest: the cache's file is read from its start although nothing hashed it.
    let artifacts = [artifact(&origin, "in", "/data.zip").unpack(Archive::Zip)];
    for expected in [Served::Downloaded, Served::Cached, Served::Cached] {
        let run = tempfile::tempdir().unwrap();
        *run_dir.lock().unwrap() = Some(run.path().to_path_buf());
        let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_eq!(served(&report), [expected]);
        assert_eq!(report.artifacts[0].materialized, Materialized::Unpacked);
        assert_eq!(
            listing(run.path()),
            ["in/", "in/data/", "in/data/a.bin", "in/data/b.txt"]
        );
        assert_eq!(std::fs::read(run.path().join("in/data/a.bin")).unwrap(), a);
        fetcher.stored().await;
    }
    assert_eq!(origin.hits("/data.zip"), 1);
    // The download was written to the run directory to be unpacked; a cached copy
    // is unpacked where it is, in the cache.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].len(), 1, "the downloaded archive: {seen:?}");
    assert!(seen[0][0].ends_with(".part"), "{seen:?}");
    assert_eq!(seen[1..], [Vec::<String>::new(), Vec::new()], "{seen:?}");
}

#[tokio::test]
async fn an_archive_that_escapes_is_an_error_and_leaves_nothing() {
    let origin = Origin::start().await.unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_cksum();
    tar.append_link(&mut header, "etc", "/etc").unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_cksum();
    tar.append_data(&mut header, "etc/evil", &b"evil"[..])
        .unwrap();
    origin.always("/evil.tar", Reply::ok(tar.into_inner().unwrap()));
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let error = fetcher(cache.path())
        .fetch(
            &[artifact(&origin, "evil", "/evil.tar").unpack(Archive::Tar)],
            run.path(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::Unpack { ref name, .. } if name == "evil"),
        "{error:?}"
    );
    assert!(listing(run.path()).is_empty(), "{:?}", listing(run.path()));
}

#[tokio::test]
async fn a_redirected_artifact_is_cached_under_each_url() {
    let origin = Origin::start().await.unwrap();
    let target = origin.url("/real");
    origin.always(
        "/latest",
        Reply::status(301)
            .header("location", target)
            .header("cache-control", "max-age=600"),
    );
    origin.always(
        "/real",
        Reply::ok("the real thing").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let artifacts = [artifact(&origin, "thing", "/latest")];
    for _ in 0..2 {
        let run = tempfile::tempdir().unwrap();
        fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_eq!(
            std::fs::read(run.path().join("thing")).unwrap(),
            b"the real thing"
        );
    }
    assert_eq!(origin.total_hits(), 2, "each hop asked once");
}

#[tokio::test]
async fn a_second_host_gets_the_artifact_from_the_shared_tier() {
    let redis = testbed::redis::RedisServer::start().unwrap();
    let origin = Origin::start().await.unwrap();
    let data = body(3 << 20, 7);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    let host = async |cache: &Path| {
        Fetcher::builder()
            .cache_dir(cache)
            .shared_tier(
                cachecontrol::RedisCache::new(redis.url().as_str())
                    .await
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let (cache_one, cache_two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let artifacts = [artifact(&origin, "data", "/data").sha256(sha256(&data))];
    let one = host(cache_one.path()).await;
    let first_run = tempfile::tempdir().unwrap(); // kept: the cache copies from it
    let first = one.fetch(&artifacts, first_run.path()).await.unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    one.close().await.unwrap();

    // Another host, with an empty file cache of its own.
    let two = host(cache_two.path()).await;
    let run = tempfile::tempdir().unwrap();
    let second = two.fetch(&artifacts, run.path()).await.unwrap();
    assert_eq!(served(&second), [Served::SharedTier]);
    assert_eq!(second.network_bytes(), data.len() as u64);
    assert_eq!(std::fs::read(run.path().join("data")).unwrap(), data);
    assert_eq!(origin.hits("/data"), 1, "the origin was not asked again");
    // Then from its own file cache.
    let mut third = None;
    for _ in 0..50 {
        let report = two
            .fetch(&artifacts, tempfile::tempdir().unwrap().path())
            .await
            .unwrap();
        if report.artifacts[0].served == Served::Cached {
            third = Some(report);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        third.is_some(),
        "the shared copy was kept in the host's file cache"
    );
    two.close().await.unwrap();
}

#[tokio::test]
async fn no_more_artifacts_than_the_limit_are_fetched_at_once() {
    let origin = Origin::start().await.unwrap();
    for n in 0..6 {
        origin.always(
            &format!("/{n}"),
            Reply::ok(format!("artifact {n}")).delay(Duration::from_millis(100)),
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let in_flight = Arc::new(Mutex::new((0usize, 0usize)));
    let counter = Arc::clone(&in_flight);
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .concurrency(2)
        .on_progress(move |progress| {
            let mut counts = counter.lock().unwrap();
            match progress.event {
                ProgressEvent::Started => counts.0 += 1,
                ProgressEvent::Done { .. } => counts.0 -= 1,
                _ => {}
            }
            counts.1 = counts.1.max(counts.0);
        })
        .build()
        .unwrap();
    let artifacts: Vec<Artifact> = (0..6)
        .map(|n| artifact(&origin, &format!("a{n}"), &format!("/{n}")))
        .collect();
    let run = tempfile::tempdir().unwrap();
    let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
    let names: Vec<&str> = report.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["a0", "a1", "a2", "a3", "a4", "a5"],
        "reported in the order given"
    );
    assert_eq!(in_flight.lock().unwrap().1, 2, "two at a time, never more");
    for n in 0..6 {
        assert_eq!(
            std::fs::read_to_string(run.path().join(format!("a{n}"))).unwrap(),
            format!("artifact {n}")
        );
    }
}

#[tokio::test]
async fn a_cancelled_fetch_leaves_nothing_in_the_run_directory_or_the_cache() {
    let origin = Origin::start().await.unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    origin.always(
        "/big",
        Reply::ok(body(8 << 20, 8))
            .header("cache-control", "max-age=600")
            .chunked(16)
            .gate(Arc::clone(&gate)),
    );
    let cache = tempfile::tempdir().unwrap();
    let (started, mut receiving) = tokio::sync::mpsc::unbounded_channel();
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .on_progress(move |progress| {
            if matches!(progress.event, ProgressEvent::Bytes { .. }) {
                let _ = started.send(());
            }
        })
        .build()
        .unwrap();
    let run = tempfile::tempdir().unwrap();
    let task = {
        let fetcher = fetcher.clone();
        let artifacts = [artifact(&origin, "big", "/big")];
        let dir = run.path().to_path_buf();
        tokio::spawn(async move { fetcher.fetch(&artifacts, &dir).await })
    };
    gate.add_permits(4);
    receiving.recv().await.expect("some bytes arrived");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    gate.add_permits(100);
    let mut left = listing(run.path());
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = listing(run.path());
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    let report = fetcher
        .fetch(&[artifact(&origin, "big", "/big")], run.path())
        .await
        .unwrap();
    assert_eq!(
        served(&report),
        [Served::Downloaded],
        "nothing half-stored in the cache"
    );
}

#[tokio::test]
async fn stored_errors_are_not_used_as_artifacts() {
    let origin = Origin::start().await.unwrap();
    // A stale stored 404 is not a copy with the digest: the origin is asked.
    origin.sequence(
        "/late",
        vec![
            Reply::status(404).header("cache-control", "max-age=0"),
            Reply::ok("arrived").header("cache-control", "max-age=600"),
        ],
    );
    // A stored 503 is not what a retry gets.
    origin.sequence(
        "/flaky",
        vec![
            Reply::status(503).header("cache-control", "max-age=600"),
            Reply::ok("recovered").header("cache-control", "max-age=600"),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let late = [artifact(&origin, "late", "/late").sha256(sha256(b"arrived"))];
    let error = fetcher
        .fetch(&late, tempfile::tempdir().unwrap().path())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("404") && error.to_string().contains("after 1 attempt"),
        "{error}"
    );
    let run = tempfile::tempdir().unwrap();
    fetcher.fetch(&late, run.path()).await.unwrap();
    assert_eq!(std::fs::read(run.path().join("late")).unwrap(), b"arrived");

    let report = fetcher
        .fetch(&[artifact(&origin, "flaky", "/flaky")], run.path())
        .await
        .unwrap();
    assert_eq!(report.artifacts[0].attempts, 2);
    assert_eq!(origin.hits("/flaky"), 2, "the retry reached the origin");
    assert_eq!(
        std::fs::read(run.path().join("flaky")).unwrap(),
        b"recovered"
    );
}

#[tokio::test]
async fn a_mismatch_after_a_redirect_leaves_nothing_in_the_cache() {
    let origin = Origin::start().await.unwrap();
    let target = origin.url("/real");
    origin.always("/latest", Reply::status(302).header("location", target));
    origin.always(
        "/real",
        Reply::ok("the real thing").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let run = tempfile::tempdir().unwrap();
    let wrong = [artifact(&origin, "thing", "/latest").sha256(sha256(b"something else"))];
    let error = fetcher.fetch(&wrong, run.path()).await.unwrap_err();
    assert!(
        matches!(error, FetchError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    let report = fetcher
        .fetch(&[artifact(&origin, "thing", "/latest")], run.path())
        .await
        .unwrap();
    assert_eq!(
        served(&report),
        [Served::Downloaded],
        "the redirect's target was forgotten too"
    );
    assert_eq!(origin.hits("/real"), 2);
}

#[tokio::test]
async fn two_artifacts_of_one_url_in_one_fetch_share_one_download() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data",
        Reply::ok("same").header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::builder()
        .cache_dir(cache.path())
        .concurrency(1)
        .build()
        .unwrap();
    let run = tempfile::tempdir().unwrap();
    let report = fetcher
        .fetch(
            &[
                artifact(&origin, "one", "/data"),
                artifact(&origin, "two", "/data"),
            ],
            run.path(),
        )
        .await
        .unwrap();
    assert_eq!(served(&report), [Served::Downloaded, Served::Cached]);
    assert_eq!(origin.hits("/data"), 1);
}

/// A MemoryCache whose `put` takes the whole body, then waits for a permit of
/// `gate` before committing (or, when `gate_first`, waits before taking the body):
/// the cache's copy is stored when the test says.
#[derive(Debug)]
struct GatedStore {
    inner: cachecontrol::MemoryCache,
    gate: Arc<tokio::sync::Semaphore>,
    gate_first: bool,
}

#[async_trait::async_trait]
impl cachecontrol::Cache for GatedStore {
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<cachecontrol::store::Entry>, cachecontrol::StoreError> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        meta: cachecontrol::store::Meta,
        body: cachecontrol::store::Body,
    ) -> Result<(), cachecontrol::StoreError> {
        let mut permit = None;
        if self.gate_first {
            permit = Some(self.gate.acquire().await);
        }
        let mut stream = body.into_stream();
        let mut whole = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            whole.extend_from_slice(&chunk?);
        }
        let _permit = match permit {
            Some(permit) => permit,
            None => self.gate.acquire().await,
        }
        .map_err(|_| cachecontrol::StoreError::Closed)?;
        let body = cachecontrol::store::Body::Bytes(whole.into());
        self.inner.put(key, meta, body).await
    }
    async fn update(
        &self,
        key: &str,
        policy: Arc<cachecontrol::policy::CachePolicy>,
    ) -> Result<bool, cachecontrol::StoreError> {
        self.inner.update(key, policy).await
    }
    async fn delete(&self, key: &str) -> Result<(), cachecontrol::StoreError> {
        self.inner.delete(key).await
    }
    fn entries(&self) -> cachecontrol::store::EntryStream<'_> {
        self.inner.entries()
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, cachecontrol::StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn clear(&self) -> Result<(), cachecontrol::StoreError> {
        self.inner.clear().await
    }
    async fn close(&self) -> Result<(), cachecontrol::StoreError> {
        self.inner.close().await
    }
}

/// A [`GatedStore`], and its gate.
fn gated_store() -> (Arc<GatedStore>, Arc<tokio::sync::Semaphore>) {
    gated_store_with(false)
}

/// A [`GatedStore`] that waits for its gate before taking a body in when
/// `gate_first`, and its gate.
fn gated_store_with(gate_first: bool) -> (Arc<GatedStore>, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = GatedStore {
        inner: cachecontrol::MemoryCache::new(64 << 20),
        gate: Arc::clone(&gate),
        gate_first,
    };
    (Arc::new(store), gate)
}

/// How many entries a store holds.
async fn entries(store: &dyn cachecontrol::Cache) -> usize {
    futures_util::TryStreamExt::try_collect::<Vec<_>>(store.entries())
        .await
        .unwrap()
        .len()
}

/// A large download (written once, into the run directory) reaches the cache from
/// the job's file after the fetch has returned, and only as it was downloaded.
#[tokio::test]
async fn a_large_download_is_copied_from_the_jobs_file_into_the_cache_after_the_fetch() {
    let HandOver {
        origin,
        store,
        gate,
        fetcher,
        artifacts,
        data,
        _cache,
        ..
    } = HandOver::start("data.bin", "/data", body(2 << 20, 11)).await;
    let Some(run) = hand_over_dir() else { return };
    let first = fetcher.fetch(&artifacts, run.path()).await.unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    assert_eq!(entries(&*store).await, 0, "the cache has nothing yet");

    gate.add_permits(1);
    fetcher.stored().await;
    assert_eq!(entries(&*store).await, 1);
    let again = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert_eq!(std::fs::read(again.path().join("data.bin")).unwrap(), data);
    assert_eq!(origin.total_hits(), 1);
}

#[tokio::test]
async fn a_job_that_writes_its_file_before_the_cache_copied_it_has_the_cache_download_it_again() {
    let HandOver {
        origin,
        store,
        gate,
        fetcher,
        artifacts,
        data,
        _cache,
        ..
    } = HandOver::start("data.bin", "/data", body(2 << 20, 12)).await;
    let Some(run) = hand_over_dir() else { return };
    fetcher.fetch(&artifacts, run.path()).await.unwrap();
    // The job changes its copy in place, same length, before the cache reads it.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(run.path().join("data.bin"))
        .unwrap();
    file.write_all(b"changed by the job").unwrap();
    drop(file);

    // The hand-over is refused; the cache downloads the artifact for itself.
    gate.add_permits(2);
    fetcher.stored().await;
    assert_eq!(origin.total_hits(), 2, "downloaded again for the cache");
    assert_eq!(entries(&*store).await, 1);
    let again = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert_eq!(
        std::fs::read(again.path().join("data.bin")).unwrap(),
        data,
        "what the job changed is not in the cache"
    );
    assert_eq!(origin.total_hits(), 2);
}

/// Whatever the timing of a job's write against the cache's copy of a downloaded
/// file (on a real file cache), the cache never gets the job's change, and has the
/// artifact once the fetcher is done storing.
#[tokio::test]
async fn a_job_that_writes_its_file_at_once_never_changes_what_the_cache_gets() {
    let origin = Origin::start().await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    for round in 0..5u8 {
        let path = format!("/data{round}");
        let data = body(2 << 20, round);
        origin.always(
            &path,
            Reply::ok(data.clone()).header("cache-control", "max-age=600"),
        );
        let artifacts = [artifact(&origin, "data.bin", &path)];
        let Some(run) = hand_over_dir() else { return };
        fetcher.fetch(&artifacts, run.path()).await.unwrap();
        // In place, at the same length: what a copy of the file's length would see.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(run.path().join("data.bin"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"changed by the job", 0).unwrap();
        drop(file);
        fetcher.stored().await;
        let again = tempfile::tempdir().unwrap();
        let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
        assert_eq!(served(&second), [Served::Cached], "round {round}");
        assert!(
            std::fs::read(again.path().join("data.bin")).unwrap() == data,
            "round {round}: the cache has the artifact as downloaded"
        );
        assert!((1..=2).contains(&origin.hits(&path)), "round {round}");
    }
}

#[tokio::test]
async fn a_run_directory_removed_before_the_cache_copied_its_file_has_the_cache_download_it_again()
{
    let HandOver {
        origin,
        gate,
        fetcher,
        artifacts,
        data,
        _cache,
        ..
    } = HandOver::start("data.bin", "/data", body(2 << 20, 13)).await;
    let Some(run) = hand_over_dir() else { return };
    fetcher.fetch(&artifacts, run.path()).await.unwrap();
    // Removed at once: a removal cannot be told from a change (a job may change
    // the file, set its times back and remove it), so the hand-over is refused.
    drop(run);

    gate.add_permits(2);
    fetcher.stored().await;
    assert_eq!(origin.total_hits(), 2, "downloaded again for the cache");
    let again = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert_eq!(std::fs::read(again.path().join("data.bin")).unwrap(), data);
}

/// A job that changes its file in place, sets its times back and removes it before
/// the cache copied it does not get its change into the cache.
#[tokio::test]
async fn a_change_with_the_times_set_back_and_the_file_removed_does_not_reach_the_cache() {
    let HandOver {
        origin: _origin,
        gate,
        fetcher,
        artifacts,
        data,
        _cache,
        ..
    } = HandOver::start("data.bin", "/data", body(2 << 20, 15)).await;
    let Some(run) = hand_over_dir() else { return };
    fetcher.fetch(&artifacts, run.path()).await.unwrap();
    let path = run.path().join("data.bin");
    let times = std::fs::metadata(&path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"changed by the job", 0).unwrap();
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(times.modified().unwrap())
            .set_accessed(times.accessed().unwrap()),
    )
    .unwrap();
    drop(file);
    drop(run);

    gate.add_permits(2);
    fetcher.stored().await;
    let again = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert!(
        std::fs::read(again.path().join("data.bin")).unwrap() == data,
        "the job's change is not in the cache"
    );
}

/// On a file system whose change times do not tell every write (tmpfs: a write
/// through a shared mapping), a large download is stored as it arrives, before the
/// job has its file.
#[tokio::test]
async fn on_tmpfs_a_large_download_is_stored_as_it_arrives() {
    let Ok(run) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: nothing to check");
        return;
    };
    let HandOver {
        origin,
        gate,
        fetcher,
        artifacts,
        data,
        _cache,
        ..
    } = HandOver::start("data.bin", "/data", body(2 << 20, 16)).await;
    fetcher.fetch(&artifacts, run.path()).await.unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(run.path().join("data.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"changed by the job", 0).unwrap();
    drop(file);

    gate.add_permits(1);
    fetcher.stored().await;
    assert_eq!(origin.total_hits(), 1, "stored from the download itself");
    let again = tempfile::tempdir().unwrap();
    let second = fetcher.fetch(&artifacts, again.path()).await.unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert!(std::fs::read(again.path().join("data.bin")).unwrap() == data);
}

/// While the cache copies a downloaded file, the job can run it: no descriptor
/// open for writing is left on it (execve refuses such a file: ETXTBSY).
#[tokio::test]
async fn a_downloaded_program_can_be_run_while_the_cache_copies_it() {
    let mut script = b"#!/bin/sh\necho ran\n".to_vec();
    script.extend(std::iter::repeat_n(b'#', 2 << 20));
    script.push(b'\n');
    let HandOver {
        origin: _origin,
        gate,
        fetcher,
        artifacts,
        _cache,
        ..
    } = HandOver::start("tool", "/tool", script).await;
    let Some(run) = hand_over_dir() else { return };
    fetcher.fetch(&artifacts, run.path()).await.unwrap();
    let tool = run.path().join("tool");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = std::process::Command::new(&tool).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ran\n");
    gate.add_permits(2);
    fetcher.stored().await;
}

/// A loopback origin serving one fresh body, and a fetcher over a [`GatedStore`]
/// that waits for its gate before taking a body in: what the tests of the hand-over
/// of large downloads start from.
struct HandOver {
    origin: Origin,
    data: Vec<u8>,
    store: Arc<GatedStore>,
    gate: Arc<tokio::sync::Semaphore>,
    fetcher: Fetcher,
    artifacts: [Artifact; 1],
    _cache: tempfile::TempDir,
}

impl HandOver {
    /// `data` served at `path`, fetched as the artifact `name`.
    async fn start(name: &str, path: &str, data: Vec<u8>) -> HandOver {
        let origin = Origin::start().await.unwrap();
        origin.always(
            path,
            Reply::ok(data.clone()).header("cache-control", "max-age=600"),
        );
        let cache = tempfile::tempdir().unwrap();
        let (store, gate) = gated_store_with(true);
        let fetcher = gated_fetcher(cache.path(), &store, Duration::from_secs(600));
        let artifacts = [artifact(&origin, name, path)];
        HandOver {
            origin,
            data,
            store,
            gate,
            fetcher,
            artifacts,
            _cache: cache,
        }
    }
}

/// A temp dir where large downloads are handed to the cache once in place: on the
/// file system the crate is built on, when it is ext4, XFS or Btrfs; `None`, with
/// a note, elsewhere.
fn hand_over_dir() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kind = rustix::fs::statfs(dir.path()).unwrap().f_type;
    if matches!(u64::try_from(kind), Ok(0xEF53 | 0x5846_5342 | 0x9123_683E)) {
        Some(dir)
    } else {
        eprintln!(
            "{}: not ext4, XFS or Btrfs ({kind:#x}): nothing to check",
            dir.path().display()
        );
        None
    }
}

/// A fetcher over `store`, with its locks in `cache_dir` (two of them over one
/// store and one directory: two processes of one host).
fn gated_fetcher(cache_dir: &Path, store: &Arc<GatedStore>, store_wait: Duration) -> Fetcher {
    Fetcher::builder()
        .cache_dir(cache_dir)
        .store(Arc::clone(store))
        .store_wait(store_wait)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_fetch_returns_before_the_cache_stores_its_download_and_the_next_one_waits_for_it() {
    let origin = Origin::start().await.unwrap();
    let data = body(1 << 20, 3);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let (store, gate) = gated_store();
    let fetcher = gated_fetcher(cache.path(), &store, Duration::from_secs(600));
    let artifacts = [artifact(&origin, "data.bin", "/data")];
    let run = tempfile::tempdir().unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        fetcher.fetch(&artifacts, run.path()),
    )
    .await
    .expect("the fetch does not wait for the store")
    .unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    assert_eq!(std::fs::read(run.path().join("data.bin")).unwrap(), data);

    // The next fetch of the URL on the host (here by another fetcher, as another
    // process) waits for the download to be stored, then uses it.
    let other = gated_fetcher(cache.path(), &store, Duration::from_secs(600));
    let again = tempfile::tempdir().unwrap();
    let second = other.fetch(&artifacts, again.path());
    let mut second = std::pin::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "the second fetch waits while the first one's body is being stored"
    );
    gate.add_permits(1);
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second fetch goes on once the body is stored")
        .unwrap();
    assert_eq!(served(&second), [Served::Cached]);
    assert_eq!(second.artifacts[0].attempts, 0);
    assert_eq!(origin.total_hits(), 1, "downloaded once");
    assert_eq!(std::fs::read(again.path().join("data.bin")).unwrap(), data);
    fetcher.close().await.unwrap();
}

#[tokio::test]
async fn a_store_that_never_commits_holds_the_next_fetch_for_store_wait_at_most() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data",
        Reply::ok(body(100_000, 4)).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let (store, _closed_gate) = gated_store();
    let fetcher = gated_fetcher(cache.path(), &store, Duration::from_millis(300));
    let artifacts = [artifact(&origin, "data.bin", "/data")];
    let first = fetcher
        .fetch(&artifacts, tempfile::tempdir().unwrap().path())
        .await
        .unwrap();
    assert_eq!(served(&first), [Served::Downloaded]);
    // Past the wait, the lock is released: the next fetch downloads it again.
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        fetcher.fetch(&artifacts, tempfile::tempdir().unwrap().path()),
    )
    .await
    .expect("the next fetch is held for the store wait at most")
    .unwrap();
    assert_eq!(served(&second), [Served::Downloaded]);
    assert_eq!(origin.total_hits(), 2);
    // And waiting for what is being stored ends too.
    tokio::time::timeout(Duration::from_secs(20), fetcher.stored())
        .await
        .expect("stored() is bounded by the store wait");
}

/// A fetcher like [`fetcher`], keeping prepared copies up to `max_bytes`.
fn preparing_fetcher(cache_dir: &Path, max_bytes: u64) -> Fetcher {
    Fetcher::builder()
        .cache_dir(cache_dir)
        .prepared_copies(max_bytes)
        .build()
        .unwrap()
}

/// The names of the prepared copies in a cache directory (not the partial ones).
fn prepared_copies(cache_dir: &Path) -> Vec<String> {
    std::fs::read_dir(cache_dir.join("prepared"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn by_default_a_repeat_moves_in_a_copy_made_after_the_run_before() {
    let origin = Origin::start().await.unwrap();
    // At least 1 MiB: smaller files are just copied.
    let data = body(2 << 20, 7);
    origin.always(
        "/data",
        Reply::ok(data.clone()).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    // The defaults, prepared copies included.
    let fetcher = Fetcher::builder().cache_dir(cache.path()).build().unwrap();
    let artifacts = [artifact(&origin, "data", "/data")];
    let run = |n: usize| {
        let (fetcher, artifacts) = (fetcher.clone(), artifacts.clone());
        async move {
            let dir = tempfile::tempdir().unwrap();
            let report = fetcher.fetch(&artifacts, dir.path()).await.unwrap();
            fetcher.stored().await;
            let file = std::fs::read(dir.path().join("data")).unwrap();
            (n, report.artifacts[0].materialized, file, dir)
        }
    };
    let (_, first, _, _) = run(1).await;
    assert_eq!(first, Materialized::Streamed);
    assert!(
        prepared_copies(cache.path()).is_empty(),
        "nothing to copy yet"
    );
    let (_, second, file, _) = run(2).await;
    assert_eq!(file, data);
    if second == Materialized::Reflink {
        // A file system that shares blocks needs no prepared copy.
        assert!(prepared_copies(cache.path()).is_empty());
        return;
    }
    assert_eq!(second, Materialized::KernelCopy);
    assert_eq!(prepared_copies(cache.path()).len(), 1, "one copy made");

    let (_, third, file, third_dir) = run(3).await;
    assert_eq!(third, Materialized::Prepared);
    assert_eq!(file, data);
    // The job's copy is its own: what it writes reaches neither the cache nor the
    // next prepared copy.
    std::fs::write(third_dir.path().join("data"), b"written by the job").unwrap();
    let (_, fourth, file, _) = run(4).await;
    assert_eq!(fourth, Materialized::Prepared);
    assert_eq!(file, data);
    assert_eq!(prepared_copies(cache.path()).len(), 1, "one copy ready");
    assert_eq!(origin.hits("/data"), 1);
}

#[tokio::test]
async fn a_copy_prepared_from_an_older_version_is_not_used_for_the_new_one() {
    let origin = Origin::start().await.unwrap();
    let old = body(1 << 20, 1);
    let new = body(1 << 20, 2);
    origin.route("/data", with_etag(old.clone(), "\"1\"", "max-age=0"));
    let cache = tempfile::tempdir().unwrap();
    let fetcher = preparing_fetcher(cache.path(), 64 << 20);
    let artifacts = [artifact(&origin, "data", "/data")];
    let fetch = || async {
        let dir = tempfile::tempdir().unwrap();
        let report = fetcher.fetch(&artifacts, dir.path()).await.unwrap();
        fetcher.stored().await;
        let file = std::fs::read(dir.path().join("data")).unwrap();
        (
            report.artifacts[0].served,
            report.artifacts[0].materialized,
            file,
        )
    };
    fetch().await;
    // Revalidated: copied from the cache, and a copy of the old version prepared.
    let (served, materialized, file) = fetch().await;
    assert_eq!(served, Served::Revalidated);
    assert_eq!(file, old);
    if materialized == Materialized::Reflink {
        return;
    }
    assert_eq!(prepared_copies(cache.path()).len(), 1);

    origin.route("/data", with_etag(new.clone(), "\"2\"", "max-age=0"));
    let (served, _, file) = fetch().await;
    assert_eq!((served, file == new), (Served::Downloaded, true));
    let (served, materialized, file) = fetch().await;
    assert_eq!(served, Served::Revalidated);
    assert_eq!(
        materialized,
        Materialized::KernelCopy,
        "not the old version's copy"
    );
    assert!(file == new, "the new version");
    let (_, materialized, file) = fetch().await;
    assert_eq!(materialized, Materialized::Prepared);
    assert!(file == new, "the new version's copy");
}

#[tokio::test]
async fn without_prepared_copies_nothing_is_copied_ahead() {
    let origin = Origin::start().await.unwrap();
    origin.always(
        "/data",
        Reply::ok(body(1 << 20, 3)).header("cache-control", "max-age=600"),
    );
    let cache = tempfile::tempdir().unwrap();
    let fetcher = preparing_fetcher(cache.path(), 0);
    let artifacts = [artifact(&origin, "data", "/data")];
    for _ in 0..3 {
        let run = tempfile::tempdir().unwrap();
        let report = fetcher.fetch(&artifacts, run.path()).await.unwrap();
        assert_ne!(report.artifacts[0].materialized, Materialized::Prepared);
        fetcher.stored().await;
    }
    assert!(!cache.path().join("prepared").exists());
}
