//! [`FileCache`]: entries in files under one directory, shared safely by threads and
//! processes; bodies handed out as open files.
//!
//! # Layout
//!
//! An entry lives where the SHA-256 of its key says, in hex: the first two pairs of
//! digits name two levels of directories (65,536 of them), so that no directory grows
//! large. Metadata and body are separate files:
//!
//! ```text
//! <dir>/3f/a2/3fa2…e1.meta                 key, body generation and length, policy
//! <dir>/3f/a2/3fa2…e1.<generation>.body    the body, as received
//! <dir>/3f/a2/.3fa2…e1.<random>.tmp         a file being written
//! ```
//!
//! A metadata file is a small header, then the entry's [`Meta`] as
//! [`format::encode`] writes it (versioned and checksummed on its own):
//!
//! ```text
//! "CCf" | layout version: u8 | generation: u64 | body length: u64 | key length: u32 | key | checksum: 8 bytes
//! ```
//!
//! The checksum is the start of the SHA-256 of the header before it. The key is kept so
//! that [`Cache::entries`] can list what is stored, and so that two keys whose hashes
//! collided are told apart. Every entry has a body file, empty for a variants marker.
//!
//! # Publishing an entry
//!
//! 1. The body is streamed into a temp file in the entry's directory as it arrives,
//!    then fsynced. A body stream that ends with an error stops here: the temp file is
//!    removed and the stored entry, if any, stays as it was.
//! 2. The metadata, naming a new *generation* (a random number), is written to another
//!    temp file and fsynced.
//! 3. Under an exclusive `flock` on the entry's directory, the body temp file is
//!    renamed to `<hash>.<generation>.body`, the metadata temp file is renamed over
//!    `<hash>.meta`, and every other body file of the entry (the one the replaced
//!    metadata named) is unlinked.
//!
//! A 304 freshening ([`Cache::update`]) writes only new metadata, with the same
//! generation, and renames it in under the lock after checking that the stored entry
//! is still the response it validated (same [`CachePolicy::body_id`]).
//!
//! # Why a reader never sees a torn or mixed entry
//!
//! - No file is ever written once it has its final name; a rename replaces a whole
//!   file at once. A reader opens either the old metadata file or the new one, whole.
//! - The metadata names its body by generation and records its length, and a body
//!   file never changes. So the body a reader opens is the one its metadata was
//!   written with, or it is missing (the entry was replaced meanwhile and its old body
//!   unlinked) or of the wrong length (damaged). Then the reader looks again; if the
//!   body is still not right when looked at under the directory's lock, where no
//!   writer can be halfway, the entry is damaged and removed.
//! - A body file that is open stays readable after it is unlinked: a reader holding a
//!   [`Body::File`] reads the whole body it was given, whatever writers do next. That
//!   is what makes the body a snapshot, and the fetcher's zero-copy use of it safe.
//! - Readers take no lock, so a slow reader never holds up a writer.
//!
//! Anything that does not check out (an unknown layout or format version, a failed
//! checksum, a key that is not the one asked for, a body file missing or of the wrong
//! length) is a miss, and the entry is removed: never a panic, never a wrong body.
//!
//! # Several processes
//!
//! Any number of processes, and of `FileCache` values in one process, may share a
//! directory. Writers of one directory take turns on its `flock`, an advisory lock the
//! kernel releases when its holder dies: a crash leaves no stale lock. What a crashed
//! writer can leave behind is harmless and cleaned up by the next scan of a store
//! with a size bound: temp files (removed once untouched for an hour) and a body file
//! no metadata names. The directory must be on a local file system, where `flock` and
//! `rename` work as POSIX says (NFS is not supported).
//!
//! # The hit path
//!
//! A hit costs one `stat` of the metadata file, an `open` and an `fstat` of the body
//! file, and no decoding: the decoded metadata is kept in memory ([`DecodedCache`])
//! with a fingerprint of the metadata file's identity (device, inode, size,
//! modification time in nanoseconds), and used as long as the file has not changed.
//! The file work runs on tokio's blocking pool, never on the async runtime's threads.
//!
//! # Size bound
//!
//! With [`FileCacheBuilder::max_bytes`], the store keeps an index of the entries
//! (size, last use) in memory, built by scanning the directory before the first
//! write, and updated as this process stores, reads and removes entries. After each
//! write, while the index adds up to more than the bound, the least recently used
//! entry is removed (its metadata first, then its body). Sizes count the metadata and
//! body files' lengths.
//!
//! The bound is enforced on this process's view. Entries other processes write are
//! counted when this process reads them, and at the next scan (every
//! [`rescan_interval`](FileCacheBuilder::rescan_interval), at the next write). Each
//! process evicts by its own recency order: an entry that another process uses often
//! but this one never reads looks old here. So with several processes writing to one
//! directory, it may hold more than the bound for up to a rescan interval; every
//! process should be given the same bound. After a restart, last use is taken from
//! the files: the metadata's modification time or the body's access time, whichever
//! is later.
//!
//! # Durability
//!
//! Every file is fsynced before it is renamed, so that a name never points to content
//! that is not on disk. The renames are made durable by syncing the directories they
//! happened in, which [`Cache::close`] does for every directory this process changed.
//! A crash before that can lose the latest entries (a miss later), never serve a wrong
//! one: a metadata file whose body did not survive fails its checks and is removed.
//!
//! `close` waits for the writes being published, removals and scans in flight; a body
//! still arriving is not waited for: its writer gets [`StoreError::Closed`] at its
//! next chunk, and its temp file is removed. Then the directories are synced.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Seek, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::format::{self, DecodedCache, FormatError};
use super::{
    Body, Cache, Entry, EntryInfo, EntryStream, FileBody, Meta, SMALL_FILE_BODY, StoreError,
};
use crate::policy::{CachePolicy, random_u64};

const MAGIC: &[u8; 3] = b"CCf";
/// The version of the layout and of the metadata file's header.
const LAYOUT_VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 8;
const HEADER_FIXED_LEN: usize = MAGIC.len() + 1 + 8 + 8 + 4;
/// No key is anywhere near this long; a longer one is garbage.
const MAX_KEY: usize = 64 << 10;
/// No metadata file is anywhere near this large; a larger one is not read.
const MAX_META_FILE: u64 = 64 << 20;
/// How many entries' decoded metadata are kept in memory.
const DECODED_CAPACITY: usize = 4096;
/// Without a size bound, the index only remembers where recently read bodies are.
const UNBOUNDED_INDEX_CAPACITY: usize = 4096;
/// Streamed bodies reach the disk in vectored writes of at least this many bytes...
const WRITE_BATCH: usize = 1 << 20;
/// ...and of up to this many while the previous write is still in progress (so a
/// body being stored holds at most twice this in memory, when the disk is slower
/// than the network).
const MAX_WRITE_BATCH: usize = 4 << 20;
/// Lock-free looks before a lookup settles the entry under the directory's lock.
const LOOKUP_ATTEMPTS: usize = 2;
/// A temp file untouched for this long belongs to a writer that is gone.
const TEMP_FILE_GRACE: Duration = Duration::from_secs(3600);
const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(600);

