//! The contenders: a client and what it asks for, fetched the same way by all.

use std::hint::black_box;

use cachecontrol::{CacheControl, FileCache, MemoryCache, RedisCache};
use http::HeaderValue;
use http_cache_reqwest::{
    CACacheManager, Cache, CacheMode, HttpCache, HttpCacheOptions, MokaManager,
};
use tempfile::TempDir;

use crate::floor::{FromFile, FromMemory, Prepared, Revalidating};

/// How large our stores may grow in the benches: every body fits.
const STORE_BYTES: u64 = 1 << 30;

/// What one fetch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The response status.
    pub status: u16,
    /// The `x-cache` header (ours and http-cache-reqwest both set one), if any.
    pub x_cache: Option<String>,
    /// The body's length, as read.
    pub len: usize,
}

/// The client of a contender, in whichever stack it lives.
enum Client {
    /// reqwest 0.13 with middleware 0.5: ours, the floors, plain reqwest.
    Current(reqwest_middleware::ClientWithMiddleware),
    /// reqwest 0.12 with middleware 0.4: http-cache-reqwest.
    Peer(reqwest_middleware04::ClientWithMiddleware),
    /// Plain reqwest 0.13, no middleware: the floor of a miss.
    Plain(reqwest::Client),
    /// A Redis connection: the floor of a hit from Redis.
    Redis(redis::aio::MultiplexedConnection),
}

/// One contender of a bench: a named client and its target (a URL, or a Redis key).
pub struct Contender {
    name: String,
    client: Client,
    target: String,
    cache: Option<CacheControl>,
    /// Keeps a store's or a floor's directory while the contender lives; dropped
    /// last (fields drop in order).
    _dir: Option<TempDir>,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Contender {
    /// Its name, the benchmark id's function part: `ours-memory`, `http-cache-moka`,
    /// `floor-file`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it asks for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The measured work: one GET through the client, the whole body read chunk by
    /// chunk (for Redis: one `GET` of the key).
    pub async fn fetch(&self) -> anyhow::Result<Fetched> {
        match &self.client {
            Client::Current(client) => read(client.get(&self.target).send().await?).await,
            Client::Plain(client) => read(client.get(&self.target).send().await?).await,
            Client::Peer(client) => {
                // reqwest 0.12's response: the same calls, another type.
                let mut response = client.get(&self.target).send().await?;
                let status = response.status().as_u16();
                let x_cache = x_cache(response.headers().get("x-cache"));
                let mut len = 0;
                while let Some(chunk) = response.chunk().await? {
                    len += black_box(chunk).len();
                }
                Ok(Fetched {
                    status,
                    x_cache,
                    len,
                })
            }
            Client::Redis(connection) => {
                let mut connection = connection.clone();
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&self.target)
                    .query_async(&mut connection)
                    .await?;
                let value = value.ok_or_else(|| anyhow::anyhow!("{} is not set", self.target))?;
                Ok(Fetched {
                    status: 200,
                    x_cache: None,
                    len: black_box(value).len(),
                })
            }
        }
    }

    /// Fetches once and checks the answer: status 200, the whole body, and, when
    /// `x_cache` is given, that header (how the response was served).
    pub async fn check(&self, len: usize, x_cache: Option<&str>) -> anyhow::Result<()> {
        let fetched = self.fetch().await?;
        let ok = fetched.status == 200
            && fetched.len == len
            && (x_cache.is_none() || fetched.x_cache.as_deref() == x_cache);
        anyhow::ensure!(
            ok,
            "{}: expected 200, {len} bytes, x-cache {x_cache:?}; got {fetched:?}",
            self.name
        );
        Ok(())
    }

    /// Closes its cache, if it has one of ours (a Redis store releases its
    /// connections).
    pub async fn close(&self) -> anyhow::Result<()> {
        if let Some(cache) = &self.cache {
            cache.close().await?;
        }
        Ok(())
    }

    fn current(
        name: &str,
        client: reqwest_middleware::ClientWithMiddleware,
        url: &str,
        cache: Option<CacheControl>,
        dir: Option<TempDir>,
    ) -> Contender {
        Contender {
            name: name.to_owned(),
            client: Client::Current(client),
            target: url.to_owned(),
            cache,
            _dir: dir,
        }
    }

    fn ours(name: &str, cache: CacheControl, url: &str, dir: Option<TempDir>) -> Contender {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(cache.clone())
            .build();
        Contender::current(name, client, url, Some(cache), dir)
    }

    /// `ours-memory`: [`CacheControl`] over a [`MemoryCache`].
    pub fn ours_memory(url: &str) -> Contender {
        let cache = CacheControl::new(MemoryCache::new(STORE_BYTES as usize));
        Contender::ours("ours-memory", cache, url, None)
    }

