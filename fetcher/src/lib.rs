//! Fetches a job's artifacts into its run directory through `cachecontrol`, so
//! that the many runs of one job, on many hosts, cost almost nothing after the
//! first.
//!
//! # Flow
//!
//! A job names its [`Artifact`]s: a name (a relative path in the run directory), a
//! URL, optionally a SHA-256 and an archive format to unpack. [`Fetcher::fetch`]
//! checks every name first (no `..`, no absolute path, nothing through a symbolic
//! link, no two overlapping), then fetches the artifacts concurrently, each through
//! an HTTP cache ([`cachecontrol::CacheControl`] over a [`FileCache`], with an
//! optional shared tier such as Redis behind it):
//!
//! - **Fresh in the cache**: no request at all. The stored body is a file; it is put
//!   in the run directory by the kernel (a reflink where the file system shares
//!   blocks, else `copy_file_range`; a hard link for a read-only artifact with a
//!   digest), never read through this process. Where there are no reflinks, the
//!   copy for the next run is made in the background after this one, and that run
//!   renames it into place ([`prepared_copies`](FetcherBuilder::prepared_copies),
//!   on by default).
//! - **Stale**: a conditional request; a `304` moves no body, and the stored file is
//!   used as above.
//! - **New or changed**: downloaded, streamed to disk as it arrives, never whole in
//!   memory. A body of 1 MiB or more (or of unannounced length), in a run directory
//!   on a local ext4, XFS or Btrfs, is written once, where the job uses it (as fast
//!   as a plain download), and the fetch returns; the cache then copies that file
//!   (a [`FileCache`] by the kernel: a reflink or `copy_file_range`; a tiered one
//!   streams it to both tiers), syncs and publishes its copy in the background
//!   ([`Fetcher::stored`], [`Fetcher::close`] wait for it; the lock below is held
//!   until then). If the job changes its file in any way before the copy is done
//!   (a write, a change of mode, a rename, removing it), the copy is not kept (the
//!   file's change time tells, which no one can set back) and the cache downloads
//!   the artifact again for itself: nothing the job does reaches the cache. Remove
//!   a run directory after [`Fetcher::stored`] to spare that download. A smaller
//!   body, or one written to another file system (tmpfs, where a write through a
//!   mapping need not move the change time; a network file system), goes into the
//!   cache as it arrives, before the job has its file.
//! - **With a digest**: any stored copy that has it is used without asking the
//!   origin (the content is what was asked for); the digest is checked before the
//!   file is used, and a mismatch is an error naming the artifact and both
//!   digests, leaving the file neither in the run directory nor in the cache.
//!   Checking a stored copy again is free: its identity is recorded once verified.
//!
//! On one host, fetches of one URL that the cache cannot answer at once take turns
//! (a lock file per URL in the cache directory), so runs that start together
//! download it once when the response can be stored; the others find it in the
//! cache. A response that is not stored lets the others go at once: they download
//! it too. Failed requests (connection errors, timeouts, `5xx`) are retried with
//! exponential backoff and jitter ([`Retry`]), never from the cache; a `4xx` is
//! final. Every file is
//! written under a temporary name and renamed into place, so a failure leaves
//! nothing half-written. Archives are unpacked with limits and never outside their
//! directory ([`unpack`]); one served from the cache is unpacked from the cache's
//! file itself, without a copy of it in the run directory first.
//!
//! The [`FetchReport`] says, per artifact, how it was served ([`Served`]), how it
//! got into the run directory ([`Materialized`]), and how many bytes came over the
//! network; [`FetcherBuilder::on_progress`] reports progress as it happens.
//!
//! # Example
//!
//! ```no_run
//! use fetcher::{Artifact, Archive, Fetcher, ProgressEvent};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = Fetcher::builder()
//!     .cache_dir("/var/cache/dadd")
//!     .on_progress(|progress| {
//!         if let ProgressEvent::Bytes { done, total } = progress.event {
//!             eprintln!("{}: {done} of {total:?} bytes", progress.name);
//!         }
//!     })
//!     .build()?;
//! let artifacts = [
//!     Artifact::new("input.csv", "https://example.com/input.csv".parse()?)
//!         .sha256("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?),
//!     Artifact::new("tools", "https://example.com/tools.tar.gz".parse()?).unpack(Archive::TarGz),
//! ];
//! let report = fetcher.fetch(&artifacts, "/tmp/run-1".as_ref()).await?;
//! println!("{report}");
//! fetcher.close().await?;
//! # Ok(()) }
//! ```
//!
//! On a cluster, put a shared tier behind each host's file cache, so that an
//! artifact one host fetched is served to the others without the origin:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = fetcher::Fetcher::builder()
//!     .shared_tier(cachecontrol::RedisCache::new("redis://cache.internal:6379").await?)
//!     .build()?;
//! # let _ = fetcher; Ok(()) }
//! ```
#![cfg(unix)]
// Errors are rare and say which artifact, which URL and which digests: boxing them
// would only make them clumsier to match.
#![allow(clippy::result_large_err)]

mod artifact;
mod error;
mod fetcher;
mod lock;
mod materialize;
mod prepared;
mod report;
mod retry;
pub mod unpack;
mod verified;

pub use artifact::{Artifact, InvalidSha256, Sha256, check_name};
pub use error::FetchError;
pub use fetcher::{DEFAULT_PREPARED_COPIES, Fetcher, FetcherBuilder, default_cache_dir};
pub use materialize::Materialized;
pub use report::{ArtifactReport, FetchReport, Progress, ProgressEvent, Served, human_bytes};
pub use retry::Retry;
pub use unpack::{Archive, Limits};

#[doc(no_inline)]
pub use cachecontrol::FileCache;

// The workspace README's examples (cachecontrol's and ours) are compiled as doc
// tests here, in the crate that can see both.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