/// Entries in files under a directory: metadata and body in separate files, published
/// atomically, safe to share between threads and processes. See the
/// [module documentation](self) for the layout, the publish protocol and the
/// multi-process story.
///
/// A hit hands out the body as [`Body::File`]: an open file that can be copied with
/// `copy_file_range` or reflinked, and that stays the same whatever writers do next.
///
/// ```
/// use cachecontrol::{CacheControl, FileCache};
///
/// # fn main() -> Result<(), cachecontrol::StoreError> {
/// # let dir = tempfile::tempdir().map_err(|source| cachecontrol::StoreError::Io {
/// #     context: "tempdir".into(), source })?;
/// # let dir = dir.path();
/// let store = FileCache::builder(dir)
///     .max_bytes(10 << 30) // 10 GiB, least recently used first out
///     .build()?;
/// let cache = CacheControl::new(store);
/// # drop(cache);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileCache {
    inner: Arc<Inner>,
}

/// Configures a [`FileCache`]; made by [`FileCache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct FileCacheBuilder {
    root: PathBuf,
    options: Options,
}

#[derive(Debug, Clone)]
struct Options {
    forever: bool,
    file_mode: u32,
    dir_mode: u32,
    max_bytes: Option<u64>,
    rescan_interval: Duration,
    sync_while_writing: bool,
}

impl FileCacheBuilder {
    /// Keep entries forever: [`Cache::delete`] and [`Cache::delete_prefix`] do
    /// nothing, so an invalidation or a response that may not be stored leaves the
    /// stored one in place (as the Python CacheControl's `forever`). A replaced entry
    /// is still replaced, a damaged one still removed, [`Cache::clear`] still clears,
    /// and a [`max_bytes`](Self::max_bytes) bound still evicts. Off by default.
    pub fn forever(mut self, forever: bool) -> Self {
        self.options.forever = forever;
        self
    }

    /// The permissions of the files the store creates, exactly (the umask does not
    /// apply). `0o600` by default: only the owner reads the cache.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.options.file_mode = mode & 0o7777;
        self
    }

    /// The permissions of the directories the store creates, exactly. `0o700` by
    /// default. An existing directory keeps its permissions.
    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.options.dir_mode = mode & 0o7777;
        self
    }

    /// Bounds the bytes the entries take (metadata and body files); the least
    /// recently used entries are removed to stay under it. Unbounded by default. The
    /// bound is kept on this process's view of the directory: see the
    /// [module documentation](self#size-bound).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.options.max_bytes = Some(max_bytes);
        self
    }

    /// With a size bound, how often the directory is scanned again to learn what
    /// other processes stored and removed (at the next write after the interval).
    /// Ten minutes by default.
    pub fn rescan_interval(mut self, interval: Duration) -> Self {
        self.options.rescan_interval = interval;
        self
    }

    /// Whether a streamed body is synced to disk while it arrives (every 32 MiB, in
    /// the background), so that the sync before its entry is published has only the
    /// tail left. On by default: a reader of a response being stored gets the body's
    /// end once the entry is committed, and for a body of many MiB that wait is
    /// then short. The price is the disk writing while the body arrives, which slows
    /// the download down: switch it off when the reader does not wait for the commit
    /// (a request with [`StoreInBackground`](crate::StoreInBackground), as the
    /// fetcher's). The sync before publishing happens either way. Off, that sync is
    /// long for a large body, and concurrent requests for the same URL that wait for
    /// this one's response see no progress meanwhile: after a few seconds of it
    /// (see [`coalesce_wait`](crate::CacheControlBuilder::coalesce_wait)) they go to
    /// the origin themselves.
    pub fn sync_while_writing(mut self, sync: bool) -> Self {
        self.options.sync_while_writing = sync;
        self
    }

    /// Opens the store, creating its directory if needed.
    pub fn build(self) -> Result<FileCache, StoreError> {
        let Options {
            dir_mode,
            max_bytes,
            ..
        } = self.options;
        create_dir(&self.root, dir_mode)?;
        let index = Index::new(match max_bytes {
            Some(_) => None,
            None => Some(UNBOUNDED_INDEX_CAPACITY),
        });
        Ok(FileCache {
            inner: Arc::new(Inner {
                root: self.root,
                options: self.options,
                decoded: DecodedCache::new(DECODED_CAPACITY),
                index: Mutex::new(index),
                closed: AtomicBool::new(false),
                writes: Arc::new(tokio::sync::RwLock::new(())),
                unsynced_dirs: Mutex::new(HashSet::new()),
                last_scan: tokio::sync::Mutex::new(None),
                scanned: AtomicBool::new(false),
            }),
        })
    }
}

impl FileCache {
    /// A store in `dir` (created if needed) with the defaults: files `0o600`,
    /// directories `0o700`, no size bound, deletes honoured.
    pub fn new(dir: impl Into<PathBuf>) -> Result<FileCache, StoreError> {
        FileCache::builder(dir).build()
    }

    /// Starts configuring a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileCacheBuilder {
        FileCacheBuilder {
            root: dir.into(),
            options: Options {
                forever: false,
                file_mode: 0o600,
                dir_mode: 0o700,
                max_bytes: None,
                rescan_interval: DEFAULT_RESCAN_INTERVAL,
                sync_while_writing: true,
            },
        }
    }

    /// The directory the entries are in.
    pub fn dir(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `work` on the blocking pool while holding off [`Cache::close`], which
    /// waits for it; refused once the store is closed.
    async fn writing<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.check_open()?;
        let permit = Arc::clone(&self.inner.writes).read_owned().await;
        blocking(&self.inner, move |inner| {
            // Moved here so that close waits for this work even if the caller is gone.
            let _permit = permit;
            inner.check_open()?;
            work(inner)
        })
        .await
    }

    /// Writes a body into a temp file; `None` when it is too large to be kept.
    async fn write_body(
        &self,
        temp: &TempFile,
        file: File,
        body: Body,
    ) -> Result<Option<u64>, StoreError> {
        let max = self.inner.options.max_bytes.unwrap_or(u64::MAX);
        let path = temp.path.clone();
        match body {
            Body::Bytes(bytes) if bytes.len() as u64 > max => Ok(None),
            Body::Bytes(bytes) => {
                blocking(&self.inner, move |_| {
                    let mut file = file;
                    file.write_all(&bytes)
                        .and_then(|()| file.sync_all())
                        .map_err(|source| io_error("writing the body file", &path, source))?;
                    Ok(Some(bytes.len() as u64))
                })
                .await
            }
            Body::File(source) if source.len() > max => Ok(None),
            Body::File(source) => {
                blocking(&self.inner, move |_| {
                    copy_file_body(&source, file, &path).map(Some)
                })
                .await
            }
            Body::Stream(mut stream) => {
                // Chunks are gathered (shared, not copied) into batches, and each
                // batch is written with one vectored write on the blocking pool
                // while the next one gathers: the stream is never held up by a
                // write in progress unless a whole batch is waiting behind it.
                // Unless the store was built not to, what is written is synced as
                // the body arrives, in the background, so that the sync before
                // publishing has only the tail left to do rather than the whole
                // body (seconds for a GiB, after the body has arrived).
                let file = Arc::new(file);
                let mut syncer = EarlySync::new(
                    Some(Arc::clone(&file)).filter(|_| self.inner.options.sync_while_writing),
                );
                let mut batch = Batch::default();
                let mut writing: Option<tokio::task::JoinHandle<io::Result<()>>> = None;
                let mut len = 0u64;
                let mut ended = false;
                while !ended {
                    match stream.next().await {
                        Some(chunk) => {
                            let chunk = chunk?;
                            self.inner.check_open()?;
                            len += chunk.len() as u64;
                            if len > max {
                                return Ok(None);
                            }
                            syncer.written(chunk.len() as u64);
                            batch.push(chunk);
                            let previous_done = writing.as_ref().is_none_or(|w| w.is_finished());
                            if batch.len < WRITE_BATCH
                                || (!previous_done && batch.len < MAX_WRITE_BATCH)
                            {
                                continue;
                            }
                        }
                        None => ended = true,
                    }
                    if let Some(previous) = writing.take() {
                        finish_write(previous, &path).await?;
                    }
                    if batch.len > 0 {
                        let chunks = std::mem::take(&mut batch).chunks;
                        let file = Arc::clone(&file);
                        writing = Some(tokio::task::spawn_blocking(move || {
                            write_chunks(&file, &chunks)
                        }));
                    }
                }
                if let Some(last) = writing.take() {
                    finish_write(last, &path).await?;
                }
                blocking(&self.inner, move |_| {
                    file.sync_all()
                        .map_err(|source| io_error("syncing the body file", &path, source))
                })
                .await?;
                Ok(Some(len))
            }
        }
    }

    /// With a size bound: scans the directory before the first write, and again
    /// when the last scan is older than the rescan interval.
    async fn refresh_index(&self) {
        if self.inner.options.max_bytes.is_none() {
            return;
        }
        let mut last_scan = if self.inner.scanned.load(Ordering::Acquire) {
            // Another write is scanning: no need to wait for it.
            match self.inner.last_scan.try_lock() {
                Ok(last_scan) => last_scan,
                Err(_) => return,
            }
        } else {
            // The first write waits for the first scan: eviction needs it.
            self.inner.last_scan.lock().await
        };
        if last_scan.is_some_and(|at| at.elapsed() < self.inner.options.rescan_interval) {
            return;
        }
        let started = self.inner.index.lock().epoch;
        match self.writing(Inner::scan).await {
            Ok(scanned) => {
                let mut index = self.inner.index.lock();
                index.merge(scanned, started);
                tracing::debug!(
                    dir = %self.inner.root.display(),
                    entries = index.slots.len(),
                    bytes = index.bytes,
                    "file cache scanned"
                );
            }
            Err(StoreError::Closed) => return,
            Err(error) => {
                // Retried at the next write; meanwhile the bound holds on what is known.
                tracing::warn!(dir = %self.inner.root.display(), %error, "file cache scan failed");
                return;
            }
        }
        *last_scan = Some(Instant::now());
        self.inner.scanned.store(true, Ordering::Release);
    }
}

