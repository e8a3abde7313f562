//! The fetcher's first fetch of a 1 GiB artifact, and a repeat, in constant memory.
//!
//! Fetches a 1 GiB artifact from a loopback origin ([`GeneratedOrigin`], which writes
//! the body as it sends it) into a new cache and run directory (downloaded, streamed
//! to disk, then copied into the cache), then again into another run directory
//! (copied from the cache), and records this process's peak resident set (`VmHWM`) in
//! `fetch_peak_memory.json` beside criterion's results. It fails when the peak
//! reaches 64 MiB.

use std::time::Instant;

use benches::results::{criterion_dir, peak_rss};
use benches::site::GeneratedOrigin;
use fetcher::{Artifact, Fetcher, Served};

const BODY: u64 = 1 << 30;
const LIMIT: u64 = 64 << 20;

fn main() -> anyhow::Result<()> {
    // cargo passes `--bench`; other words are filters, as criterion reads them.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "fetch_peak_memory".contains(f.as_str()))
    {
        return Ok(());
    }
    benches::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let origin = GeneratedOrigin::start(BODY).await?;
    let cache = tempfile::Builder::new().prefix("bench-cache-").tempdir()?;
    let fetcher = Fetcher::builder().cache_dir(cache.path()).build()?;
    let artifacts = [Artifact::new("artifact.bin", origin.url().parse()?)];

    let mut seconds = Vec::new();
    for expected in [Served::Downloaded, Served::Cached] {
        let run = tempfile::Builder::new().prefix("bench-run-").tempdir()?;
        let start = Instant::now();
        let report = fetcher.fetch(&artifacts, run.path()).await?;
        seconds.push(start.elapsed().as_secs_f64());
        // The run directory stays until the cache has copied the download from it.
        fetcher.stored().await;
        anyhow::ensure!(
            report.artifacts[0].served == expected && report.artifacts[0].size == BODY,
            "unexpected fetch: {report:?}"
        );
    }
    fetcher.close().await?;
    let peak = peak_rss()?;
    let record = serde_json::json!({
        "body_bytes": BODY,
        "peak_rss_bytes": peak,
        "first_seconds": seconds[0],
        "repeat_seconds": seconds[1],
    });
    let dir = criterion_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("fetch_peak_memory.json"),
        serde_json::to_vec_pretty(&record)?,
    )?;
    println!(
        "fetch_peak_memory: 1 GiB fetched in {:.1} s, again in {:.2} s; peak RSS {:.1} MiB (limit {} MiB)",
        seconds[0],
        seconds[1],
        peak as f64 / f64::from(1 << 20),
        LIMIT >> 20,
    );
    anyhow::ensure!(peak < LIMIT, "peak RSS {peak} bytes is not under {LIMIT}");
    Ok(())
}
