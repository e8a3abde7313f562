//! One fetch of a URL at a time on a host: a lock file per URL in the cache
//! directory, taken with `flock`, so that runs in separate processes that need the
//! same artifact at once download it once (the others find it in the cache).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};
use url::Url;

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct UrlLock {
    _file: File,
}

/// The lock of `url` under `dir`: taken at once, or `Busy` with the open lock file
/// to wait on.
pub(crate) enum TryLock {
    Taken(UrlLock),
    Busy(File, PathBuf),
}

/// Tries to take the lock of `url` without waiting.
pub(crate) fn try_lock(dir: &Path, url: &Url) -> io::Result<TryLock> {
    std::fs::create_dir_all(dir)?;
    let digest = Sha256::digest(url.as_str().as_bytes());
    let path = dir.join(hex::encode(&digest[..16]));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(TryLock::Taken(UrlLock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(TryLock::Busy(file, path)),
        Err(error) => Err(error.into()),
    }
}

/// Waits for the lock on a busy lock file (a blocking call: run it off the async
/// threads).
pub(crate) fn wait(file: File) -> io::Result<UrlLock> {
    rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
    Ok(UrlLock { _file: file })
}