#[async_trait]
impl Cache for FileCache {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.check_open()?;
        // A miss is one `stat` of a name that is not there, answered by the
        // kernel's directory cache: cheaper here than the trip to the blocking pool
        // it would otherwise take (tens of µs, a third of a loopback request).
        // On a hit, the lookup starts from this `stat`, not from one of its own.
        let name = Name::of(key);
        let place = self.inner.place(&name);
        let stat = match fs::metadata(place.meta()) {
            Ok(stat) => Some(stat),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.inner.index.lock().remove(&name);
                return Ok(None);
            }
            // The lookup says what is wrong.
            Err(_) => None,
        };
        let key = key.to_owned();
        blocking(&self.inner, move |inner| {
            inner.lookup(name, place, stat, &key)
        })
        .await
    }

    async fn put(&self, key: &str, meta: Meta, body: Body) -> Result<(), StoreError> {
        self.inner.check_open()?;
        let name = Name::of(key);
        let place = self.inner.place(&name);
        let (temp, file) = {
            let place = place.clone();
            blocking(&self.inner, move |inner| inner.create_temp(&place)).await?
        };
        let written = self.write_body(&temp, file, body).await?;
        let generation = random_u64();
        let published = written.map(|body_len| Published {
            generation,
            body_len,
            meta: encode_meta_file(key, generation, body_len, &meta),
        });
        let max = self.inner.options.max_bytes.unwrap_or(u64::MAX);
        let Some(published) = published.filter(|p| p.meta.len() as u64 + p.body_len <= max) else {
            tracing::debug!(
                key,
                max,
                "entry larger than the file cache's bound; not stored"
            );
            drop(temp);
            // The newer response replaces the stored one even when it cannot be kept.
            return self.delete(key).await;
        };
        self.refresh_index().await;
        let key = key.to_owned();
        self.writing(move |inner| {
            inner.publish(&name, &place, &key, meta, temp, published)?;
            // The entry is stored: a failure to evict others is not this write's.
            if let Err(error) = inner.evict() {
                tracing::warn!(%error, "file cache eviction failed");
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.writing(move |inner| inner.update(&key, policy)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.check_open()?;
        if self.inner.options.forever {
            return Ok(());
        }
        let key = key.to_owned();
        self.writing(move |inner| {
            let name = Name::of(&key);
            let place = inner.place(&name);
            if let Some(_lock) = inner.lock_dir(&place.dir)? {
                inner.remove_locked(&name, &place)?;
            }
            inner.decoded.forget(&key);
            Ok(())
        })
        .await
    }

    fn entries(&self) -> EntryStream<'_> {
        if let Err(error) = self.inner.check_open() {
            return Box::pin(futures_util::stream::iter([Err(error)]));
        }
        let inner = Arc::clone(&self.inner);
        // Listed by a blocking task as it walks, a few entries ahead of the reader:
        // listing a large cache takes constant memory.
        let started = async move {
            let (sender, receiver) = tokio::sync::mpsc::channel(64);
            tokio::task::spawn_blocking(move || {
                let walked = inner.for_each_dir(|dir| inner.list_dir(dir, &sender));
                if let Err(error) = walked {
                    let _ = sender.blocking_send(Err(error));
                }
            });
            futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|item| (item, receiver))
            })
        };
        Box::pin(futures_util::stream::once(started).flatten())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.check_open()?;
        if self.inner.options.forever {
            return Ok(0);
        }
        let prefix = prefix.to_owned();
        self.writing(move |inner| {
            let mut removed = 0;
            inner.for_each_dir(|dir| {
                removed += inner.remove_prefix_in(dir, &prefix)?;
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(removed)
        })
        .await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.writing(|inner| {
            inner.for_each_dir(|dir| {
                inner.clear_dir(dir)?;
                Ok(ControlFlow::Continue(()))
            })?;
            inner.index.lock().clear();
            inner.decoded.clear();
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Waits for the writes in flight; those that come later see the store closed.
        let _no_writes = self.inner.writes.write().await;
        let dirs: Vec<PathBuf> = self.inner.unsynced_dirs.lock().drain().collect();
        let synced = blocking(&self.inner, move |_| {
            let mut first_error = Ok(());
            for dir in &dirs {
                if let Err(error) = sync_dir(dir) {
                    tracing::warn!(%error, "file cache: a directory could not be synced");
                    if first_error.is_ok() {
                        first_error = Err(error);
                    }
                }
            }
            first_error
        })
        .await;
        self.inner.index.lock().clear();
        self.inner.decoded.clear();
        synced
    }
}

/// What the store's handles and blocking tasks share.
#[derive(Debug)]
struct Inner {
    root: PathBuf,
    options: Options,
    decoded: DecodedCache,
    index: Mutex<Index>,
    closed: AtomicBool,
    /// Writes hold it shared; close takes it exclusively, so it waits for them.
    writes: Arc<tokio::sync::RwLock<()>>,
    /// Directories with renames or new entries not yet made durable.
    unsynced_dirs: Mutex<HashSet<PathBuf>>,
    /// When the directory was last scanned (size bound only).
    last_scan: tokio::sync::Mutex<Option<Instant>>,
    scanned: AtomicBool,
}

impl Inner {
    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn place(&self, name: &Name) -> Place {
        let hex = name.hex();
        let dir = self.root.join(&hex[..2]).join(&hex[2..4]);
        Place { dir, hex }
    }

    /// Looks the entry of `key` up without a lock; settles it under the lock when
    /// what it sees does not check out. The caller made its name and place, and
    /// may have `stat`ed its metadata file already (`first`).
    fn lookup(
        &self,
        name: Name,
        place: Place,
        mut first: Option<fs::Metadata>,
        key: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let meta_path = place.meta();
        for _ in 0..LOOKUP_ATTEMPTS {
            let stat = match first.take() {
                Some(stat) => Ok(stat),
                None => fs::metadata(&meta_path),
            };
            let fingerprint = match stat {
                Ok(stat) => fingerprint(&stat),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.index.lock().remove(&name);
                    return Ok(None);
                }
                Err(source) => {
                    return Err(io_error("reading the metadata of", &meta_path, source));
                }
            };
            let (meta, view) = match self.known(&name, key, fingerprint) {
                Some(known) => known,
                None => match self.load(&name, &place, key)? {
                    Loaded::Gone => return Ok(None),
                    Loaded::Damaged(_) => break,
                    Loaded::Found(meta, view) => (meta, view),
                },
            };
            if let Ok(body) = self.open_body(&place, &view)? {
                self.index.lock().touch(&name);
                return Ok(Some(Entry::new(meta, body)));
            }
            // Replaced since its metadata was read, or damaged: look again.
            self.index.lock().forget_view(&name);
        }
        self.settle(&name, &place, key)
    }

    /// The decoded metadata and body location of `name`, if known for a metadata
    /// file with this fingerprint. Read together under the index lock, which is also
    /// held when both are learnt, so that they always come from the same file.
    fn known(&self, name: &Name, key: &str, fingerprint: u64) -> Option<(Meta, View)> {
        let index = self.index.lock();
        let view = index.view(name).filter(|v| v.fingerprint == fingerprint)?;
        let meta = self
            .decoded
            .get_or_decode(key, fingerprint, || None)
            .ok()??;
        Some((meta, view))
    }

    /// Reads and decodes the metadata file of `key`, and remembers what it says.
    fn load(&self, name: &Name, place: &Place, key: &str) -> Result<Loaded, StoreError> {
        let file = match read_meta_file(&place.meta())? {
            MetaRead::Gone => return Ok(Loaded::Gone),
            MetaRead::Damaged(damage) => return Ok(Loaded::Damaged(damage)),
            MetaRead::Read(file) => file,
        };
        if file.key != key {
            return Ok(Loaded::Damaged(Damage::OtherKey(file.key)));
        }
        let view = View {
            fingerprint: file.fingerprint,
            generation: file.generation,
            body_len: file.body_len,
        };
        let mut index = self.index.lock();
        let payload = file.payload;
        match self
            .decoded
            .get_or_decode(key, file.fingerprint, move || Some(payload))
        {
            Ok(Some(meta)) => {
                index.learn(name, file.size + file.body_len, view);
                Ok(Loaded::Found(meta, view))
            }
            Ok(None) => Ok(Loaded::Gone),
            Err(error) => Ok(Loaded::Damaged(Damage::Format(error))),
        }
    }

    /// The body file `view` names, if it is there with the right length.
    fn open_body(&self, place: &Place, view: &View) -> Result<Result<Body, Damage>, StoreError> {
        let path = place.body(view.generation);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Err(Damage::Body {
                    expected: view.body_len,
                    found: None,
                }));
            }
            Err(source) => return Err(io_error("opening the body file", &path, source)),
        };
        let len = file
            .metadata()
            .map_err(|source| io_error("reading the metadata of", &path, source))?
            .len();
        if len != view.body_len {
            return Ok(Err(Damage::Body {
                expected: view.body_len,
                found: Some(len),
            }));
        }
        if len > SMALL_FILE_BODY as u64 {
            return Ok(Ok(Body::File(FileBody::new(file, len))));
        }
        // A small body is read here, in the lookup's blocking task, rather than in a
        // task of its own when it is streamed: that second trip to the blocking pool
        // would cost more than the read. `read_exact_at` leaves the position at the
        // start, for a reader that copies the file.
        let mut contents = vec![0; len as usize];
        file.read_exact_at(&mut contents, 0)
            .map_err(|source| io_error("reading the body file", &path, source))?;
        Ok(Ok(Body::File(FileBody::with_contents(
            file,
            Bytes::from(contents),
        ))))
    }

    /// Looks at the entry under its directory's lock, where no writer is halfway: what
    /// does not check out now is damaged, and removed.
    fn settle(&self, name: &Name, place: &Place, key: &str) -> Result<Option<Entry>, StoreError> {
        let Some(_lock) = self.lock_dir(&place.dir)? else {
            return Ok(None);
        };
        let damage = match self.load(name, place, key)? {
            Loaded::Gone => return Ok(None),
            Loaded::Damaged(damage) => damage,
            Loaded::Found(meta, view) => match self.open_body(place, &view)? {
                Ok(body) => {
                    self.index.lock().touch(name);
                    return Ok(Some(Entry::new(meta, body)));
                }
                Err(damage) => damage,
            },
        };
        tracing::warn!(
            key,
            path = %place.meta().display(),
            %damage,
            "damaged file cache entry; removed"
        );
        self.remove_locked(name, place)?;
        self.decoded.forget(key);
        Ok(None)
    }

    /// Creates a temp file in `place`'s directory, creating the directory if needed.
    fn create_temp(&self, place: &Place) -> Result<(TempFile, File), StoreError> {
        let path = place.temp();
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.options.file_mode)
                .open(&path)
        };
        let file = match open() {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.create_dirs(place)?;
                open().map_err(|source| io_error("creating", &path, source))?
            }
            Err(source) => return Err(io_error("creating", &path, source)),
        };
        let temp = TempFile::new(path);
        // The umask does not decide the mode.
        file.set_permissions(Permissions::from_mode(self.options.file_mode))
            .map_err(|source| io_error("setting the mode of", &temp.path, source))?;
        Ok((temp, file))
    }

    /// Creates the directories of `place` (the root too, if it was removed).
    fn create_dirs(&self, place: &Place) -> Result<(), StoreError> {
        let mut parent = None;
        for dir in [
            self.root.as_path(),
            &self.root.join(&place.hex[..2]),
            &place.dir,
        ] {
            if create_dir(dir, self.options.dir_mode)?
                && let Some(parent) = parent
            {
                self.unsynced(parent);
            }
            parent = Some(dir);
        }
        Ok(())
    }

    /// Writes `bytes` to a fresh temp file, synced; returns it with its fingerprint.
    fn write_temp(&self, place: &Place, bytes: &[u8]) -> Result<(TempFile, u64), StoreError> {
        let (temp, mut file) = self.create_temp(place)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|source| io_error("writing", &temp.path, source))?;
        let stat = file
            .metadata()
            .map_err(|source| io_error("reading the metadata of", &temp.path, source))?;
        Ok((temp, fingerprint(&stat)))
    }

    /// Publishes a body already written to `body` with its metadata; see the module
    /// documentation for the protocol.
    fn publish(
        &self,
        name: &Name,
        place: &Place,
        key: &str,
        meta: Meta,
        body: TempFile,
        published: Published,
    ) -> Result<(), StoreError> {
        let Published {
            generation,
            body_len,
            meta: bytes,
        } = published;
        let (meta_temp, fingerprint) = self.write_temp(place, &bytes)?;
        let lock = self.lock_dir(&place.dir)?;
        let body_path = place.body(generation);
        rename(&body.path, &body_path)?;
        body.disarm();
        if let Err(error) = rename(&meta_temp.path, &place.meta()) {
            // Nothing names this body: it must not stay.
            let _ = fs::remove_file(&body_path);
            return Err(error);
        }
        meta_temp.disarm();
        self.remove_bodies(place, Some(generation))?;
        drop(lock);
        self.unsynced(&place.dir);
        let view = View {
            fingerprint,
            generation,
            body_len,
        };
        let mut index = self.index.lock();
        self.decoded.remember(key, fingerprint, meta);
        index.record(name, bytes.len() as u64 + body_len, view);
        Ok(())
    }

    /// Replaces the metadata of a stored response, keeping its body, if it is still
    /// the response `policy` was made for.
    fn update(&self, key: &str, policy: Arc<CachePolicy>) -> Result<bool, StoreError> {
        let name = Name::of(key);
        let place = self.place(&name);
        let Some(_lock) = self.lock_dir(&place.dir)? else {
            return Ok(false);
        };
        let view = match self.load(&name, &place, key)? {
            Loaded::Found(Meta::Response(stored), view) if stored.body_id() == policy.body_id() => {
                view
            }
            Loaded::Found(..) | Loaded::Gone => return Ok(false),
            Loaded::Damaged(damage) => {
                tracing::warn!(key, %damage, "damaged file cache entry; removed");
                self.remove_locked(&name, &place)?;
                self.decoded.forget(key);
                return Ok(false);
            }
        };
        let meta = Meta::Response(policy);
        let bytes = encode_meta_file(key, view.generation, view.body_len, &meta);
        let (temp, fingerprint) = self.write_temp(&place, &bytes)?;
        rename(&temp.path, &place.meta())?;
        temp.disarm();
        self.unsynced(&place.dir);
        let view = View {
            fingerprint,
            ..view
        };
        let mut index = self.index.lock();
        self.decoded.remember(key, fingerprint, meta);
        index.record(&name, bytes.len() as u64 + view.body_len, view);
        Ok(true)
    }

    /// Removes an entry: its metadata first, so that no reader finds it any more,
    /// then its bodies. The caller holds the directory's lock.
    fn remove_locked(&self, name: &Name, place: &Place) -> Result<(), StoreError> {
        remove_if_present(&place.meta())?;
        self.remove_bodies(place, None)?;
        self.index.lock().remove(name);
        self.unsynced(&place.dir);
        Ok(())
    }

    /// Unlinks the body files of `place`, but the one of generation `keep`. The caller
    /// holds the directory's lock: a body file not named by the metadata then belongs
    /// to no one.
    fn remove_bodies(&self, place: &Place, keep: Option<u64>) -> Result<(), StoreError> {
        for file in read_dir(&place.dir)? {
            if let Some(FileName::Body(hex, generation)) = FileName::parse(&file.name)
                && hex == place.hex
                && Some(generation) != keep
            {
                remove_if_present(&place.dir.join(&file.name))?;
            }
        }
        Ok(())
    }

    /// Removes the least recently used entries while the index is over the bound.
    fn evict(&self) -> Result<(), StoreError> {
        let Some(max) = self.options.max_bytes else {
            return Ok(());
        };
        loop {
            let Some(name) = self.index.lock().pop_oldest_over(max) else {
                return Ok(());
            };
            let place = self.place(&name);
            if let Some(_lock) = self.lock_dir(&place.dir)? {
                self.remove_locked(&name, &place)?;
            }
            tracing::debug!(entry = %place.meta().display(), "evicted from the file cache");
        }
    }

    /// Removes the entries of `dir` whose key starts with `prefix`; returns how many.
    /// A damaged entry has no key to go by: it is left for a lookup to settle.
    fn remove_prefix_in(&self, dir: &Path, prefix: &str) -> Result<u64, StoreError> {
        let files = read_dir(dir)?;
        if files.is_empty() {
            return Ok(0);
        }
        let Some(_lock) = self.lock_dir(dir)? else {
            return Ok(0);
        };
        let mut removed = 0;
        for file in &files {
            let Some(FileName::Meta(hex)) = FileName::parse(&file.name) else {
                continue;
            };
            let Some(name) = Name::from_hex(hex) else {
                continue;
            };
            let MetaRead::Read(meta) = read_meta_file(&dir.join(&file.name))? else {
                continue;
            };
            if meta.key.starts_with(prefix) {
                self.remove_locked(&name, &self.place(&name))?;
                self.decoded.forget(&meta.key);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every entry of `dir`, damaged or not, and the bodies no metadata
    /// names; metadata first, so that no reader finds an entry without its body.
    fn clear_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let Some(_lock) = self.lock_dir(dir)? else {
            return Ok(());
        };
        let mut files = read_dir(dir)?;
        files.retain(|file| {
            matches!(
                FileName::parse(&file.name),
                Some(FileName::Meta(_) | FileName::Body(..))
            )
        });
        files.sort_by_key(|file| !matches!(FileName::parse(&file.name), Some(FileName::Meta(_))));
        for file in &files {
            remove_if_present(&dir.join(&file.name))?;
        }
        if !files.is_empty() {
            self.unsynced(dir);
        }
        Ok(())
    }

    /// Sends what `dir` holds to a listing.
    fn list_dir(
        &self,
        dir: &Path,
        sender: &tokio::sync::mpsc::Sender<Result<EntryInfo, StoreError>>,
    ) -> Result<ControlFlow<()>, StoreError> {
        for file in read_dir(dir)? {
            if !matches!(FileName::parse(&file.name), Some(FileName::Meta(_))) {
                continue;
            }
            let MetaRead::Read(meta) = read_meta_file(&dir.join(&file.name))? else {
                continue;
            };
            let Ok(Meta::Response(policy)) = format::decode(&meta.payload) else {
                continue;
            };
            let info = EntryInfo::new(meta.key, meta.body_len, policy.response_time());
            if sender.blocking_send(Ok(info)).is_err() {
                // The listing was dropped.
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Calls `visit` with each entry directory, stopping when it breaks or the store
    /// is closed.
    fn for_each_dir(
        &self,
        mut visit: impl FnMut(&Path) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        for top in read_dir(&self.root)? {
            if !is_hex_pair(&top.name) {
                continue;
            }
            let top = self.root.join(&top.name);
            for dir in read_dir(&top)? {
                if !is_hex_pair(&dir.name) {
                    continue;
                }
                self.check_open()?;
                if visit(&top.join(&dir.name))?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Reads the whole directory for the index: what each entry takes and when it was
    /// last used. Cleans up on the way what crashed writers left: temp files untouched
    /// for an hour, bodies no metadata names.
    fn scan(&self) -> Result<Vec<Scanned>, StoreError> {
        let mut scanned = Vec::new();
        let now = SystemTime::now();
        self.for_each_dir(|dir| {
            let mut found: HashMap<&str, Found> = HashMap::new();
            let files = read_dir(dir)?;
            for file in &files {
                match FileName::parse(&file.name) {
                    Some(FileName::Meta(hex)) => {
                        let entry = found.entry(hex).or_default();
                        entry.meta = Some((file.len, file.modified));
                    }
                    Some(FileName::Body(hex, _)) => {
                        let entry = found.entry(hex).or_default();
                        entry.bodies += 1;
                        entry.body_len += file.len;
                        entry.body_used = entry.body_used.max(file.accessed);
                    }
                    Some(FileName::Temp) => {
                        let idle = now
                            .duration_since(UNIX_EPOCH + Duration::from_nanos(file.modified))
                            .unwrap_or_default();
                        if idle > TEMP_FILE_GRACE {
                            tracing::debug!(file = %file.name, "left-over temp file removed");
                            remove_if_present(&dir.join(&file.name))?;
                        }
                    }
                    None => {}
                }
            }
            for (hex, found) in found {
                let Some(name) = Name::from_hex(hex) else {
                    continue;
                };
                if found.bodies > 1 || found.meta.is_none() {
                    self.tidy(&name)?;
                }
                if let Some((meta_len, modified)) = found.meta {
                    scanned.push(Scanned {
                        name,
                        size: meta_len + found.body_len,
                        last_use: modified.max(found.body_used),
                    });
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(scanned)
    }

    /// Removes the body files of `name` that its metadata does not name (all of them
    /// when it has no metadata). A damaged entry is left for a lookup to settle.
    fn tidy(&self, name: &Name) -> Result<(), StoreError> {
        let place = self.place(name);
        let Some(_lock) = self.lock_dir(&place.dir)? else {
            return Ok(());
        };
        let keep = match read_meta_file(&place.meta())? {
            MetaRead::Read(meta) => Some(meta.generation),
            MetaRead::Gone => None,
            MetaRead::Damaged(_) => return Ok(()),
        };
        tracing::debug!(entry = %place.hex, "file cache: bodies no metadata names removed");
        self.remove_bodies(&place, keep)
    }

    /// Takes the exclusive lock of an entry directory, if it exists.
    fn lock_dir(&self, dir: &Path) -> Result<Option<DirLock>, StoreError> {
        let file = match File::open(dir) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error("opening", dir, source)),
        };
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(Some(DirLock { _file: file })),
                Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return Err(io_error("locking", dir, errno.into())),
            }
        }
    }

    /// Notes that `dir` changed, for close to sync it.
    fn unsynced(&self, dir: &Path) {
        let mut dirs = self.unsynced_dirs.lock();
        if !dirs.contains(dir) {
            dirs.insert(dir.to_owned());
        }
    }
}

/// Runs `work` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let inner = Arc::clone(inner);
    tokio::task::spawn_blocking(move || work(&inner))
        .await
        .map_err(|error| StoreError::Backend(format!("a file cache task failed: {error}")))?
}

/// Where an entry's files are.
#[derive(Debug, Clone)]
struct Place {
    dir: PathBuf,
    hex: String,
}

impl Place {
    fn meta(&self) -> PathBuf {
        self.dir.join(format!("{}.meta", self.hex))
    }

    fn body(&self, generation: u64) -> PathBuf {
        self.dir
            .join(format!("{}.{generation:016x}.body", self.hex))
    }

    fn temp(&self) -> PathBuf {
        self.dir
            .join(format!(".{}.{:016x}.tmp", self.hex, random_u64()))
    }
}

/// The kinds of files in an entry directory.
enum FileName<'a> {
    Meta(&'a str),
    Body(&'a str, u64),
    Temp,
}

impl<'a> FileName<'a> {
    fn parse(name: &'a str) -> Option<FileName<'a>> {
        if name.starts_with('.') && name.ends_with(".tmp") {
            return Some(FileName::Temp);
        }
        if let Some(hex) = name.strip_suffix(".meta") {
            return Some(FileName::Meta(hex));
        }
        let (hex, generation) = name.strip_suffix(".body")?.split_once('.')?;
        Some(FileName::Body(
            hex,
            u64::from_str_radix(generation, 16).ok()?,
        ))
    }
}

fn is_hex_pair(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An entry's name on disk: the SHA-256 of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Name([u8; 32]);

impl Name {
    fn of(key: &str) -> Name {
        Name(Sha256::digest(key.as_bytes()).into())
    }

    fn hex(&self) -> String {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }

    fn from_hex(hex: &str) -> Option<Name> {
        if hex.len() != 64 {
            return None;
        }
        let mut name = [0u8; 32];
        for (byte, pair) in name.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Name(name))
    }
}

/// An entry about to be published: its body's generation and length, its metadata
/// file's bytes.
#[derive(Debug)]
struct Published {
    generation: u64,
    body_len: u64,
    meta: Vec<u8>,
}

/// Where an entry's body is, as learnt from a metadata file with `fingerprint`.
#[derive(Debug, Clone, Copy)]
struct View {
    fingerprint: u64,
    generation: u64,
    body_len: u64,
}

/// A metadata file, read and its header checked.
#[derive(Debug)]
struct MetaFile {
    key: String,
    generation: u64,
    body_len: u64,
    /// The entry's [`Meta`], as [`format::encode`] wrote it.
    payload: Vec<u8>,
    fingerprint: u64,
    /// The file's length.
    size: u64,
}

enum MetaRead {
    Gone,
    Damaged(Damage),
    Read(MetaFile),
}

enum Loaded {
    Gone,
    Damaged(Damage),
    Found(Meta, View),
}

/// Why a stored entry cannot be used.
#[derive(Debug)]
enum Damage {
    Header(&'static str),
    Version(u8),
    Format(FormatError),
    OtherKey(String),
    Body { expected: u64, found: Option<u64> },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Header(what) => write!(f, "metadata header: {what}"),
            Damage::Version(version) => write!(
                f,
                "metadata of layout version {version}, this build reads version {LAYOUT_VERSION}"
            ),
            Damage::Format(error) => error.fmt(f),
            Damage::OtherKey(key) => write!(f, "the metadata is that of another key ({key})"),
            Damage::Body {
                expected,
                found: None,
            } => write!(f, "the body file of {expected} bytes is missing"),
            Damage::Body {
                expected,
                found: Some(found),
            } => write!(f, "the body file has {found} bytes, not {expected}"),
        }
    }
}

fn encode_meta_file(key: &str, generation: u64, body_len: u64, meta: &Meta) -> Vec<u8> {
    let payload = format::encode(meta);
    let mut bytes = Vec::with_capacity(HEADER_FIXED_LEN + key.len() + CHECKSUM_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(LAYOUT_VERSION);
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&(key.len() as u32).to_le_bytes());
    bytes.extend_from_slice(key.as_bytes());
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..CHECKSUM_LEN]);
    bytes.extend_from_slice(&payload);
    bytes
}

fn read_meta_file(path: &Path) -> Result<MetaRead, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(MetaRead::Gone),
        Err(source) => return Err(io_error("opening the metadata file", path, source)),
    };
    let stat = file
        .metadata()
        .map_err(|source| io_error("reading the metadata of", path, source))?;
    if stat.len() > MAX_META_FILE {
        return Ok(MetaRead::Damaged(Damage::Header("impossibly large")));
    }
    let mut bytes = Vec::with_capacity(stat.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|source| io_error("reading the metadata file", path, source))?;
    Ok(match parse_meta_file(bytes, fingerprint(&stat)) {
        Ok(meta) => MetaRead::Read(meta),
        Err(damage) => MetaRead::Damaged(damage),
    })
}

fn parse_meta_file(mut bytes: Vec<u8>, fingerprint: u64) -> Result<MetaFile, Damage> {
    let size = bytes.len() as u64;
    if bytes.len() < HEADER_FIXED_LEN + CHECKSUM_LEN || !bytes.starts_with(MAGIC) {
        return Err(Damage::Header(
            "not a metadata file (bad magic or too short)",
        ));
    }
    let version = bytes[MAGIC.len()];
    if version != LAYOUT_VERSION {
        return Err(Damage::Version(version));
    }
    let u64_at = |at: usize| {
        let mut value = [0u8; 8];
        value.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(value)
    };
    let generation = u64_at(MAGIC.len() + 1);
    let body_len = u64_at(MAGIC.len() + 9);
    let mut key_len = [0u8; 4];
    key_len.copy_from_slice(&bytes[MAGIC.len() + 17..HEADER_FIXED_LEN]);
    let key_len = u32::from_le_bytes(key_len) as usize;
    if key_len > MAX_KEY || bytes.len() < HEADER_FIXED_LEN + key_len + CHECKSUM_LEN {
        return Err(Damage::Header("a key length past the end"));
    }
    let header_end = HEADER_FIXED_LEN + key_len;
    let checksum = Sha256::digest(&bytes[..header_end]);
    if checksum[..CHECKSUM_LEN] != bytes[header_end..header_end + CHECKSUM_LEN] {
        return Err(Damage::Header("fails its checksum"));
    }
    let key = std::str::from_utf8(&bytes[HEADER_FIXED_LEN..header_end])
        .map_err(|_| Damage::Header("a key that is not UTF-8"))?
        .to_owned();
    let payload = bytes.split_off(header_end + CHECKSUM_LEN);
    Ok(MetaFile {
        key,
        generation,
        body_len,
        payload,
        fingerprint,
        size,
    })
}

/// A fingerprint of a file's identity: it changes whenever the file is replaced.
fn fingerprint(stat: &fs::Metadata) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        stat.dev(),
        stat.ino(),
        stat.size(),
        stat.mtime(),
        stat.mtime_nsec(),
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// Copies a file body into `file` (with `copy_file_range` where the system has it),
/// synced.
fn copy_file_body(source: &FileBody, mut file: File, path: &Path) -> Result<u64, StoreError> {
    let mut reader = source.file();
    reader
        .rewind()
        .map_err(|error| io_error("reading the body to store in", path, error))?;
    let copied = io::copy(&mut reader.take(source.len()), &mut file);
    // A guarded file cut short (or failing) while it was copied changed.
    if copied
        .as_ref()
        .map_or(true, |&copied| copied != source.len())
        && !source.is_unchanged()
    {
        return Err(StoreError::Changed);
    }
    let copied = copied.map_err(|error| io_error("copying a file body into", path, error))?;
    if copied != source.len() {
        return Err(io_error(
            "copying a file body into",
            path,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source file is shorter than said",
            ),
        ));
    }
    // What the file held while it was copied is what was handed over only if it
    // has not changed since.
    if !source.is_unchanged() {
        return Err(StoreError::Changed);
    }
    file.sync_all()
        .map_err(|error| io_error("syncing the body file", path, error))?;
    Ok(copied)
}

/// Chunks of a body waiting to be written together.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
}

/// Waits for a batch's write.
async fn finish_write(
    write: tokio::task::JoinHandle<io::Result<()>>,
    path: &Path,
) -> Result<(), StoreError> {
    write
        .await
        .map_err(io::Error::other)
        .and_then(|written| written)
        .map_err(|source| io_error("writing the body file", path, source))
}

/// Writes all of `chunks`, in order, with as few (vectored) writes as the kernel
/// allows.
fn write_chunks(mut file: &File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks
        .iter()
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| io::IoSlice::new(chunk))
        .collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => io::IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Syncs a body file being written, in the background, every [`EARLY_SYNC`] bytes
/// (one sync at a time): the disk writes the body while the rest arrives.
struct EarlySync {
    /// None when the store does not sync while writing.
    file: Option<Arc<File>>,
    unsynced: u64,
    running: Option<tokio::task::JoinHandle<()>>,
}

/// How many bytes a body file is written between two background syncs.
const EARLY_SYNC: u64 = 32 << 20;

impl EarlySync {
    fn new(file: Option<Arc<File>>) -> EarlySync {
        EarlySync {
            file,
            unsynced: 0,
            running: None,
        }
    }

    /// `bytes` more were handed to the writer.
    fn written(&mut self, bytes: u64) {
        self.unsynced += bytes;
        if self.unsynced < EARLY_SYNC
            || self
                .running
                .as_ref()
                .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        self.unsynced = 0;
        // Only what has reached the file so far is synced; the sync before the
        // publish covers everything, so a failure here only costs time.
        self.running = Some(tokio::task::spawn_blocking(move || {
            let _ = file.sync_data();
        }));
    }
}

/// A temp file, removed when dropped unless it was published.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    published: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile {
            path,
            published: false,
        }
    }

    /// It has its final name: nothing to remove.
    fn disarm(mut self) {
        self.published = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(error) = fs::remove_file(&path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "file cache: a temp file could not be removed");
            }
        };
        // Dropped on the runtime (a put cancelled or failed): unlink off its threads.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// The exclusive lock on an entry directory, released when dropped (or when the
