//! The fetcher with a 1 GiB artifact from a loopback origin:
//!
//! - `fetch_first/fetcher` against `fetch_first/plain`: the first fetch (a new cache,
//!   a new run directory: downloaded and streamed to the run directory's file)
//!   against plain reqwest streaming the same body to a file. Throughput in bytes.
//!   The time is the fetch's, until the run directory has its file; the cache copies
//!   that file, syncs and publishes its copy after it (`Fetcher::close`, not timed,
//!   waits for that before the next iteration; after each iteration of each
//!   contender, a `sync`, not timed, lets the disk finish what the last one left).
//!   `fetch_first/fetcher-until-stored` times the same fetch until the cache's copy
//!   is published too (`Fetcher::stored`): what the machine spends in all, while the
//!   job would already be running. And
//!   `fetch_first/plain-two-copies`: plain
//!   reqwest writing the body to two files at once, the least a fetch that leaves
//!   the job its own copy and keeps one must write where there are no reflinks.
//! - `fetch_repeat/fetcher` against `fetch_repeat/copy`: the next runs (fresh in the
//!   cache: no request, a new run directory), with the fetcher's defaults: the copy
//!   prepared after the run before (not timed) moved into place, or a reflink where
//!   the file system shares blocks; against copying the file (`std::fs::copy`).
//!   `fetch_repeat/fetcher-kernel-copy`: the same without prepared copies, the
//!   cached file copied by the kernel (not run where the repeat is a reflink);
//!   `fetch_repeat/fetcher-read-only`: a read-only artifact with a digest, which is
//!   a hard link to the cache's file.
//! - `fetch_peak_memory` (a target of its own) records the first fetch's peak
//!   resident set.
//!
//! The files are written to the system's temp dir; each iteration's run directory is
//! removed after it is timed.

use std::time::{Duration, Instant};

use benches::floor::download_to_files;
use benches::site::GeneratedOrigin;
use benches::{must, runtime};
use criterion::{BenchmarkId, Criterion, Throughput};
use fetcher::{Artifact, Fetcher, Materialized, Served};
use sha2::Digest;

const BODY: u64 = 1 << 30;
/// The parameter of every benchmark id here, as the `report` binary reads them.
const SIZE: &str = "1GiB";

fn artifact(url: &str) -> anyhow::Result<Artifact> {
    Ok(Artifact::new("artifact.bin", url.parse()?))
}

/// One timed fetch: until the run directory had its file, until the cache was
/// done with it too, and how the file got there.
struct Timed {
    to_file: Duration,
    to_stored: Duration,
    how: Materialized,
}

/// One fetch into a new run directory. The directory is removed once the cache is
/// done with it, as dadd's runner does: the cache copies a download from it.
async fn timed_fetch(
    fetcher: &Fetcher,
    artifact: Artifact,
    expected: Served,
) -> anyhow::Result<Timed> {
    let run = tempfile::Builder::new().prefix("bench-run-").tempdir()?;
    let start = Instant::now();
    let report = fetcher.fetch(&[artifact], run.path()).await?;
    let to_file = start.elapsed();
    fetcher.stored().await;
    let to_stored = start.elapsed();
    drop(run);
    let done = &report.artifacts[0];
    anyhow::ensure!(
        done.served == expected && done.size == BODY,
        "unexpected fetch: {report:?}"
    );
    Ok(Timed {
        to_file,
        to_stored,
        how: done.materialized,
    })
}

/// A repeat fetch while fresh, timed until the run directory has its file (not
/// timed: what the fetcher does after, such as preparing the next run's copy).
async fn repeat_once(
    fetcher: &Fetcher,
    wanted: Artifact,
    expected: Materialized,
) -> anyhow::Result<Duration> {
    let timed = timed_fetch(fetcher, wanted, Served::Cached).await?;
    let how = timed.how;
    anyhow::ensure!(how == expected, "materialized as {how:?}, not {expected:?}");
    Ok(timed.to_file)
}

/// Plain reqwest writing the body to a file in a new run directory (and, when
/// `two_copies`, to a second file as well: see [`download_to_files`]).
async fn plain_once(
    client: &reqwest::Client,
    url: &str,
    two_copies: bool,
) -> anyhow::Result<Duration> {
    let run = tempfile::Builder::new().prefix("bench-run-").tempdir()?;
    let kept = tempfile::Builder::new().prefix("bench-cache-").tempdir()?;
    let copy = two_copies.then(|| kept.path());
    let (elapsed, len) = download_to_files(client, url, run.path(), copy).await?;
    anyhow::ensure!(len == BODY, "short body: {len}");
    Ok(elapsed)
}

/// Between two first fetches, not timed: the disk writes what the last one left
/// to write (the files of a run removed, the cache's synced), so that no iteration
/// pays for the one before it.
fn settle() {
    // Without it the iterations are only noisier.
    let _ = std::process::Command::new("sync").status();
}

/// A temp dir for a measured iteration; a failure stops the bench.
fn temp_dir(prefix: &str) -> tempfile::TempDir {
    must(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(Into::into),
    )
}

/// A fetcher over a cache in `dir`; a failure stops the bench.
fn fetcher_in(dir: &std::path::Path) -> Fetcher {
    must(
        Fetcher::builder()
            .cache_dir(dir)
            .build()
            .map_err(Into::into),
    )
}

