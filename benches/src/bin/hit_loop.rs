//! Runs contenders of the `hit` bench in a loop, for a profiler (`perf record`,
//! `strace -c`, `valgrind --tool=callgrind`, whose instruction counts do not depend on
//! how busy the machine is) or for a quick comparison on a noisy machine.
//!
//! ```sh
//! hit_loop <contender> <iterations> [<contender> <iterations> ...]
//! ```
//!
//! A contender is one of `ours-memory`, `ours-redis`, `floor-memory`, `floor-redis`,
//! with a 1 KiB body, prepared once as the bench prepares it (ours primed: every
//! measured request is a hit); or, for the `miss` bench's requests (every response
//! `no-store`), `miss-ours-memory`, `miss-ours-file` or `miss-reqwest`. Each pair runs its contender that many times and
//! prints the mean time of an iteration; a name may come back, to alternate
//! contenders, and the fastest and the median run of each are printed at the end.
//! The instructions of an iteration are the difference between two runs that differ
//! only in their iteration counts, divided by the difference of the counts.
//!
//! `REDIS_URL=redis://...` uses that Redis instead of starting one, so that `perf
//! stat` and `strace -f` see only this process. `CURRENT_THREAD=1` runs everything on
//! one thread (a current-thread runtime).

use std::time::Instant;

use benches::floor::Prepared;
use benches::site::{Resource, Site};
use benches::{BodySize, Contender, must, wait_for};
use testbed::redis::RedisServer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        !args.is_empty() && args.len().is_multiple_of(2),
        "usage: hit_loop <contender> <iterations> [<contender> <iterations> ...]"
    );
    let runtime = if std::env::var_os("CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        benches::runtime()?
    };
    // Started only when no Redis is given; kept until the end.
    let (redis_url, _redis) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let redis = RedisServer::start()?;
            (redis.url(), Some(redis))
        }
    };
    let site = runtime.block_on(Site::start())?;
    let size = BodySize::OneKib;
    let mut contenders: Vec<Contender> = Vec::new();
    // The mean of each run, by contender, in the order they were first named.
    let mut means: Vec<(String, Vec<f64>)> = Vec::new();
    for pair in args.chunks(2) {
        let (name, iterations) = (&pair[0], pair[1].parse::<u64>()?);
        let contender = match contenders.iter().position(|c| c.name() == name) {
            Some(at) => &contenders[at],
            None => {
                contenders.push(runtime.block_on(prepare(&site, &redis_url, size, name))?);
                &contenders[contenders.len() - 1]
            }
        };
        let elapsed = runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..iterations {
                must(contender.fetch().await);
            }
            started.elapsed()
        });
        let mean = elapsed.as_secs_f64() * 1e6 / iterations.max(1) as f64;
        println!("{name}: {iterations} iterations, {mean:.2} µs each");
        match means.iter_mut().find(|(known, _)| known == name) {
            Some((_, runs)) => runs.push(mean),
            None => means.push((name.clone(), vec![mean])),
        }
    }
    // On a busy machine, the fastest run is the one least disturbed.
    for (name, mut runs) in means {
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        println!(
            "{name}: {} runs, fastest {:.2} µs, median {median:.2} µs",
            runs.len(),
            runs[0]
        );
    }
    for contender in &contenders {
        runtime.block_on(contender.close())?;
    }
    Ok(())
}

/// The contender named `name`, ready: a cache primed with the resource, a floor
/// holding the origin's response.
async fn prepare(
    site: &Site,
    redis_url: &str,
    size: BodySize,
    name: &str,
) -> anyhow::Result<Contender> {
    let len = size.len();
    if let Some(miss) = name.strip_prefix("miss-") {
        // Every request a miss: the `miss` bench's no-store resource.
        let url = site.url(Resource::NoStore, size, name);
        let contender = match miss {
            "ours-memory" => Contender::ours_memory(&url),
            "ours-file" => Contender::ours_file(&url)?,
            "reqwest" => Contender::plain(&url),
            other => anyhow::bail!("no miss contender {other:?}"),
        };
        contender.check(len, None).await?;
        return Ok(contender);
    }
    let url = site.url(Resource::Fresh, size, name);
    let cache = match name {
        "ours-memory" => Contender::ours_memory(&url),
        "ours-redis" => Contender::ours_redis(redis_url, &url).await?,
        "floor-memory" | "floor-redis" => {
            let prepared = Prepared::capture(&site.url(Resource::Fresh, size, "capture")).await?;
            let floor = if name == "floor-memory" {
                Contender::floor_memory(prepared, &url)
            } else {
                Contender::floor_redis(redis_url, prepared.body()).await?
            };
            floor.check(len, None).await?;
            return Ok(floor);
        }
        other => anyhow::bail!("no contender {other:?}"),
    };
    // The first request stores the response (a miss), the next ones are hits.
    cache.check(len, None).await?;
    wait_for(&cache, len, "HIT").await?;
    Ok(cache)
}