/// process dies).
#[derive(Debug)]
struct DirLock {
    _file: File,
}

/// A file in a directory, as listed.
struct Listed {
    name: String,
    len: u64,
    /// Nanoseconds since the Unix epoch.
    modified: u64,
    accessed: u64,
}

/// The files of `dir` (none if it does not exist), with their sizes and times.
fn read_dir(dir: &Path) -> Result<Vec<Listed>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error("listing", dir, source)),
    };
    let mut listed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_error("listing", dir, source))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let stat = match entry.metadata() {
            Ok(stat) => stat,
            // Removed since it was listed.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io_error("reading the metadata of", &entry.path(), source)),
        };
        listed.push(Listed {
            name,
            len: stat.len(),
            modified: nanos(stat.mtime(), stat.mtime_nsec()),
            accessed: nanos(stat.atime(), stat.atime_nsec()),
        });
    }
    Ok(listed)
}

fn nanos(seconds: i64, nanoseconds: i64) -> u64 {
    u64::try_from(seconds)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nanoseconds).unwrap_or(0))
}

/// Creates `dir` with exactly `mode`; `false` if it existed.
fn create_dir(dir: &Path, mode: u32) -> Result<bool, StoreError> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(mode))
                .map_err(|source| io_error("setting the mode of", dir, source))?;
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(source) => Err(io_error("creating the directory", dir, source)),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| StoreError::Io {
        context: format!("renaming {} to {}", from.display(), to.display()),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("removing", path, source)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match File::open(dir).and_then(|dir| dir.sync_all()) {
        Ok(()) => Ok(()),
        // Nothing left to make durable there.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("syncing the directory", dir, source)),
    }
}

