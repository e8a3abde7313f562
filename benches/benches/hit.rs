//! A fresh hit: the origin answered `Cache-Control: max-age=3600` once; every
//! measured request is answered from the store.
//!
//! Side by side: ours over each store, http-cache-reqwest with moka and cacache,
//! and the floors: the prepared response from memory, the body read from a file, a
//! bare Redis `GET` of the body.

use benches::floor::Prepared;
use benches::site::{Resource, Site};
use benches::{BodySize, Contender, wait_for};
use testbed::redis::RedisServer;

fn main() -> anyhow::Result<()> {
    let runtime = benches::runtime()?;
    let redis = RedisServer::start()?;
    let site = runtime.block_on(Site::start())?;
    let mut sets = Vec::new();
    for size in BodySize::ALL {
        sets.push((size, runtime.block_on(contenders(&site, &redis, size))?));
    }

    let mut criterion = benches::criterion();
    benches::measure(&mut criterion, &runtime, "hit", &sets);

    // Every cache asked the origin once, to be primed; every measured request was a
    // hit.
    for (size, contenders) in &sets {
        for contender in contenders {
            let asked = site.requests(Resource::Fresh, *size, contender.name());
            let primed = !contender.name().starts_with("floor-");
            anyhow::ensure!(
                asked == usize::from(primed),
                "{} asked the origin {asked} times",
                contender.name()
            );
        }
    }
    runtime.block_on(benches::close_all(&sets))?;
    criterion.final_summary();
    Ok(())
}

async fn contenders(
    site: &Site,
    redis: &RedisServer,
    size: BodySize,
) -> anyhow::Result<Vec<Contender>> {
    let url = |name: &str| site.url(Resource::Fresh, size, name);
    let len = size.len();
    let caches = vec![
        Contender::ours_memory(&url("ours-memory")),
        Contender::ours_file(&url("ours-file"))?,
        Contender::ours_redis(&redis.url(), &url("ours-redis")).await?,
        Contender::peer_moka(&url("http-cache-moka")),
        Contender::peer_cacache(&url("http-cache-cacache"))?,
    ];
    for cache in &caches {
        cache.check(len, Some("MISS")).await?;
        wait_for(cache, len, "HIT").await?;
    }
    // The floors serve what the origin sends, captured at a URL of their own that
    // they then never ask.
    let prepared = Prepared::capture(&url("capture")).await?;
    let floors = vec![
        Contender::floor_memory(prepared.clone(), &url("floor-memory")),
        Contender::floor_file(prepared.clone(), &url("floor-file"))?,
        Contender::floor_redis(&redis.url(), prepared.body()).await?,
    ];
    for floor in &floors {
        floor.check(len, None).await?;
    }
    Ok(caches.into_iter().chain(floors).collect())
}
