//! The master's file store: `PUT`/`GET /files/{path}`, so that the master can
//! host the artifacts specs download.
//!
//! Files live under `{data dir}/files`. A path is taken only when each of its
//! `/`-separated parts is a plain name: no empty part, no `.`, no `..`, no NUL
//! byte, so that no path (however it was encoded in the URL) reaches outside the
//! store. A file is written to `{data dir}/tmp` first, synced, then renamed into
//! place: a reader sees the old file or the whole new one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// The name of every upload staged in `tmp` starts so.
const STAGED_PREFIX: &str = "upload-";

/// Why a file cannot be stored or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The path could leave the store, or is not a file's path.
    #[error("file path {path:?} is refused: {reason}")]
    BadPath {
        /// The path, as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The body is larger than the limit.
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body could not be read.
    #[error("reading the body: {0}")]
    Body(String),
    /// A part of the path is a file, or the path is a directory.
    #[error("file path {0:?}: a file and a directory would have the same name")]
    Conflict(String),
    /// No such file.
    #[error("no file {0:?}")]
    NotFound(String),
    /// The disk said no.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The files under a directory, with a size limit on each.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
}

/// Whether a put made a new file or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// There was no file at that path.
    Created,
    /// A file was replaced.
    Replaced,
}

impl FileStore {
    /// The store in `root`, staging uploads in `tmp` (on the same file system),
    /// taking files of up to `max_bytes`. Both directories are created.
    pub fn new(root: PathBuf, tmp: PathBuf, max_bytes: u64) -> Result<FileStore, FileError> {
        for dir in [&root, &tmp] {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        remove_staged(&tmp);
        Ok(FileStore {
            root,
            tmp,
            max_bytes,
        })
    }

    /// Where `path` (relative, `/`-separated) is on disk, when it stays inside the
    /// store.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, FileError> {
        let refuse = |reason| FileError::BadPath {
            path: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(refuse("it is empty"));
        }
        if path.contains('\0') {
            return Err(refuse("it has a NUL byte"));
        }
        let mut resolved = self.root.clone();
        for part in path.split('/') {
            match part {
                "" => {
                    return Err(refuse(
                        "it has an empty part (`//`, or a leading or trailing `/`)",
                    ));
                }
                "." | ".." => {
                    return Err(refuse(
                        "it has a `.` or `..` part, which could leave the file store",
                    ));
                }
                name => resolved.push(name),
            }
        }
        Ok(resolved)
    }

    /// Writes the file at `path` from `body`, refusing it once it passes the
    /// limit.
    pub async fn put<E: std::fmt::Display>(
        &self,
        path: &str,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<Put, FileError> {
        let target = self.resolve(path)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let staged = self.tmp.join(format!(
            "{STAGED_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.write_staged(&staged, body).await;
        let result = match result {
            Ok(()) => self.publish(path, &staged, &target).await,
            Err(error) => Err(error),
        };
        if result.is_err() {
            // Best effort: a staged file left behind is only wasted space in tmp.
            let _ = tokio::fs::remove_file(&staged).await;
        }
        result
    }

    async fn write_staged<E: std::fmt::Display>(
        &self,
        staged: &Path,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<(), FileError> {
        let io_error = |action| {
            move |source| FileError::Io {
                action,
                path: staged.to_owned(),
                source,
            }
        };
        let mut file = tokio::fs::File::create(staged)
            .await
            .map_err(io_error("creating"))?;
        let mut written = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| FileError::Body(error.to_string()))?;
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(FileError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            file.write_all(&chunk).await.map_err(io_error("writing"))?;
        }
        file.sync_all().await.map_err(io_error("syncing"))
    }

    async fn publish(&self, path: &str, staged: &Path, target: &Path) -> Result<Put, FileError> {
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| conflict_or_io(path, "creating", parent, source))?;
        }
        let existed = match tokio::fs::metadata(target).await {
            Ok(metadata) if metadata.is_dir() => return Err(FileError::Conflict(path.to_owned())),
            Ok(_) => true,
            Err(_) => false,
        };
        tokio::fs::rename(staged, target)
            .await
            .map_err(|source| conflict_or_io(path, "renaming into", target, source))?;
        tracing::info!(path, "file stored");
        Ok(if existed { Put::Replaced } else { Put::Created })
    }

    /// Opens the file at `path`, with its length.
    pub async fn open(&self, path: &str) -> Result<(tokio::fs::File, u64), FileError> {
        let target = self.resolve(path)?;
        let not_found_or_io = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                FileError::NotFound(path.to_owned())
            }
            _ => FileError::Io {
                action: "opening",
                path: target.clone(),
                source,
            },
        };
        let file = tokio::fs::File::open(&target)
            .await
            .map_err(not_found_or_io)?;
        let metadata = file.metadata().await.map_err(not_found_or_io)?;
        if !metadata.is_file() {
            return Err(FileError::NotFound(path.to_owned()));
        }
        Ok((file, metadata.len()))
    }
}

/// Removes the uploads a master that stopped mid-upload left in `tmp`: no file
/// there is anyone's once the master starts again.
fn remove_staged(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let staged = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGED_PREFIX);
        if staged && let Err(error) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), %error, "removing a stale upload");
        }
    }
}

fn conflict_or_io(path: &str, action: &'static str, on: &Path, source: io::Error) -> FileError {
    match source.kind() {
        io::ErrorKind::AlreadyExists
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::DirectoryNotEmpty => FileError::Conflict(path.to_owned()),
        _ => FileError::Io {
            action,
            path: on.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_store_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("files"), dir.path().join("tmp"), 10).unwrap();
        for path in [
            "",
            "../x",
            "a/../../x",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(
                matches!(store.resolve(path), Err(FileError::BadPath { .. })),
                "{path:?}"
            );
        }
        assert_eq!(
            store.resolve("tools/app-1.0.tar.gz").unwrap(),
            dir.path().join("files/tools/app-1.0.tar.gz")
        );
    }
}