fn io_error(operation: &str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        context: format!("file cache: {operation} {}", path.display()),
        source,
    }
}

/// What a scan found for one entry.
#[derive(Debug)]
struct Scanned {
    name: Name,
    size: u64,
    /// Nanoseconds since the Unix epoch.
    last_use: u64,
}

#[derive(Debug, Default)]
struct Found {
    /// Length and modification time of the metadata file.
    meta: Option<(u64, u64)>,
    bodies: usize,
    body_len: u64,
    body_used: u64,
}

/// The entries this process knows of: for the size bound, what each takes and when it
/// was last used; for the hit path, where each one's body is.
#[derive(Debug)]
struct Index {
    slots: HashMap<Name, Slot>,
    /// Slots by last use, oldest first.
    by_use: BTreeSet<(u64, Name)>,
    bytes: u64,
    /// Counts changes, so that a scan's merge knows what changed while it ran.
    epoch: u64,
    /// Without a size bound, how many slots are kept (the least recently used are
    /// forgotten, the entries stay on disk).
    max_slots: Option<usize>,
    last_stamp: u64,
}

#[derive(Debug)]
struct Slot {
    size: u64,
    last_use: u64,
    changed: u64,
    view: Option<View>,
}

impl Index {
    fn new(max_slots: Option<usize>) -> Index {
        Index {
            slots: HashMap::new(),
            by_use: BTreeSet::new(),
            bytes: 0,
            epoch: 0,
            max_slots,
            last_stamp: 0,
        }
    }