fn bench(criterion: &mut Criterion) {
    let runtime = must(runtime());
    let origin = must(runtime.block_on(GeneratedOrigin::start(BODY)));
    let url = origin.url().to_owned();

    let mut first = criterion.benchmark_group("fetch_first");
    first.sample_size(10).throughput(Throughput::Bytes(BODY));
    // The fetcher timed until the run directory has its file (the cache's copy is
    // synced and published after it, while the job would run: not timed, but done
    // before the next iteration starts), and until the cache's copy is stored too.
    for (name, until_stored) in [("fetcher", false), ("fetcher-until-stored", true)] {
        first.bench_function(BenchmarkId::new(name, SIZE), |bencher| {
            bencher.to_async(&runtime).iter_custom(|iterations| {
                let url = url.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let cache = temp_dir("bench-cache-");
                        let fetcher = fetcher_in(cache.path());
                        let wanted = must(artifact(&url));
                        let timed = must(timed_fetch(&fetcher, wanted, Served::Downloaded).await);
                        total += if until_stored {
                            timed.to_stored
                        } else {
                            timed.to_file
                        };
                        must(fetcher.close().await.map_err(Into::into));
                        drop(cache);
                        settle();
                    }
                    total
                }
            });
        });
    }
    let client = reqwest::Client::new();
    for (name, two_copies) in [("plain", false), ("plain-two-copies", true)] {
        first.bench_function(BenchmarkId::new(name, SIZE), |bencher| {
            bencher.to_async(&runtime).iter_custom(|iterations| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        total += must(plain_once(&client, &url, two_copies).await);
                        settle();
                    }
                    total
                }
            });
        });
    }
    first.finish();

    // One cache for the repeats, primed once; the file of that first run is what
    // the floor copies.
    let cache = temp_dir("bench-cache-");
    let fetcher = fetcher_in(cache.path());
    let primed = temp_dir("bench-run-");
    must(
        runtime
            .block_on(fetcher.fetch(&[must(artifact(&url))], primed.path()))
            .map_err(Into::into),
    );
    runtime.block_on(fetcher.stored());
    let source = primed.path().join("artifact.bin");
    // The first repeat copies (or shares blocks where the file system can); with the
    // defaults, where it copied, it prepares the copy for the next run.
    let first_repeat =
        must(runtime.block_on(timed_fetch(&fetcher, must(artifact(&url)), Served::Cached)));
    let reflinks = first_repeat.how == Materialized::Reflink;
    let mut repeat = criterion.benchmark_group("fetch_repeat");
    repeat.sample_size(10).throughput(Throughput::Bytes(BODY));
    // The defaults: each repeat moves in the copy prepared after the one before
    // (not timed: runs of one job are apart), or shares blocks.
    let moved_in = if reflinks {
        Materialized::Reflink
    } else {
        Materialized::Prepared
    };
    bench_repeat(
        &mut repeat,
        &runtime,
        "fetcher",
        &fetcher,
        must(artifact(&url)),
        moved_in,
    );
    // Without prepared copies, each repeat is a copy by the kernel: where the file
    // system shares blocks, that is the row above.
    if reflinks {
        eprintln!("fetch_repeat/fetcher-kernel-copy: not run, the repeat is a reflink here");
    } else {
        let copying = must(
            Fetcher::builder()
                .cache_dir(cache.path())
                .prepared_copies(0)
                .build()
                .map_err(Into::into),
        );
        let wanted = must(artifact(&url));
        bench_repeat(
            &mut repeat,
            &runtime,
            "fetcher-kernel-copy",
            &copying,
            wanted,
            Materialized::KernelCopy,
        );
    }
    // A read-only artifact with a digest is a hard link to the cache's file: no copy.
    let digest = must(
        std::fs::read(&source)
            .map(|body| fetcher::Sha256(sha2::Sha256::digest(body).into()))
            .map_err(Into::into),
    );
    let linked = must(artifact(&url)).read_only(true).sha256(digest);
    bench_repeat(
        &mut repeat,
        &runtime,
        "fetcher-read-only",
        &fetcher,
        linked,
        Materialized::HardLink,
    );
    repeat.bench_function(BenchmarkId::new("copy", SIZE), |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let run = temp_dir("bench-run-");
                let start = Instant::now();
                must(std::fs::copy(&source, run.path().join("artifact.bin")).map_err(Into::into));
                total += start.elapsed();
            }
            total
        });
    });
    repeat.finish();
}

/// `fetch_repeat/{name}`: repeats of `wanted` while fresh, each into a new run
/// directory, each expected to put the file there as `how`.
fn bench_repeat(
    repeat: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    fetcher: &Fetcher,
    wanted: Artifact,
    how: Materialized,
) {
    repeat.bench_function(BenchmarkId::new(name, SIZE), |bencher| {
        bencher.to_async(runtime).iter_custom(|iterations| {
            let (fetcher, wanted) = (fetcher.clone(), wanted.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += must(repeat_once(&fetcher, wanted.clone(), how).await);
                }
                total
            }
        });
    });
}

fn main() {
    let mut criterion = benches::criterion();
    bench(&mut criterion);
    criterion.final_summary();
}
