//! [`Fetcher`]: fetches artifacts into a run directory through the cache.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachecontrol::store::FileBody;
use cachecontrol::store::Tiered;
use cachecontrol::{
    Cache, CacheControl, CacheMode, CacheStatus, FileCache, FromCache, PendingStore, Recording,
    StoreFromFile, StoreInBackground,
};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest_middleware::ClientWithMiddleware;
use sha2::Digest;
use std::io::Write;
use url::Url;

use crate::artifact::{Artifact, Sha256, check_names};
use crate::error::FetchError;
use crate::lock::{LockFile, UrlLock};
use crate::materialize::{self, Materialized, READ_ONLY, WRITABLE};
use crate::prepared::Prepared;
use crate::report::{ArtifactReport, FetchReport, Progress, ProgressEvent, Served};
use crate::retry::Retry;
use crate::unpack::{self, Limits};
use crate::verified::{Identity, Verified};

/// The longest a download's lock waits for its body to be stored, by default.
const DEFAULT_STORE_WAIT: Duration = Duration::from_secs(600);

/// The bytes of copies made ahead for the next runs by default
/// ([`FetcherBuilder::prepared_copies`]): 4 GiB. The runs of a job repeat, and a
/// repeat that moves a copy in costs milliseconds where copying a GiB costs a third
/// of a second or more.
pub const DEFAULT_PREPARED_COPIES: u64 = 4 << 30;

/// A download at least this large is written once, where it is used, and that file
/// copied into the cache afterwards; a smaller one is written to both at once
/// (which costs little, and the cache has it before the job has its file).
const HAND_OVER_MIN: u64 = 1 << 20;