    /// Now, in nanoseconds since the Unix epoch, and always later than the last stamp.
    fn stamp(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        self.last_stamp = now.max(self.last_stamp + 1);
        self.last_stamp
    }

    fn view(&self, name: &Name) -> Option<View> {
        self.slots.get(name).and_then(|slot| slot.view)
    }

    /// Sets what an entry takes and where its body is; `used` marks it as just used.
    fn set(&mut self, name: &Name, size: u64, view: View, used: bool) {
        self.epoch += 1;
        let stamp = self.stamp();
        let epoch = self.epoch;
        match self.slots.get_mut(name) {
            Some(slot) => {
                self.bytes = self.bytes - slot.size + size;
                slot.size = size;
                slot.view = Some(view);
                slot.changed = epoch;
                if used {
                    self.by_use.remove(&(slot.last_use, *name));
                    slot.last_use = stamp;
                    self.by_use.insert((stamp, *name));
                }
            }
            None => self.insert(*name, size, stamp, Some(view)),
        }
    }

    fn insert(&mut self, name: Name, size: u64, last_use: u64, view: Option<View>) {
        self.slots.insert(
            name,
            Slot {
                size,
                last_use,
                changed: self.epoch,
                view,
            },
        );
        self.by_use.insert((last_use, name));
        self.bytes += size;
        if let Some(max_slots) = self.max_slots {
            while self.slots.len() > max_slots {
                if self.pop_oldest().is_none() {
                    break;
                }
            }
        }
    }

