//! The harness of the criterion benches in `benches/benches/`.
//!
//! # What is measured
//!
//! Every measured iteration does the same thing for every contender: send one GET
//! through a client and read the whole body, chunk by chunk, to its end
//! ([`Contender::fetch`]). Only the client differs:
//!
//! - **ours**: a `reqwest-middleware` client with [`cachecontrol::CacheControl`] over a
//!   `MemoryCache`, a `FileCache` (in a temp dir) or a `RedisCache` (on a
//!   `redis-server` of its own, see [`testbed::redis::RedisServer`]);
//! - **peers**: `http-cache-reqwest` 0.16 with its moka and cacache managers, the most
//!   used HTTP cache middleware for reqwest (built on reqwest 0.12, hence the renamed
//!   dependencies `reqwest012` and `reqwest-middleware04`);
//! - **the floor**: the same work without any cache logic, the time a cache cannot
//!   beat ([`floor`]): a middleware that returns a prepared response from memory, the
//!   same middleware reading the body from a file, a bare Redis `GET` of the body,
//!   plain reqwest against the origin.
//!
//! The responses come from a loopback origin ([`site::Site`]) with bodies of 1 KiB
//! and 1 MiB ([`BodySize`]); each contender asks for its own URL (a query names it),
//! so that the origin's record shows what each one sent.
//!
//! The bench targets (`hit`, `miss`, `revalidate`) put the contenders of one question
//! side by side in one criterion group; `peak_memory` streams a 1 GiB body through a
//! `FileCache` and back, and records its own peak RSS. The `report` binary reads the
//! results and prints the README's table.

pub mod contender;
pub mod floor;
pub mod results;
pub mod site;

use std::time::Duration;

use bytes::Bytes;
pub use contender::{Contender, Fetched};

/// The size of a response body in a bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// 1 KiB: an API answer, where per-request overhead dominates.
    OneKib,
    /// 1 MiB: a file, where moving the bytes dominates.
    OneMib,
}

impl BodySize {
    /// Both sizes, in the order benches run them.
    pub const ALL: [BodySize; 2] = [BodySize::OneKib, BodySize::OneMib];

    /// The size in bytes.
    pub fn len(self) -> usize {
        match self {
            BodySize::OneKib => 1 << 10,
            BodySize::OneMib => 1 << 20,
        }
    }

    /// Never true; here because clippy pairs `len` with it.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The name used in URLs and benchmark ids: `1KiB`, `1MiB`.
    pub fn label(self) -> &'static str {
        match self {
            BodySize::OneKib => "1KiB",
            BodySize::OneMib => "1MiB",
        }
    }

    /// A body of this size. Not all one byte, so that nothing along the way can
    /// compress it or take a shortcut.
    pub fn body(self) -> Bytes {
        (0..self.len())
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    }
}

/// The runtime the benches run on: multi-threaded, one worker per core (the origin
/// and the clients share it, as they would share a service's runtime).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Criterion as the benches use it: short enough that `cargo bench -p benches` runs
/// in a few minutes on two cores, long enough for stable means. Command-line options
/// (`--measurement-time`, `--sample-size`, a filter) still apply.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args()
}

/// Unwraps what a measured iteration returns. A contender that fails mid-run must
/// stop the bench: a failure measured as a fast iteration would be a lie.
pub fn must<T>(result: anyhow::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("a measured iteration failed: {error:#}"),
    }
}

/// Measures every contender's [`Contender::fetch`] in one criterion group, under
/// `<group>/<contender>/<size>`: the ids the `report` binary reads.
pub fn measure(
    criterion: &mut criterion::Criterion,
    runtime: &tokio::runtime::Runtime,
    group: &str,
    sets: &[(BodySize, Vec<Contender>)],
) {
    let mut benchmarks = criterion.benchmark_group(group);
    for (size, contenders) in sets {
        benchmarks.throughput(criterion::Throughput::Bytes(size.len() as u64));
        for contender in contenders {
            let id = criterion::BenchmarkId::new(contender.name(), size.label());
            benchmarks.bench_function(id, |bencher| {
                bencher
                    .to_async(runtime)
                    .iter(|| async { must(contender.fetch().await) });
            });
        }
    }
    benchmarks.finish();
}

/// Fetches until the response says `x_cache` (a store may commit an entry just after
/// its body was read), for at most two seconds.
pub async fn wait_for(contender: &Contender, len: usize, x_cache: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match contender.check(len, Some(x_cache)).await {
            Ok(()) => return Ok(()),
            Err(error) if std::time::Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Closes every contender's cache.
pub async fn close_all(sets: &[(BodySize, Vec<Contender>)]) -> anyhow::Result<()> {
    for (_, contenders) in sets {
        for contender in contenders {
            contender.close().await?;
        }
    }
    Ok(())
}