/// A progress callback.
type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// Fetches artifacts into run directories, through a `cachecontrol` cache.
///
/// Cloning is cheap; clones share the cache and the client.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClientWithMiddleware,
    cache: CacheControl,
    locks: PathBuf,
    verified: Verified,
    concurrency: usize,
    retry: Retry,
    limits: Limits,
    progress: Option<ProgressFn>,
    /// The downloads whose bodies are still being stored (each holding its URL's
    /// lock, in a task of its own).
    storing: tokio::sync::watch::Sender<InFlight>,
    /// The longest a download's lock waits for its body to be stored.
    store_wait: Duration,
    /// Copies of cached files made for the next runs, when asked for.
    prepared: Option<Prepared>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("cache", &self.inner.cache)
            .field("locks", &self.inner.locks)
            .field("concurrency", &self.inner.concurrency)
            .field("retry", &self.inner.retry)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Fetcher`]; see [`Fetcher::builder`].
#[must_use]
pub struct FetcherBuilder {
    cache_dir: Option<PathBuf>,
    max_cache_bytes: Option<u64>,
    shared_tier: Option<Arc<dyn Cache>>,
    store: Option<Arc<dyn Cache>>,
    client: Option<reqwest::Client>,
    concurrency: usize,
    retry: Retry,
    limits: Limits,
    progress: Option<ProgressFn>,
    store_wait: Duration,
    prepared_copies: u64,
}

impl std::fmt::Debug for FetcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetcherBuilder")
            .field("cache_dir", &self.cache_dir)
            .field("max_cache_bytes", &self.max_cache_bytes)
            .field("concurrency", &self.concurrency)
            .field("prepared_copies", &self.prepared_copies)
            .finish_non_exhaustive()
    }
}

/// The cache directory used when none is given: `$XDG_CACHE_HOME/dadd/artifacts`,
/// else `$HOME/.cache/dadd/artifacts`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| Path::new(dir).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("dadd").join("artifacts"))
}

impl Fetcher {
    /// A fetcher with the defaults of [`Fetcher::builder`].
    pub fn new() -> Result<Fetcher, FetchError> {
        Fetcher::builder().build()
    }

    /// Starts configuring a fetcher. The defaults: a [`FileCache`] in
    /// [`default_cache_dir`] bounded to 20 GiB, no shared tier, 4 artifacts at a
    /// time, [`Retry::default`], [`Limits::default`] for archives, a client with a
    /// 10 s connect timeout and a 60 s read timeout (no limit on a whole download),
    /// [`DEFAULT_PREPARED_COPIES`] of copies made ahead for the next runs.
    pub fn builder() -> FetcherBuilder {
        FetcherBuilder {
            cache_dir: None,
            max_cache_bytes: Some(20 << 30),
            shared_tier: None,
            store: None,
            client: None,
            concurrency: 4,
            retry: Retry::default(),
            limits: Limits::default(),
            progress: None,
            store_wait: DEFAULT_STORE_WAIT,
            prepared_copies: DEFAULT_PREPARED_COPIES,
        }
    }

    /// The cache this fetcher goes through.
    pub fn cache(&self) -> &CacheControl {
        &self.inner.cache
    }

    /// Waits for the downloads still being stored in the cache (see
    /// [`fetch`](Self::fetch)), then closes the cache's store (flushing what is
    /// pending, releasing connections).
    pub async fn close(&self) -> Result<(), cachecontrol::StoreError> {
        self.stored().await;
        self.inner.cache.close().await
    }

    /// Waits until the downloads this fetcher (or a clone) made before the call are
    /// stored in the cache, or have failed to be (a cache that fails is logged, never
    /// an error), or have been waited for longer than
    /// [`store_wait`](FetcherBuilder::store_wait); likewise for the copies being
    /// prepared for the next runs ([`prepared_copies`](FetcherBuilder::prepared_copies)).
    pub async fn stored(&self) {
        let before = self.inner.storing.borrow().next;
        let mut storing = self.inner.storing.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = storing
            .wait_for(|in_flight| in_flight.oldest().is_none_or(|oldest| oldest >= before))
            .await;
    }

    /// Fetches `artifacts` into `dir` (created if missing), at most
    /// [`concurrency`](FetcherBuilder::concurrency) at a time.
    ///
    /// Every name is checked before anything is fetched. The first failure stops
    /// the fetch and is returned; files of other artifacts already in place stay,
    /// and nothing half-written is left.
    ///
    /// A downloaded body of 1 MiB or more is written once, to the run directory
    /// (on a local ext4, XFS or Btrfs), and the fetch returns once the run
    /// directory has its files; the cache then copies each such file, makes its
    /// copy durable (synced to disk) and publishes it, in the background, so that
    /// the job need not wait for the cache. A copy of a file the job changed
    /// meanwhile (written to, renamed, removed with its directory) is not kept: the
    /// cache downloads the artifact again for itself; wait for
    /// [`stored`](Self::stored) before removing the run directory. A smaller body,
    /// or one written to another file system, is written to the cache as it
    /// arrives, and published in the background too. Until a body is stored,
    /// another fetch of the same URL on this host waits for it rather than
    /// downloading it again; [`stored`](Self::stored) and [`close`](Self::close)
    /// wait for it too.
    pub async fn fetch(
        &self,
        artifacts: &[Artifact],
        dir: &Path,
    ) -> Result<FetchReport, FetchError> {
        let started = Instant::now();
        for artifact in artifacts {
            if !matches!(artifact.url.scheme(), "http" | "https") {
                return Err(FetchError::UnsupportedUrl {
                    name: artifact.name.clone(),
                    url: artifact.url.clone(),
                });
            }
        }
        let paths = check_names(artifacts, dir)?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|error| FetchError::io("creating the run directory", dir, error))?;
        // The futures are made first, then run: a stream mapped by a closure over
        // borrowed artifacts would make `fetch`'s future unusable with
        // `tokio::spawn` (the compiler cannot prove it `Send` for every lifetime).
        let fetches: Vec<_> = artifacts
            .iter()
            .zip(paths)
            .enumerate()
            .map(|(index, (artifact, path))| async move {
                let report = self.fetch_one(artifact, dir, &path).await?;
                Ok::<_, FetchError>((index, report))
            })
            .collect();
        let mut reports: Vec<(usize, ArtifactReport)> = futures_util::stream::iter(fetches)
            .buffer_unordered(self.inner.concurrency)
            .try_collect()
            .await?;
        reports.sort_by_key(|(index, _)| *index);
        Ok(FetchReport {
            artifacts: reports.into_iter().map(|(_, report)| report).collect(),
            elapsed: started.elapsed(),
        })
    }

    async fn fetch_one(
        &self,
        artifact: &Artifact,
        dir: &Path,
        relative: &Path,
    ) -> Result<ArtifactReport, FetchError> {
        let started = Instant::now();
        self.progress(artifact, ProgressEvent::Started);
        let dest = dir.join(relative);
        let parent = dest.parent().unwrap_or(dir).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|error| FetchError::io("creating the directory", &parent, error))?;

        // With a digest, any stored copy that has it will do: no need to ask.
        let mut mode = match artifact.sha256 {
            Some(_) => CacheMode::ForceCache,
            None => CacheMode::Default,
        };
        // A copy in the cache that can be used as it is needs neither the network
        // nor the lock.
        let mut taken = match self
            .attempt(artifact, &dest, CacheMode::OnlyIfCached, 0, &mut None)
            .await
        {
            Ok(taken) if matches!(taken.done.served, Served::Cached | Served::SharedTier) => {
                Some(taken)
            }
            Ok(_) | Err(Failure::Transient(_) | Failure::Final(_) | Failure::Unusable) => None,
            Err(Failure::StoredCopyIsWrong { actual, urls }) => {
                self.forget(artifact, &actual, &urls).await;
                mode = CacheMode::Reload;
                None
            }
        };
        let mut attempts = 0;
        let mut lock = None;
        let taken = loop {
            if let Some(taken) = taken.take() {
                break taken;
            }
            if lock.is_none() {
                lock = Some(self.lock(artifact).await?);
            }
            attempts += 1;
            match self
                .attempt(artifact, &dest, mode, attempts, &mut lock)
                .await
            {
                // Stored meanwhile (by the fetch that held the lock): no request.
                Ok(done) if matches!(done.done.served, Served::Cached | Served::SharedTier) => {
                    attempts -= 1;
                    break done;
                }
                Ok(done) => break done,
                Err(Failure::StoredCopyIsWrong { actual, urls }) => {
                    self.forget(artifact, &actual, &urls).await;
                    mode = CacheMode::Reload;
                    attempts -= 1;
                }
                Err(Failure::Unusable) => {
                    // A stored error or redirect: let the origin have its say.
                    mode = CacheMode::Default;
                    attempts -= 1;
                }
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient(error)) if attempts >= self.inner.retry.attempts => {
                    return Err(error.into_error(artifact, attempts));
                }
                Err(Failure::Transient(error)) => {
                    let delay = self.inner.retry.delay(attempts);
                    tracing::warn!(
                        artifact = %artifact.name, url = %artifact.url, attempt = attempts,
                        error = %error, ?delay, "fetch failed; retrying"
                    );
                    self.progress(
                        artifact,
                        ProgressEvent::Retrying {
                            attempt: attempts,
                            error: error.to_string(),
                            delay,
                        },
                    );
                    tokio::time::sleep(delay).await;
                    // Not from the cache: it may hold the failure.
                    mode = CacheMode::Reload;
                }
            }
        };
        let Taken {
            done,
            scratch,
            recording,
            archive,
            keep,
        } = taken;
        // Others may go on once the body is in the cache (when it can be stored):
        // a body being recorded already, or a file handed over once in place.
        let recording = match keep {
            None => {
                self.release_when_stored(&mut lock, recording, artifact, None);
                None
            }
            Some(_) => recording,
        };
        let materialized = self
            .put_in_place(artifact, scratch, archive, &dest, done.materialized)
            .await?;
        if let Some(keep) = keep {
            let watch = self.hand_over(artifact, keep).await;
            self.release_when_stored(&mut lock, recording, artifact, watch);
        }
        self.progress(
            artifact,
            ProgressEvent::Done {
                served: done.served,
                size: done.size,
            },
        );
        Ok(ArtifactReport {
            name: artifact.name.clone(),
            url: artifact.url.clone(),
            path: dest,
            served: done.served,
            materialized,
            size: done.size,
            network_bytes: done.network_bytes,
            sha256: artifact.sha256,
            attempts,
            elapsed: started.elapsed(),
        })
    }

    /// Forgets a stored copy that does not have the artifact's digest, under every
    /// URL it was fetched through (the artifact's, and a redirect's target).
    async fn forget(&self, artifact: &Artifact, actual: &Sha256, urls: &[Url]) {
        tracing::info!(
            artifact = %artifact.name, url = %artifact.url, %actual,
            "the cached copy does not have the artifact's digest; downloading it again"
        );
        for url in urls {
            self.inner.cache.invalidate(url).await;
        }
    }

    /// Lets go of `lock` (when held) once `recording` (when there is one) is done, at
    /// most [`store_wait`](FetcherBuilder::store_wait) from now, in a task of its
    /// own that [`Fetcher::stored`] waits for; at once without a recording.
    ///
    /// With `watch`, the file handed to the cache: when the cache did not keep it
    /// because the job wrote to it first, the URL is downloaded again for the cache
    /// alone (within the same wait, the lock still held), so that the next runs
    /// find it there.
    fn release_when_stored(
        &self,
        lock: &mut Option<UrlLock>,
        recording: Option<Recording>,
        artifact: &Artifact,
        watch: Option<Watch>,
    ) {
        let Some(held) = lock.take() else { return };
        let Some(recording) = recording else { return };
        let storing = Storing::start(&self.inner.storing);
        let (wait, url) = (self.inner.store_wait, artifact.url.clone());
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let storing_it = async {
                if !recording.stored().await && watch.is_some_and(|watch| watch.changed()) {
                    tracing::info!(
                        %url,
                        "the job wrote to its file before the cache had a copy; downloading it again for the cache"
                    );
                    download_for_the_cache(&inner.client, &url).await;
                }
            };
            if tokio::time::timeout(wait, storing_it).await.is_err() {
                // Another fetch of it may download it again: better than all of
                // them waiting for a store that does not answer.
                tracing::warn!(%url, ?wait, "the cache is still storing the download; its lock is released");
            }
            drop(held);
            drop(storing);
        });
    }

    /// Takes the host-wide lock of the artifact's URL, waiting (without holding a
    /// thread) for another fetch of it to let go: once its download is stored, or
    /// once its response turned out not to be stored.
    async fn lock(&self, artifact: &Artifact) -> Result<UrlLock, FetchError> {
        let locks = &self.inner.locks;
        let mut file = LockFile::open(locks, &artifact.url)
            .map_err(|error| FetchError::io("opening the lock file in", locks, error))?;
        let mut waiting = false;
        loop {
            match file.try_take() {
                Ok(Ok(lock)) => return Ok(lock),
                Ok(Err(busy)) => file = busy,
                Err(error) => return Err(FetchError::io("locking a file in", locks, error)),
            }
            if !waiting {
                waiting = true;
                self.progress(artifact, ProgressEvent::Waiting);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One request (`attempt` is its number, 0 when it may only use the cache), and
    /// the body in a scratch file next to the artifact's name if it succeeds.
    /// `lock`, the URL's lock when held, is released as soon as the response turns
    /// out not to be stored: other fetches of the URL could not use it, and need not
    /// wait for its body.
    async fn attempt(
        &self,
        artifact: &Artifact,
        dest: &Path,
        mode: CacheMode,
        attempt: u32,
        lock: &mut Option<UrlLock>,
    ) -> Result<Taken, Failure> {
        let mut request = self
            .inner
            .client
            .get(artifact.url.clone())
            .with_extension(mode)
            .with_extension(StoreInBackground);
        // The body is written where it is used, and that file handed to the cache
        // afterwards (StoreFromFile): one write while the job waits, not two. Only
        // where the file's change time tells every write, and only for a request
        // that may download (not one answered by the cache alone).
        if mode != CacheMode::OnlyIfCached && times_tell_writes(dest.parent().unwrap_or(dest)) {
            request = request.with_extension(StoreFromFile::at_least(HAND_OVER_MIN));
        }
        let mut response = request.send().await.map_err(classify)?;
        let pending = response.extensions_mut().remove::<PendingStore>();
        let status = response.status();
        let recording = response.extensions().get::<Recording>().cloned();
        let from_origin = !matches!(
            response.extensions().get::<CacheStatus>(),
            Some(CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidated)
        );
        if from_origin && pending.is_none() && recording.is_none() {
            lock.take();
        }
        let cache_status = response.extensions().get::<CacheStatus>().copied();
        let from_cache = response.extensions().get::<FromCache>().cloned();
        if !status.is_success() {
            // A stored error, or a stored redirect that led to one, is not for a
            // mode that takes what is stored without asking.
            let stored = matches!(cache_status, Some(CacheStatus::Hit | CacheStatus::Stale))
                || response.url() != &artifact.url;
            return Err(
                if mode == CacheMode::OnlyIfCached || (mode == CacheMode::ForceCache && stored) {
                    Failure::Unusable
                } else if status.is_server_error() {
                    Failure::Transient(Transient::Status(status))
                } else {
                    Failure::Final(FetchError::Status {
                        name: artifact.name.clone(),
                        url: artifact.url.clone(),
                        status,
                        attempts: attempt,
                    })
                },
            );
        }
        let from_far = from_cache.as_ref().is_some_and(|from| from.from_far);
        // From the cache alone, only a fresh copy or one with the artifact's digest
        // is used as it is.
        if cache_status == Some(CacheStatus::Stale)
            && mode == CacheMode::OnlyIfCached
            && artifact.sha256.is_none()
        {
            return Err(Failure::Unusable);
        }
        let served = match cache_status {
            Some(CacheStatus::Hit | CacheStatus::Stale) if from_far => Served::SharedTier,
            Some(CacheStatus::Hit | CacheStatus::Stale) => Served::Cached,
            Some(CacheStatus::Revalidated) => Served::Revalidated,
            _ => Served::Downloaded,
        };
        let mut urls = vec![artifact.url.clone()];
        if response.url() != &artifact.url {
            urls.push(response.url().clone());
        }
        let scratch = Scratch::new(dest);
        let mut archive = None;
        let mut keep = None;
        let (materialized, size) = match from_cache.and_then(|from| from.file) {
            Some(stored) if status == StatusCode::OK => {
                drop(response);
                // An archive is unpacked from the cache's file itself (when the file
                // is exactly the body): no copy of it in the run directory first.
                if artifact.unpack.is_some() && is_whole_body(&stored) {
                    archive = Some(stored.clone());
                }
                let copy = archive.is_none();
                self.materialize_stored(artifact, stored, &scratch, dest, copy)
                    .await
                    .map_err(|failure| failure.with_urls(urls.clone()))?
            }
            _ => {
                let streamed = self
                    .stream_to_file(artifact, response, pending, &scratch, served, &urls)
                    .await;
                if streamed.is_err() {
                    // The body may have arrived whole (and be being stored) although
                    // it could not be written here: others still wait for the store.
                    self.release_when_stored(lock, recording.clone(), artifact, None);
                }
                let (size, kept) = streamed?;
                keep = kept;
                (Materialized::Streamed, size)
            }
        };
        let network_bytes = if from_far || served == Served::Downloaded {
            size
        } else {
            0
        };
        Ok(Taken {
            done: Done {
                served,
                materialized,
                size,
                network_bytes,
            },
            scratch,
            recording,
            archive,
            keep,
        })
    }

    /// Copies a stored body file to the scratch path unless told not to (an archive
    /// unpacked from the stored file itself), without reading it when the file
    /// system allows; and checks its digest (without reading it either when this file was
    /// verified before and has not changed since).
    async fn materialize_stored(
        &self,
        artifact: &Artifact,
        stored: cachecontrol::StoredFile,
        scratch: &Scratch,
        dest: &Path,
        copy: bool,
    ) -> Result<(Materialized, u64), Failure> {
        let guard = scratch.clone();
        let expected = artifact.sha256;
        let read_only = artifact.read_only;
        // A hard link shares the cache's file with the job: only for a file the job
        // declared it only reads, and whose digest is checked at every use.
        let link = read_only && expected.is_some();
        let verified = self.inner.verified.clone();
        let prepared = self
            .inner
            .prepared
            .clone()
            .filter(|prepared| copy && !link && prepared.worth(stored.len()));
        let outcome = tokio::task::spawn_blocking(move || {
            let path = guard.path();
            let file = stored.file();
            let len = stored.len();
            let reading = |error| ("reading the cached copy for", error);
            let identity = match (&expected, &prepared) {
                (None, None) => None,
                (Some(_), _) => Some(Identity::of(file).map_err(reading)?),
                // Only for a prepared copy: without it, the file is copied.
                (None, Some(_)) => Identity::of(file).ok(),
            };
            if let (Some(expected), Some(identity)) = (&expected, &identity)
                && !verified.contains(expected, identity)
            {
                let actual = materialize::hash_file(file, len).map_err(reading)?;
                if actual != *expected {
                    return Ok(Err(actual));
                }
                verified.record(expected, identity);
            }
            if !copy {
                return Ok(Ok((Materialized::Unpacked, len, None)));
            }
            let copying = |error| ("copying the cached copy to", error);
            let taken = match (&prepared, &identity) {
                (Some(prepared), Some(identity)) => prepared.take(identity, len, path),
                _ => false,
            };
            let how = if taken {
                if read_only {
                    std::fs::set_permissions(path, Permissions::from_mode(materialize::READ_ONLY))
                        .map_err(copying)?;
                }
                Materialized::Prepared
            } else {
                materialize::from_stored(file, len, path, link).map_err(copying)?
            };
            // A copy for the next run, where copying is what this one paid for and
            // the run directory can take it.
            let next = match (prepared, identity) {
                (Some(prepared), Some(identity))
                    if matches!(
                        how,
                        Materialized::Prepared | Materialized::KernelCopy | Materialized::Copy
                    ) && prepared.reaches(path.parent().unwrap_or(path)) =>
                {
                    file.try_clone().ok().map(|file| (prepared, file, identity))
                }
                _ => None,
            };
            Ok(Ok((how, len, next)))
        })
        .await
        .map_err(|error| {
            Failure::Final(FetchError::io(
                "copying the cached copy to",
                dest,
                std::io::Error::other(error),
            ))
        })?;
        match outcome {
            Ok(Ok((how, len, next))) => {
                if let Some((prepared, file, identity)) = next {
                    self.prepare_in_background(prepared, file, len, identity, artifact);
                }
                Ok((how, len))
            }
            Ok(Err(actual)) => Err(Failure::StoredCopyIsWrong {
                actual,
                urls: Vec::new(),
            }),
            Err((action, error)) => Err(Failure::Final(FetchError::io(action, dest, error))),
        }
    }

    /// Makes a copy of a cached file for the next run, in a task of its own that
    /// [`stored`](Fetcher::stored) waits for, for [`store_wait`](FetcherBuilder::store_wait)
    /// at most. A failure costs only the next run's time: it is logged.
    fn prepare_in_background(
        &self,
        prepared: Prepared,
        file: std::fs::File,
        len: u64,
        identity: Identity,
        artifact: &Artifact,
    ) {
        let ticket = Storing::start(&self.inner.storing);
        let url = artifact.url.clone();
        let wait = self.inner.store_wait;
        let copying = tokio::task::spawn_blocking(move || {
            if let Err(error) = prepared.prepare(&file, len, &identity) {
                tracing::warn!(%url, %error, "could not prepare a copy of a cached artifact for the next run");
            }
        });
        tokio::spawn(async move {
            // Past the wait, the copy goes on, no longer waited for.
            let _ = tokio::time::timeout(wait, copying).await;
            drop(ticket);
        });
    }

    /// Writes a response's body to the scratch path as it arrives (hashing it when
    /// the artifact names a digest), off the async threads; returns its length.
    /// With `pending`, the cache's hand-over of a body that may be stored: it comes
    /// back with the written file, to be handed over once the file is in place.
    async fn stream_to_file(
        &self,
        artifact: &Artifact,
        response: reqwest::Response,
        pending: Option<PendingStore>,
        scratch: &Scratch,
        served: Served,
        urls: &[Url],
    ) -> Result<(u64, Option<Keep>), Failure> {
        let total = response.content_length();
        let recording = response.extensions().get::<Recording>().cloned();
        let guard = scratch.clone();
        let hash = artifact.sha256.is_some();
        let mode = if artifact.read_only {
            READ_ONLY
        } else {
            WRITABLE
        };
        let keep = pending.is_some();
        let (fetcher, named) = (self.clone(), artifact.clone());
        let runtime = tokio::runtime::Handle::current();
        // Dropped with this future: a fetch that is given up stops its download.
        let (_going_on, mut given_up) = tokio::sync::oneshot::channel::<()>();
        let body = response.bytes_stream();
        // The body is read and written by one thread, off the async ones, as it
        // arrives: each chunk is written, then dropped before the next read, so that
        // the HTTP client reuses its read buffer, and no byte is copied twice.
        let download = tokio::task::spawn_blocking(move || -> Result<Written, Broken> {
            use std::os::unix::fs::OpenOptionsExt;
            let path = guard.path();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode | 0o200)
                .open(path)
                .map_err(Broken::Writing)?;
            let mut hasher = hash.then(sha2::Sha256::new);
            let mut body = std::pin::pin!(body);
            let (mut done, mut reported) = (0u64, 0u64);
            loop {
                let next = runtime.block_on(async {
                    tokio::select! {
                        biased;
                        _ = &mut given_up => None,
                        chunk = body.next() => Some(chunk),
                    }
                });
                let chunk = match next {
                    // No one waits for this result any more.
                    None => return Err(Broken::Writing(std::io::ErrorKind::Interrupted.into())),
                    Some(None) => break,
                    Some(Some(Ok(chunk))) => chunk,
                    Some(Some(Err(error))) => return Err(Broken::Network(error)),
                };
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                (&file).write_all(&chunk).map_err(Broken::Writing)?;
                done += chunk.len() as u64;
                drop(chunk);
                if done - reported >= 1 << 20 {
                    reported = done;
                    fetcher.progress(&named, ProgressEvent::Bytes { done, total });
                }
            }
            // For the cache, the file opened again read-only, and the writer's
            // descriptor closed: no descriptor open for writing may outlive the
            // fetch, or the job could not run the file (execve: ETXTBSY).
            let file = if keep {
                Some(read_only_again(&file, path).map_err(Broken::Writing)?)
            } else {
                None
            };
            Ok(Written {
                file,
                len: done,
                digest: hasher.map(|hasher| Sha256(hasher.finalize().into())),
            })
        });
        let written = download
            .await
            .map_err(|error| Broken::Writing(std::io::Error::other(error)))
            .and_then(|result| result);
        let Written {
            file,
            len: done,
            digest,
        } = match written {
            Ok(written) => written,
            Err(Broken::Network(error)) => {
                return Err(Failure::Transient(Transient::Request(
                    reqwest_middleware::Error::Reqwest(error),
                )));
            }
            Err(Broken::Writing(error)) => {
                return Err(Failure::Final(FetchError::io(
                    "writing",
                    scratch.path(),
                    error,
                )));
            }
        };
        self.progress(artifact, ProgressEvent::Bytes { done, total });
        if let (Some(expected), Some(actual)) = (artifact.sha256, digest)
            && actual != expected
        {
            // Nothing of it is handed to the cache.
            drop(pending);
            return Err(match served {
                Served::Downloaded => {
                    // Nothing wrong may stay in the cache either, under any URL:
                    // the body being stored is removed once committed, as anything
                    // stored for a URL invalidated while its response was on its
                    // way. The error waits for that: a fetch right after it (which
                    // looks in the cache before taking the lock) must not find it.
                    for url in urls {
                        self.inner.cache.invalidate(url).await;
                    }
                    if let Some(recording) = recording {
                        let _ =
                            tokio::time::timeout(self.inner.store_wait, recording.stored()).await;
                    }
                    Failure::Final(FetchError::ChecksumMismatch {
                        name: artifact.name.clone(),
                        url: artifact.url.clone(),
                        expected,
                        actual,
                    })
                }
                _ => Failure::StoredCopyIsWrong {
                    actual,
                    urls: urls.to_vec(),
                },
            });
        }
        let keep = pending.zip(file).map(|(pending, file)| Keep {
            pending,
            file,
            len: done,
        });
        Ok((done, keep))
    }

    /// Hands a downloaded file, now in place (or unpacked and gone from the run
    /// directory), to the cache, which copies it in the background. The job may
    /// write to its file meanwhile: the copy is kept only if the file is the same
    /// after it as now (the same [`FileIdentity`]). The change time is set by the
    /// kernel on any write and cannot be set back, but it moves in ticks of its
    /// clock: the hand-over waits until the clock has moved past it (a few
    /// milliseconds; up to a second where times are kept to the second), so that a
    /// write made after the fetch returns cannot leave it as it is.
    /// Returns what tells, once the cache is done, whether the job changed the file
    /// first.
    async fn hand_over(&self, artifact: &Artifact, keep: Keep) -> Option<Watch> {
        let Keep { pending, file, len } = keep;
        let identity = match file.metadata() {
            Ok(metadata) => FileIdentity::of(&metadata),
            Err(error) => {
                tracing::debug!(artifact = %artifact.name, %error, "the downloaded file cannot be looked at; not stored");
                return None;
            }
        };
        if !identity.wait_until_changes_show().await {
            tracing::debug!(
                artifact = %artifact.name,
                "the clock is behind the downloaded file's change time; not stored"
            );
            return None;
        }
        let watch = file.try_clone().ok().map(|file| Watch { file, identity });
        let unchanged = move |file: &std::fs::File| {
            file.metadata()
                .is_ok_and(|now| FileIdentity::of(&now) == identity)
        };
        pending.store(FileBody::guarded(file, len, unchanged));
        watch
    }

    /// Moves the scratch file to its name (or unpacks it there), with its final mode.
    async fn put_in_place(
        &self,
        artifact: &Artifact,
        scratch: Scratch,
        stored: Option<cachecontrol::StoredFile>,
        dest: &Path,
        materialized: Materialized,
    ) -> Result<Materialized, FetchError> {
        let Some(archive) = artifact.unpack else {
            let mode = if artifact.read_only {
                READ_ONLY
            } else {
                WRITABLE
            };
            if materialized != Materialized::HardLink {
                tokio::fs::set_permissions(scratch.path(), Permissions::from_mode(mode))
                    .await
                    .map_err(|error| FetchError::io("setting the mode of", dest, error))?;
            }
            tokio::fs::rename(scratch.path(), dest)
                .await
                .map_err(|error| FetchError::io("renaming into place", dest, error))?;
            // Not disarmed: when `dest` already was a link to the same file, the
            // rename did nothing and the scratch name is still there to remove.
            return Ok(materialized);
        };
        self.progress(artifact, ProgressEvent::Unpacking);
        let unpacked = Scratch::new(dest);
        let (archive_guard, into_guard) = (scratch.clone(), unpacked.clone());
        let limits = self.inner.limits.clone();
        let read_only = artifact.read_only;
        let url = artifact.url.clone();
        let result = tokio::task::spawn_blocking(move || {
            let into = into_guard.path();
            let result = match stored {
                Some(stored) => {
                    // Named in errors by the artifact's URL: the file is the cache's.
                    let named = Path::new(url.as_str());
                    from_start(&stored)
                        .map_err(|source| unpack::UnpackError::Io {
                            path: named.to_path_buf(),
                            action: "read the cached archive",
                            source,
                        })
                        .and_then(|file| unpack::unpack_file(file, named, archive, into, &limits))
                }
                None => unpack::unpack(archive_guard.path(), archive, into, &limits),
            };
            if result.is_ok() && read_only {
                make_read_only(into);
            }
            result
        })
        .await
        .map_err(|error| FetchError::io("unpacking into", dest, std::io::Error::other(error)))?;
        drop(scratch);
        result.map_err(|source| FetchError::Unpack {
            name: artifact.name.clone(),
            source,
        })?;
        // Swapped in at once: `dest` is the old tree or the new one, never neither.
        // The old one, now under the scratch name, goes when the scratch does.
        let swapped = rustix::fs::renameat_with(
            rustix::fs::CWD,
            unpacked.path(),
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        match swapped {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => {
                tokio::fs::rename(unpacked.path(), dest)
                    .await
                    .map_err(|error| FetchError::io("renaming into place", dest, error))?;
                unpacked.disarm();
            }
            Err(error) => {
                return Err(FetchError::io("swapping into place", dest, error.into()));
            }
        }
        // Removing the old tree may take a while: not on the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(unpacked)).await;
        Ok(Materialized::Unpacked)
    }

    fn progress(&self, artifact: &Artifact, event: ProgressEvent) {
        if let Some(progress) = &self.inner.progress {
            progress(&Progress {
                name: &artifact.name,
                event,
            });
        }
    }
}

/// Clears the write bits of everything under `dir` (best effort).
fn make_read_only(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if file_type.is_dir() {
            make_read_only(&path);
        } else if file_type.is_file()
            && let Ok(metadata) = entry.metadata()
        {
            let mode = metadata.permissions().mode() & !0o222;
            let _ = std::fs::set_permissions(&path, Permissions::from_mode(mode));
        }
    }
}

/// The downloads being stored, by ticket: [`Fetcher::stored`] waits for those
/// with a ticket below the next one at its call.
#[derive(Debug, Default)]
struct InFlight {
    next: u64,
    tickets: std::collections::BTreeSet<u64>,
}

impl InFlight {
    fn oldest(&self) -> Option<u64> {
        self.tickets.first().copied()
    }
}

/// One download being stored: in [`Inner::storing`] until dropped.
struct Storing {
    in_flight: tokio::sync::watch::Sender<InFlight>,
    ticket: u64,
}

impl Storing {
    fn start(in_flight: &tokio::sync::watch::Sender<InFlight>) -> Storing {
        let mut ticket = 0;
        in_flight.send_modify(|in_flight| {
            ticket = in_flight.next;
            in_flight.next += 1;
            in_flight.tickets.insert(ticket);
        });
        Storing {
            in_flight: in_flight.clone(),
            ticket,
        }
    }
}

impl Drop for Storing {
    fn drop(&mut self) {
        self.in_flight.send_modify(|in_flight| {
            in_flight.tickets.remove(&self.ticket);
        });
    }
}

/// Whether the stored file holds the body and nothing more (a [`FileCache`]'s does):
/// then it can be read as a whole, as an archive is.
fn is_whole_body(stored: &cachecontrol::StoredFile) -> bool {
    stored
        .file()
        .metadata()
        .is_ok_and(|metadata| metadata.len() == stored.len())
}

/// The stored file, at its start: a duplicate of its descriptor, which shares the
/// file offset with it and with the response's body, rewound (the response is
/// dropped and not read; nothing else reads this file).
fn from_start(stored: &cachecontrol::StoredFile) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    let mut file = stored.file().try_clone()?;
    file.rewind()?;
    Ok(file)
}

/// What a successful attempt did.
struct Done {
    served: Served,
    materialized: Materialized,
    size: u64,
    network_bytes: u64,
}

/// A successful attempt: the body in a scratch file, not yet in place.
struct Taken {
    done: Done,
    scratch: Scratch,
    /// The body is still being stored in the cache.
    recording: Option<Recording>,
    /// An archive to unpack from the cache's file rather than from the scratch path.
    archive: Option<cachecontrol::StoredFile>,
    /// The downloaded file, for the cache to copy once it is in place.
    keep: Option<Keep>,
}

/// A downloaded body's file (open read-only on the scratch file, which becomes the
/// artifact), to hand to the cache.
struct Keep {
    pending: PendingStore,
    file: std::fs::File,
    len: u64,
}

/// Whether files in `dir` have change times that every write moves, from this
/// machine's clock: a local ext4, XFS or Btrfs. Not tmpfs (a write through a shared
/// mapping need not move them), nor a network file system (the server's clock,
/// attributes cached). (An ext4 made with small inodes, or an ext2 or ext3, keeps
/// times to the second: the hand-over then waits for the next second.)
fn times_tell_writes(dir: &Path) -> bool {
    const EXT4: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const BTRFS: u64 = 0x9123_683E;
    rustix::fs::statfs(dir)
        .is_ok_and(|stat| matches!(u64::try_from(stat.f_type), Ok(EXT4 | XFS | BTRFS)))
}

/// A downloaded file handed to the cache, as it was then.
struct Watch {
    file: std::fs::File,
    identity: FileIdentity,
}

impl Watch {
    /// Whether the file is no longer what it was (a job wrote to it).
    fn changed(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|now| FileIdentity::of(&now) != self.identity)
    }
}

/// Downloads `url` again, for the cache alone (the body read and dropped as it is
/// stored); a failure is only logged: the next fetch downloads it.
async fn download_for_the_cache(client: &ClientWithMiddleware, url: &Url) {
    let response = client
        .get(url.clone())
        .with_extension(CacheMode::Reload)
        .send()
        .await;
    let mut response = match response {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            tracing::info!(%url, status = %response.status(), "not downloaded again for the cache");
            return;
        }
        Err(error) => {
            tracing::info!(%url, %error, "not downloaded again for the cache");
            return;
        }
    };
    // Read to its end, the body's end comes once the cache has committed it.
    loop {
        match response.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => {
                tracing::info!(%url, %error, "not downloaded again for the cache");
                return;
            }
        }
    }
}

/// What the writer of a download leaves: its file (read-only, when it is to be handed
/// to the cache), and the body's digest when asked.
struct Written {
    file: Option<std::fs::File>,
    len: u64,
    digest: Option<Sha256>,
}

/// Why a download's body did not reach its file.
enum Broken {
    /// The network's error, which may pass if tried again.
    Network(reqwest::Error),
    /// Creating or writing the file (or the fetch was dropped while its body
    /// arrived: then no one sees this).
    Writing(std::io::Error),
}

/// `path`, which `written` is open on, opened again read-only (the same file, or an
/// error).
fn read_only_again(written: &std::fs::File, path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::MetadataExt;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = std::fs::File::from(rustix::fs::open(path, flags, Mode::empty())?);
    let (was, is) = (written.metadata()?, file.metadata()?);
    if (was.dev(), was.ino()) != (is.dev(), is.ino()) {
        return Err(std::io::Error::other(
            "the downloaded file was replaced while it was written",
        ));
    }
    Ok(file)
}

/// What tells a file handed to a job apart from the same file after a write: any
/// write moves the change time, which no one can set back (nor can a write be told
/// from another change: a change of mode, a rename, a removal all count as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The longest a hand-over waits for the clock to pass a file's change time.
const CLOCK_WAIT: Duration = Duration::from_secs(2);

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Waits until the clock file times are taken from has moved past this change
    /// time, so that any later write changes it (on a file system that keeps times
    /// to the second, as the nanoseconds of 0 suggest, until the next second);
    /// `false` when it does not within [`CLOCK_WAIT`] (the clock was set back).
    async fn wait_until_changes_show(&self) -> bool {
        let (seconds, nanos) = self.ctime;
        let past = |now: rustix::time::Timespec| {
            if nanos == 0 {
                now.tv_sec > seconds
            } else {
                (now.tv_sec, now.tv_nsec) > (seconds, nanos)
            }
        };
        let started = Instant::now();
        loop {
            if past(rustix::time::clock_gettime(
                rustix::time::ClockId::RealtimeCoarse,
            )) {
                return true;
            }
            if started.elapsed() > CLOCK_WAIT {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Why an attempt failed.
enum Failure {
    /// Worth another try.
    Transient(Transient),
    /// Not.
    Final(FetchError),
    /// The cache's copy does not have the artifact's digest; it was fetched
    /// through these URLs.
    StoredCopyIsWrong { actual: Sha256, urls: Vec<Url> },
    /// What the cache alone could answer is not a copy to use (an error, a
    /// redirect, a stale copy): ask the origin.
    Unusable,
}

impl Failure {
    fn with_urls(self, urls: Vec<Url>) -> Failure {
        match self {
            Failure::StoredCopyIsWrong { actual, .. } => {
                Failure::StoredCopyIsWrong { actual, urls }
            }
            other => other,
        }
    }
}

/// A failure that may pass.
#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error("{}", root_cause(.0))]
    Request(reqwest_middleware::Error),
    #[error("the origin answered {0}")]
    Status(StatusCode),
}

impl Transient {
    fn into_error(self, artifact: &Artifact, attempts: u32) -> FetchError {
        match self {
            Transient::Request(source) => FetchError::Network {
                name: artifact.name.clone(),
                url: artifact.url.clone(),
                attempts,
                reason: root_cause(&source),
                source,
            },
            Transient::Status(status) => FetchError::Status {
                name: artifact.name.clone(),
                url: artifact.url.clone(),
                status,
                attempts,
            },
        }
    }
}

/// Which request errors are worth another try: the connection, a timeout, a body
/// cut short. Not a bad URL, too many redirects, or a middleware's refusal.
fn classify(error: reqwest_middleware::Error) -> Failure {
    let transient = match &error {
        reqwest_middleware::Error::Reqwest(error) => {
            error.is_connect() || error.is_timeout() || error.is_body() || error.is_request()
        }
        reqwest_middleware::Error::Middleware(_) => false,
    };
    if transient {
        Failure::Transient(Transient::Request(error))
    } else {
        Failure::Final(FetchError::Request {
            reason: root_cause(&error),
            source: error,
        })
    }
}

/// The error and its causes, outermost first, as one line: reqwest's own message
/// ("error sending request") does not say what went wrong, its causes do.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A path next to an artifact's, written before it is renamed to the artifact's
/// name; removed when the last clone is dropped, unless it was renamed.
///
/// Blocking tasks that write it hold a clone: when a fetch is cancelled while one
/// runs, the path is removed after the task has finished writing, not before.
#[derive(Debug, Clone)]
struct Scratch(Arc<ScratchPath>);

#[derive(Debug)]
struct ScratchPath {
    path: PathBuf,
    armed: std::sync::atomic::AtomicBool,
}

impl Scratch {
    fn new(dest: &Path) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = dest
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unique = format!(
            ".{name}.{}-{}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Scratch(Arc::new(ScratchPath {
            path: dest.with_file_name(unique),
            armed: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    fn path(&self) -> &Path {
        &self.0.path
    }

    /// It has been renamed: nothing to remove.
    fn disarm(&self) {
        self.0.armed.store(false, Ordering::Release);
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let removed = match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(error) = removed {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a partial file");
        }
    }
}

impl FetcherBuilder {
    /// The directory of the cache (its files under `http/`) and of the host-wide
    /// fetch locks. Default: [`default_cache_dir`].
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The most bytes the file cache keeps, least recently used entries evicted
    /// first; `None` for no bound. Default: 20 GiB.
    pub fn max_cache_bytes(mut self, max: Option<u64>) -> Self {
        self.max_cache_bytes = max;
        self
    }

    /// A shared tier behind the file cache, typically a
    /// [`RedisCache`](cachecontrol::RedisCache): what one host fetched, the others
    /// get from it ([`Tiered`]`::new(FileCache, shared)`).
    pub fn shared_tier(mut self, store: impl Cache) -> Self {
        self.shared_tier = Some(Arc::new(store));
        self
    }

    /// Uses this store instead of a file cache (and shared tier). Only a store that
    /// keeps bodies in files ([`FileCache`]) lets artifacts be copied without
    /// reading them.
    pub fn store(mut self, store: impl Cache) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The HTTP client under the cache. Turn its redirects off
    /// (`redirect(Policy::none())`): the cache follows them itself, so that each hop
    /// is cached under its own URL.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How long a download's host-wide lock waits for the cache to store its body
    /// (synced to disk, and sent to the shared tier when there is one) after the
    /// fetch has returned. Meanwhile, other fetches of the same URL on the host wait
    /// for it rather than downloading it too; past this, they go on, and may
    /// download it again. It also bounds [`Fetcher::stored`] and [`Fetcher::close`].
    /// Default: 10 minutes.
    pub fn store_wait(mut self, wait: Duration) -> Self {
        self.store_wait = wait;
        self
    }

    /// Keeps copies of cached artifacts ready for the next runs, up to `max_bytes`
    /// in all ([`DEFAULT_PREPARED_COPIES`] by default; 0 for none).
    ///
    /// Where the file system cannot share blocks between files (ext4; XFS and btrfs
    /// can, and need none of this), each fetch of a writable artifact from the cache
    /// copies it into the run directory, which for a large artifact is most of the
    /// fetch's time. With prepared copies, after such a fetch another copy is made in
    /// the background (under `prepared/` in the cache directory; synced, and named
    /// after the cached file it copies), and the next fetch of that artifact moves it
    /// into its run directory at once ([`Materialized::Prepared`]), then prepares the
    /// next. Only artifacts fetched from the cache are prepared for: one fetched
    /// once costs no more disk space than the cache's copy. Files under 1 MiB are
    /// simply copied. It takes the disk space of one more copy of each artifact
    /// (those used least recently go first when the budget is full; none is made
    /// that would leave less than a tenth of the file system free), and the copying
    /// moves from the start of a run to the time between runs: runs of one job that
    /// start faster than a copy can be made copy as before. Only for a run directory
    /// on the cache's file system (a rename); [`stored`](Fetcher::stored) and
    /// [`close`](Fetcher::close) wait for the copies being made, so a short-lived
    /// process that fetches once from the cache may set 0 to exit sooner.
    pub fn prepared_copies(mut self, max_bytes: u64) -> Self {
        self.prepared_copies = max_bytes;
        self
    }

    /// How many artifacts are fetched at a time (at least 1). Default: 4.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How failed requests are retried.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Retry {
            attempts: retry.attempts.max(1),
            ..retry
        };
        self
    }

    /// The limits on what an archive may unpack to.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Calls `progress` as artifacts are fetched (from the fetching tasks, and from
    /// the threads that write the downloads: keep it quick).
    pub fn on_progress(mut self, progress: impl Fn(&Progress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Opens the cache and builds the fetcher.
    pub fn build(self) -> Result<Fetcher, FetchError> {
        let cache_dir = match self.cache_dir {
            Some(dir) => dir,
            None => default_cache_dir().ok_or(FetchError::NoCacheDir)?,
        };
        let store: Arc<dyn Cache> = match self.store {
            Some(store) => store,
            None => {
                let dir = cache_dir.join("http");
                std::fs::create_dir_all(&dir)
                    .map_err(|error| FetchError::io("creating the cache directory", &dir, error))?;
                // The fetcher does not wait for the cache's commit: a body is synced
                // once whole, not while it arrives (which would slow the download).
                let mut files = FileCache::builder(&dir).sync_while_writing(false);
                if let Some(max) = self.max_cache_bytes {
                    files = files.max_bytes(max);
                }
                let files = files.build().map_err(|source| FetchError::Cache {
                    dir: dir.clone(),
                    source,
                })?;
                match self.shared_tier {
                    Some(shared) => Arc::new(Tiered::new(files, shared)),
                    None => Arc::new(files),
                }
            }
        };
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .user_agent(concat!("dadd-fetcher/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(FetchError::Client)?,
        };
        let cache = CacheControl::builder(store).follow_redirects(10).build();
        let client = reqwest_middleware::ClientBuilder::new(client)
            .with(cache.clone())
            .build();
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                cache,
                locks: cache_dir.join("locks"),
                verified: Verified::new(cache_dir.join("verified")),
                concurrency: self.concurrency,
                retry: self.retry,
                limits: self.limits,
                progress: self.progress,
                storing: tokio::sync::watch::Sender::new(InFlight::default()),
                store_wait: self.store_wait,
                prepared: (self.prepared_copies > 0)
                    .then(|| Prepared::new(cache_dir.join("prepared"), self.prepared_copies)),
            }),
        })
    }
}
