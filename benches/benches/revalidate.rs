//! A revalidation: the stored response is `Cache-Control: no-cache` with an `ETag`,
//! so every measured request sends `If-None-Match` to the loopback origin, which
//! answers `304 Not Modified`, and the stored body is served.
//!
//! The floor ([`benches::floor::Revalidating`]) is that round trip and nothing else:
//! a middleware that sends the conditional request and, on the `304`, answers with a
//! response prepared in memory. It knows the tag and keeps the body, so it does none
//! of a cache's work: no lookup, no policy, no update of the stored entry.

use benches::floor::Prepared;
use benches::site::{ETAG, Resource, Site};
use benches::{BodySize, Contender};
use std::time::{Duration, Instant};
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
    benches::measure(&mut criterion, &runtime, "revalidate", &sets);
    runtime.block_on(benches::close_all(&sets))?;
    criterion.final_summary();
    Ok(())
}

async fn contenders(
    site: &Site,
    redis: &RedisServer,
    size: BodySize,
) -> anyhow::Result<Vec<Contender>> {
    let url = |name: &str| site.url(Resource::Validated, size, name);
    let len = size.len();
    let prepared = Prepared::capture(&url("capture")).await?;
    let contenders = vec![
        Contender::ours_memory(&url("ours-memory")),
        Contender::ours_file(&url("ours-file"))?,
        Contender::ours_redis(&redis.url(), &url("ours-redis")).await?,
        Contender::peer_moka(&url("http-cache-moka")),
        Contender::peer_cacache(&url("http-cache-cacache"))?,
        Contender::floor_revalidate(prepared, ETAG, &url("floor-revalidate"))?,
    ];
    for contender in &contenders {
        let name = contender.name();
        let ours = name.starts_with("ours-");
        // The first request stores the response (the floor has it already); from
        // then on each one is a conditional request answered 304, and the whole body.
        if !name.starts_with("floor-") {
            contender.check(len, ours.then_some("MISS")).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let before = site.requests(Resource::Validated, size, name);
            contender.check(len, None).await?;
            let sent = site.requests(Resource::Validated, size, name) - before;
            let conditional = site
                .last_request(Resource::Validated, size, name)
                .is_some_and(|request| request.header("if-none-match") == Some(ETAG));
            if sent == 1 && conditional {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} does not revalidate");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if ours {
            contender.check(len, Some("REVALIDATED")).await?;
        }
    }
    Ok(contenders)
}