    /// An entry was just written.
    fn record(&mut self, name: &Name, size: u64, view: View) {
        self.set(name, size, view, true);
    }

    /// An entry's metadata was just read.
    fn learn(&mut self, name: &Name, size: u64, view: View) {
        self.set(name, size, view, false);
    }

    /// An entry was just used.
    fn touch(&mut self, name: &Name) {
        self.epoch += 1;
        let stamp = self.stamp();
        let epoch = self.epoch;
        if let Some(slot) = self.slots.get_mut(name) {
            self.by_use.remove(&(slot.last_use, *name));
            slot.last_use = stamp;
            slot.changed = epoch;
            self.by_use.insert((stamp, *name));
        }
    }

    fn forget_view(&mut self, name: &Name) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.view = None;
        }
    }

    fn remove(&mut self, name: &Name) {
        self.epoch += 1;
        if let Some(slot) = self.slots.remove(name) {
            self.by_use.remove(&(slot.last_use, *name));
            self.bytes -= slot.size;
        }
    }

    fn pop_oldest(&mut self) -> Option<Name> {
        let (_, name) = self.by_use.pop_first()?;
        if let Some(slot) = self.slots.remove(&name) {
            self.bytes -= slot.size;
        }
        Some(name)
    }

    /// The least recently used entry, taken out, while the entries take more than
    /// `max` bytes.
    fn pop_oldest_over(&mut self, max: u64) -> Option<Name> {
        if self.bytes <= max {
            return None;
        }
        self.epoch += 1;
        self.pop_oldest()
    }

    /// Takes in what a scan that began at `started` found: entries it did not find
    /// are gone (unless this process saw them since), entries it found are counted
    /// with the size on disk.
    fn merge(&mut self, scanned: Vec<Scanned>, started: u64) {
        let found: HashSet<Name> = scanned.iter().map(|entry| entry.name).collect();
        let gone: Vec<Name> = self
            .slots
            .iter()
            .filter(|(name, slot)| slot.changed <= started && !found.contains(name))
            .map(|(name, _)| *name)
            .collect();
        for name in &gone {
            self.remove(name);
        }
        for entry in scanned {
            match self.slots.get_mut(&entry.name) {
                // Changed here since the scan began: this process knows better.
                Some(slot) if slot.changed > started => {}
                Some(slot) => {
                    self.bytes = self.bytes - slot.size + entry.size;
                    slot.size = entry.size;
                    if entry.last_use > slot.last_use {
                        self.by_use.remove(&(slot.last_use, entry.name));
                        slot.last_use = entry.last_use;
                        self.by_use.insert((entry.last_use, entry.name));
                    }
                }
                None => self.insert(entry.name, entry.size, entry.last_use, None),
            }
        }
    }

    fn clear(&mut self) {
        self.epoch += 1;
        self.slots.clear();
        self.by_use.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn marker() -> Meta {
        Meta::Variants(Arc::new(super::super::Variants {
            names: vec![],
            nonce: 7,
        }))
    }

    #[test]
    fn a_metadata_file_reads_back_as_it_was_written() {
        let bytes = encode_meta_file("http://a/x", 42, 1234, &marker());
        let file = parse_meta_file(bytes, 9).unwrap();
        assert_eq!(
            (file.key.as_str(), file.generation, file.body_len),
            ("http://a/x", 42, 1234)
        );
        assert!(matches!(
            format::decode(&file.payload),
            Ok(Meta::Variants(_))
        ));
    }

    #[test]
    fn body_and_temp_names_parse_back() {
        let place = Place {
            dir: PathBuf::new(),
            hex: Name::of("k").hex(),
        };
        let body = place.body(0xabc);
        let body = body.to_str().unwrap();
        assert!(matches!(
            FileName::parse(body),
            Some(FileName::Body(hex, 0xabc)) if hex == place.hex
        ));
        assert!(matches!(
            FileName::parse(place.temp().to_str().unwrap()),
            Some(FileName::Temp)
        ));
        assert_eq!(Name::from_hex(&place.hex), Some(Name::of("k")));
    }

    fn view() -> View {
        View {
            fingerprint: 0,
            generation: 0,
            body_len: 0,
        }
    }

    proptest! {
        #[test]
        fn no_bytes_make_parsing_a_metadata_file_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_meta_file(bytes, 0);
        }

        #[test]
        fn no_damage_to_a_valid_header_makes_parsing_panic(at in 0usize..64, value in any::<u8>(), cut in 0usize..80) {
            let mut bytes = encode_meta_file("http://a/x", 1, 2, &marker());
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
            bytes.truncate(cut.max(1));
            let _ = parse_meta_file(bytes, 0);
        }

        /// Whatever happens to the index, the bytes it counts are those of its slots,
        /// and its order lists each slot once.
        #[test]
        fn the_index_accounting_matches_its_slots(ops in proptest::collection::vec((0u8..6, 0u8..8, 1u64..1000), 0..200)) {
            let mut index = Index::new(Some(5));
            for (op, entry, size) in ops {
                let name = Name::of(&entry.to_string());
                match op {
                    0 => index.record(&name, size, view()),
                    1 => index.learn(&name, size, view()),
                    2 => index.touch(&name),
                    3 => index.remove(&name),
                    4 => { index.pop_oldest_over(2000); }
                    _ => index.merge(vec![Scanned { name, size, last_use: size }], index.epoch),
                }
                prop_assert_eq!(index.bytes, index.slots.values().map(|slot| slot.size).sum::<u64>());
                prop_assert_eq!(index.by_use.len(), index.slots.len());
                prop_assert!(index.slots.len() <= 5);
                for (name, slot) in &index.slots {
                    prop_assert!(index.by_use.contains(&(slot.last_use, *name)));
                }
            }
        }
    }
}
