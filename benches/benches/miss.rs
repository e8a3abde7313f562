//! A miss: every response is `Cache-Control: no-store`, so each measured request
//! looks in the store, finds nothing, goes to the loopback origin and stores nothing.
//! The floor is plain reqwest: what is left is the cache's overhead on a miss.

use benches::site::{Resource, Site};
use benches::{BodySize, Contender};

fn main() -> anyhow::Result<()> {
    let runtime = benches::runtime()?;
    let site = runtime.block_on(Site::start())?;
    let mut sets = Vec::new();
    for size in BodySize::ALL {
        sets.push((size, runtime.block_on(contenders(&site, size))?));
    }

    let mut criterion = benches::criterion();
    benches::measure(&mut criterion, &runtime, "miss", &sets);
    runtime.block_on(benches::close_all(&sets))?;
    criterion.final_summary();
    Ok(())
}

async fn contenders(site: &Site, size: BodySize) -> anyhow::Result<Vec<Contender>> {
    let url = |name: &str| site.url(Resource::NoStore, size, name);
    let contenders = vec![
        Contender::ours_memory(&url("ours-memory")),
        Contender::ours_file(&url("ours-file"))?,
        Contender::peer_moka(&url("http-cache-moka")),
        Contender::peer_cacache(&url("http-cache-cacache"))?,
        Contender::plain(&url("reqwest")),
    ];
    // Each of them goes to the origin every time, ours says so.
    for contender in &contenders {
        let ours = contender.name().starts_with("ours-");
        for _ in 0..2 {
            contender.check(size.len(), ours.then_some("MISS")).await?;
        }
        let asked = site.requests(Resource::NoStore, size, contender.name());
        anyhow::ensure!(
            asked == 2,
            "{} asked the origin {asked} times in 2 requests",
            contender.name()
        );
    }
    Ok(contenders)
}
