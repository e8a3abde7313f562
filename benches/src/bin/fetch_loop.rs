//! Runs contenders of the `fetch` bench's first fetch in a loop, for a profiler
//! (`perf record -g`, `perf trace -s`, `strace -fc`) or for a quick comparison on a
//! noisy machine:
//!
//! ```sh
//! fetch_loop <contender> <iterations> [<contender> <iterations> ...]
//! ```
//!
//! A contender is `fetcher` (a new cache and run directory each time, the cache
//! closed after the timed fetch), `plain` (reqwest streaming the body to a file) or
//! `plain-two-copies` (to two files at once). Each iteration fetches a 1 GiB body
//! (`FETCH_LOOP_BYTES` sets another size) from a loopback origin, then runs `sync`
//! (not timed), as the bench does. Each pair prints the time of each iteration; a
//! name may come back, to alternate contenders; the median of each is printed at
//! the end.

use std::time::{Duration, Instant};

use benches::floor::download_to_files;
use benches::site::GeneratedOrigin;
use fetcher::{Artifact, Fetcher};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        !args.is_empty() && args.len().is_multiple_of(2),
        "usage: fetch_loop <contender> <iterations> [<contender> <iterations> ...]"
    );
    let len = match std::env::var("FETCH_LOOP_BYTES") {
        Ok(len) => len.parse::<u64>()?,
        Err(_) => 1 << 30,
    };
    let runtime = benches::runtime()?;
    let origin = runtime.block_on(GeneratedOrigin::start(len))?;
    let client = reqwest::Client::new();
    let mut times: Vec<(String, Vec<Duration>)> = Vec::new();
    for pair in args.chunks(2) {
        let (name, iterations) = (pair[0].as_str(), pair[1].parse::<u64>()?);
        for _ in 0..iterations {
            let before = vmstat();
            let elapsed = runtime.block_on(once(name, &client, origin.url(), len))?;
            if std::env::var_os("FETCH_LOOP_PHASES").is_some() {
                let after = vmstat();
                for (key, value) in &after {
                    let was = before.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v);
                    if value - was > 1000 {
                        eprintln!("  {key}: +{}", value - was);
                    }
                }
            }
            let _ = std::process::Command::new("sync").status();
            eprintln!("{name}: {:.1} ms", elapsed.as_secs_f64() * 1e3);
            match times.iter_mut().find(|(seen, _)| seen == name) {
                Some((_, all)) => all.push(elapsed),
                None => times.push((name.to_owned(), vec![elapsed])),
            }
        }
    }
    for (name, mut all) in times {
        all.sort();
        let median = all[all.len() / 2];
        eprintln!(
            "{name}: median {:.1} ms over {} ({:.2} GB/s)",
            median.as_secs_f64() * 1e3,
            all.len(),
            len as f64 / median.as_secs_f64() / 1e9
        );
    }
    Ok(())
}

/// The kernel's memory counters (`/proc/vmstat`), to see what an iteration made
/// the kernel do (includes what the untimed `close` did).
fn vmstat() -> Vec<(String, i64)> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn once(
    name: &str,
    client: &reqwest::Client,
    url: &str,
    len: u64,
) -> anyhow::Result<Duration> {
    let run = tempfile::Builder::new().prefix("bench-run-").tempdir()?;
    match name {
        "fetcher" => {
            let cache = tempfile::Builder::new().prefix("bench-cache-").tempdir()?;
            let start = Instant::now();
            let phases = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = std::sync::Arc::clone(&phases);
            let fetcher = Fetcher::builder()
                .cache_dir(cache.path())
                .on_progress(move |progress| {
                    let what = match progress.event {
                        fetcher::ProgressEvent::Bytes { done, .. } if done == 1 << 20 => {
                            "first MiB"
                        }
                        fetcher::ProgressEvent::Bytes { done, total } if Some(done) == total => {
                            "last byte"
                        }
                        fetcher::ProgressEvent::Done { .. } => "done",
                        _ => return,
                    };
                    if let Ok(mut phases) = seen.lock() {
                        phases.push((what, start.elapsed()));
                    }
                })
                .build()?;
            let artifact = Artifact::new("artifact.bin", url.parse()?);
            let start = Instant::now();
            let report = fetcher.fetch(&[artifact], run.path()).await?;
            let elapsed = start.elapsed();
            if std::env::var_os("FETCH_LOOP_PHASES").is_some()
                && let Ok(phases) = phases.lock()
            {
                for (what, at) in phases.iter() {
                    eprintln!("  {what}: {:.1} ms", at.as_secs_f64() * 1e3);
                }
            }
            anyhow::ensure!(report.artifacts[0].size == len, "{report:?}");
            fetcher.close().await?;
            Ok(elapsed)
        }
        "plain" | "plain-two-copies" => {
            let kept = tempfile::Builder::new().prefix("bench-cache-").tempdir()?;
            let copy = (name == "plain-two-copies").then(|| kept.path());
            let (elapsed, done) = download_to_files(client, url, run.path(), copy).await?;
            anyhow::ensure!(done == len, "short body: {done}");
            Ok(elapsed)
        }
        other => anyhow::bail!("unknown contender {other}"),
    }
}