    /// `ours-file`: [`CacheControl`] over a [`FileCache`] in a temp dir.
    pub fn ours_file(url: &str) -> anyhow::Result<Contender> {
        let dir = tempdir("ours-file")?;
        let cache = CacheControl::new(FileCache::new(dir.path())?);
        Ok(Contender::ours("ours-file", cache, url, Some(dir)))
    }

    /// `ours-redis`: [`CacheControl`] over a [`RedisCache`] on the Redis at
    /// `redis_url`.
    pub async fn ours_redis(redis_url: &str, url: &str) -> anyhow::Result<Contender> {
        let cache = CacheControl::new(RedisCache::new(redis_url).await?);
        Ok(Contender::ours("ours-redis", cache, url, None))
    }

    fn peer(
        name: &str,
        cache: impl reqwest_middleware04::Middleware,
        url: &str,
        dir: Option<TempDir>,
    ) -> Contender {
        let client = reqwest_middleware04::ClientBuilder::new(reqwest012::Client::new())
            .with(cache)
            .build();
        Contender {
            name: name.to_owned(),
            client: Client::Peer(client),
            target: url.to_owned(),
            cache: None,
            _dir: dir,
        }
    }

    /// `http-cache-moka`: http-cache-reqwest with its moka manager (in memory).
    pub fn peer_moka(url: &str) -> Contender {
        let cache = Cache(HttpCache {
            mode: CacheMode::Default,
            manager: MokaManager::default(),
            options: HttpCacheOptions::default(),
        });
        Contender::peer("http-cache-moka", cache, url, None)
    }

    /// `http-cache-cacache`: http-cache-reqwest with its cacache manager (on disk, in
    /// a temp dir).
    pub fn peer_cacache(url: &str) -> anyhow::Result<Contender> {
        let dir = tempdir("http-cache-cacache")?;
        let cache = Cache(HttpCache {
            mode: CacheMode::Default,
            manager: CACacheManager::new(dir.path().to_owned(), true),
            options: HttpCacheOptions::default(),
        });
        Ok(Contender::peer("http-cache-cacache", cache, url, Some(dir)))
    }

    /// `reqwest`: plain reqwest, no middleware at all: the floor of a miss.
    pub fn plain(url: &str) -> Contender {
        Contender {
            name: "reqwest".to_owned(),
            client: Client::Plain(reqwest::Client::new()),
            target: url.to_owned(),
            cache: None,
            _dir: None,
        }
    }

    /// `floor-memory`: the prepared response, from memory ([`FromMemory`]).
    pub fn floor_memory(prepared: Prepared, url: &str) -> Contender {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(FromMemory(prepared))
            .build();
        Contender::current("floor-memory", client, url, None, None)
    }

    /// `floor-file`: the prepared response with its body read from a file each time
    /// ([`FromFile`]).
    pub fn floor_file(prepared: Prepared, url: &str) -> anyhow::Result<Contender> {
        let dir = tempdir("floor-file")?;
        let path = dir.path().join("body");
        std::fs::write(&path, prepared.body())?;
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(FromFile { prepared, path })
            .build();
        Ok(Contender::current(
            "floor-file",
            client,
            url,
            None,
            Some(dir),
        ))
    }

    /// `floor-revalidate`: a conditional request answered by `304`, then the prepared
    /// response ([`Revalidating`]).
    pub fn floor_revalidate(
        prepared: Prepared,
        etag: &str,
        url: &str,
    ) -> anyhow::Result<Contender> {
        let etag = HeaderValue::from_str(etag)?;
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Revalidating { prepared, etag })
            .build();
        Ok(Contender::current(
            "floor-revalidate",
            client,
            url,
            None,
            None,
        ))
    }

    /// `floor-redis`: a bare Redis `GET` of the body, stored under a key of its own
    /// on the Redis at `redis_url`.
    pub async fn floor_redis(redis_url: &str, body: &[u8]) -> anyhow::Result<Contender> {
        let client = redis::Client::open(redis_url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let key = format!("floor:{}", body.len());
        redis::cmd("SET")
            .arg(&key)
            .arg(body)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(Contender {
            name: "floor-redis".to_owned(),
            client: Client::Redis(connection),
            target: key,
            cache: None,
            _dir: None,
        })
    }
}

/// Reads a reqwest 0.13 response to its end.
async fn read(mut response: reqwest::Response) -> anyhow::Result<Fetched> {
    let status = response.status().as_u16();
    let x_cache = x_cache(response.headers().get("x-cache"));
    let mut len = 0;
    while let Some(chunk) = response.chunk().await? {
        len += black_box(chunk).len();
    }
    Ok(Fetched {
        status,
        x_cache,
        len,
    })
}

fn x_cache(value: Option<&HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn tempdir(name: &str) -> anyhow::Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("bench-{name}-"))
        .tempdir()?)
}
