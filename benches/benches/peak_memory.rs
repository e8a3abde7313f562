//! A 1 GiB body stored and read back in constant memory.
//!
//! Streams a 1 GiB body from a loopback origin ([`GeneratedOrigin`], which writes it
//! as it sends it) through `CacheControl` into a `FileCache` (a miss, stored while it
//! is read), then reads it back from the cache (a hit), and records this process's
//! peak resident set (`VmHWM`). A bench target runs as a process of its own, so the
//! peak is this check's alone. It fails when the peak reaches 64 MiB.
//!
//! `cargo bench -p benches --bench peak_memory` runs it alone; a filter given to
//! `cargo bench` that does not name it skips it.

use std::time::Instant;

use benches::results::{PeakMemory, criterion_dir, peak_rss};
use benches::site::GeneratedOrigin;
use cachecontrol::{CacheControl, FileCache};

const BODY: u64 = 1 << 30;
const LIMIT: u64 = 64 << 20;

fn main() -> anyhow::Result<()> {
    // cargo passes `--bench`; other words are filters, as criterion reads them.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "peak_memory".contains(f.as_str())) {
        return Ok(());
    }
    let record = benches::runtime()?.block_on(run())?;
    record.save(&criterion_dir())?;
    println!(
        "peak_memory: {} MiB stored in {:.1} s and read back in {:.1} s; peak RSS {:.1} MiB (limit {} MiB)",
        record.body_bytes >> 20,
        record.store_seconds,
        record.read_seconds,
        record.peak_rss_bytes as f64 / f64::from(1 << 20),
        LIMIT >> 20,
    );
    anyhow::ensure!(
        record.peak_rss_bytes < LIMIT,
        "peak RSS {} bytes is not under {LIMIT}",
        record.peak_rss_bytes
    );
    Ok(())
}

async fn run() -> anyhow::Result<PeakMemory> {
    let origin = GeneratedOrigin::start(BODY).await?;
    let dir = tempfile::Builder::new()
        .prefix("bench-peak-memory-")
        .tempdir()?;
    let cache = CacheControl::new(FileCache::new(dir.path())?);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build();

    let start = Instant::now();
    let (status, stored) = fetch(&client, origin.url()).await?;
    let store_seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        status == "MISS" && stored == BODY,
        "first: {status}, {stored} bytes"
    );

    // The entry is committed once its body has been read to the end.
    let start = Instant::now();
    let mut read = fetch(&client, origin.url()).await?;
    for _ in 0..100 {
        if read.0 == "HIT" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        read = fetch(&client, origin.url()).await?;
    }
    let read_seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        read.0 == "HIT" && read.1 == BODY,
        "read back: {}, {} bytes",
        read.0,
        read.1
    );
    anyhow::ensure!(
        origin.requests() == 1,
        "the origin was asked {} times",
        origin.requests()
    );

    cache.close().await?;
    Ok(PeakMemory {
        body_bytes: BODY,
        peak_rss_bytes: peak_rss()?,
        store_seconds,
        read_seconds,
    })
}

/// One GET, the body read to its end and dropped: its `x-cache` and its length.
async fn fetch(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> anyhow::Result<(String, u64)> {
    let mut response = client.get(url).send().await?.error_for_status()?;
    let status = response
        .headers()
        .get(cachecontrol::X_CACHE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut len = 0;
    while let Some(chunk) = response.chunk().await? {
        len += chunk.len() as u64;
    }
    Ok((status, len))
}
