//! One fetch of a URL at a time on a host: a lock file per URL in the cache
//! directory, taken with `flock`, so that runs in separate processes that need the
//! same artifact at once download it once (the others then find it in the cache).
//!
//! Waiting polls the lock without blocking a thread, so a waiting fetch can be
//! cancelled at any time; a lock is released when its holder drops it or dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};
use url::Url;

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct UrlLock {
    _file: File,
}

/// The lock file of a URL, not yet held.
#[derive(Debug)]
pub(crate) struct LockFile {
    file: File,
}

impl LockFile {
    /// Opens (creating it if needed) the lock file of `url` under `dir`. The
    /// fragment is not part of the URL that is fetched, so not of its lock either.
    pub(crate) fn open(dir: &Path, url: &Url) -> io::Result<LockFile> {
        std::fs::create_dir_all(dir)?;
        let mut url = url.clone();
        url.set_fragment(None);
        let digest = Sha256::digest(url.as_str().as_bytes());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(hex::encode(&digest[..16])))?;
        Ok(LockFile { file })
    }

    /// Takes the lock if nobody holds it; gives the file back if somebody does.
    pub(crate) fn try_take(self) -> io::Result<Result<UrlLock, LockFile>> {
        match rustix::fs::flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Ok(UrlLock { _file: self.file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(Err(self)),
            Err(error) => Err(error.into()),
        }
    }
}
