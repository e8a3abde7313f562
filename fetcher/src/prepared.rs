//! Copies of cached files made in advance, so that the next run's copy of an
//! artifact is a rename, not a copy of every byte
//! ([`FetcherBuilder::prepared_copies`](crate::FetcherBuilder::prepared_copies)).
//!
//! Where the file system cannot share blocks (ext4), every run of a job that needs
//! a writable artifact pays for a copy of it at its start. With prepared copies,
//! once a fetch has copied an artifact out of the cache, another copy is made in the
//! background, synced, and kept under `prepared/` in the cache directory, named by
//! the identity of the cached file it was copied from (see [`Identity`]); the next
//! fetch of that artifact moves it into its run directory and prepares the next one.
//! A prepared copy holds what the cached file holds: the cache never changes a file
//! once published (a new version is a new file, with a new identity), the identity
//! is checked again once the copy is made, and the copy is synced before it gets
//! its name, so that a crash cannot leave a named copy with missing blocks.
//!
//! The cost: the disk space of one more copy of each artifact, up to a budget (the
//! copies used least recently are removed first), and the copying, done between
//! runs rather than at their start. Blocking code: run it off the async threads.

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;

use crate::materialize::{self, WRITABLE};
use crate::verified::Identity;

/// A copy being made is named with this prefix (and its identity) until it is
/// whole and synced: one copy of a file is made at a time, across processes.
const PARTIAL: &str = ".partial-";

/// Files shorter than this are copied at once at each run: a copy of them costs
/// about what a rename does.
pub(crate) const MIN_LEN: u64 = 1 << 20;

/// A partial copy this old was left by a process that stopped while making it.
const ABANDONED: Duration = Duration::from_secs(3600);

/// No copy is made that would leave less than this share of the file system free
/// (in percent): a copy made ahead is only a shortcut, and must not be what fills
/// the disk a job writes to.
const KEEP_FREE_PERCENT: u64 = 10;

/// The prepared copies, in a directory, within a budget of bytes.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    dir: PathBuf,
    max_bytes: u64,
    keep_free_percent: u64,
}

impl Prepared {
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> Prepared {
        Prepared {
            dir,
            max_bytes,
            keep_free_percent: KEEP_FREE_PERCENT,
        }
    }

    fn path_of(&self, identity: &Identity) -> PathBuf {
        self.dir.join(identity.file_name())
    }

    /// Whether a copy prepared here can be moved into `dir`: the same file system.
    pub(crate) fn reaches(&self, dir: &Path) -> bool {
        let device = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev());
        std::fs::create_dir_all(&self.dir).is_ok()
            && matches!((device(&self.dir), device(dir)), (Ok(a), Ok(b)) if a == b)
    }

    /// Whether a file of this length is worth a prepared copy, within the budget.
    pub(crate) fn worth(&self, len: u64) -> bool {
        (MIN_LEN..=self.max_bytes).contains(&len)
    }

    /// Moves the copy prepared from the file with this identity (`len` bytes long)
    /// to `dest`, which must not exist; `false` when there is none, or when it cannot
    /// be moved there (the fetch then copies, as without prepared copies: this is only
    /// ever a shortcut).
    pub(crate) fn take(&self, identity: &Identity, len: u64, dest: &Path) -> bool {
        let from = self.path_of(identity);
        match rustix::fs::renameat_with(CWD, &from, CWD, dest, RenameFlags::NOREPLACE) {
            Ok(()) => match std::fs::symlink_metadata(dest) {
                Ok(metadata) if metadata.is_file() && metadata.len() == len => true,
                // Not one of ours (something else put under that name).
                _ => {
                    tracing::warn!(
                        copy = %from.display(),
                        "a prepared copy was not a file of the artifact's length; removed"
                    );
                    let _ = std::fs::remove_file(dest).or_else(|_| std::fs::remove_dir_all(dest));
                    false
                }
            },
            // None prepared (or another fetch took it first); or on another file
            // system, where it stays for a fetch that can use it.
            Err(Errno::NOENT | Errno::XDEV) => false,
            Err(error) => {
                tracing::warn!(
                    copy = %from.display(),
                    dest = %dest.display(),
                    %error,
                    "could not move a prepared copy into place; copying instead"
                );
                false
            }
        }
    }

    /// Makes a copy of the first `len` bytes of `source`, whose identity is
    /// `identity`, for the next run to take, unless there is one already (or one
    /// being made), or it is not [`worth`](Self::worth) it. Makes room first (the
    /// copies used least recently go).
    pub(crate) fn prepare(&self, source: &File, len: u64, identity: &Identity) -> io::Result<()> {
        let path = self.path_of(identity);
        if !self.worth(len) || path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        // Named after what it copies, created only if it is not there: another
        // fetch, here or in another process, may be making this very copy.
        let partial = match tempfile::Builder::new()
            .prefix(&format!("{PARTIAL}{}", identity.file_name()))
            .rand_bytes(0)
            .permissions(Permissions::from_mode(WRITABLE))
            .tempfile_in(&self.dir)
        {
            Ok(partial) => partial,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(error) => return Err(error),
        };
        self.make_room(len)?;
        if !self.leaves_enough_free(len)? {
            tracing::debug!(
                dir = %self.dir.display(),
                len,
                "no copy prepared: it would leave the file system too full"
            );
            return Ok(());
        }
        materialize::copy(source, partial.as_file(), len)?;
        partial.as_file().sync_all()?;
        // Copied from a file that changed meanwhile: not a copy of that identity.
        if Identity::of(source)? != *identity {
            return Ok(());
        }
        partial.persist(&path).map_err(|error| error.error)?;
        Ok(())
    }

    /// Whether `len` more bytes leave at least [`KEEP_FREE_PERCENT`] of the file
    /// system free, for those who are not root.
    fn leaves_enough_free(&self, len: u64) -> io::Result<bool> {
        let stats = rustix::fs::statvfs(&self.dir)?;
        let total = stats.f_blocks.saturating_mul(stats.f_frsize);
        let available = stats.f_bavail.saturating_mul(stats.f_frsize);
        let keep = total / 100 * self.keep_free_percent;
        Ok(available >= len.saturating_add(keep))
    }

    /// Removes partial copies left by processes that stopped, then the copies used
    /// least recently (the oldest modification time: a copy is made, then taken)
    /// until `len` more bytes fit in the budget.
    fn make_room(&self, len: u64) -> io::Result<()> {
        let now = SystemTime::now();
        let mut copies = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let modified = metadata.modified().unwrap_or(now);
            let partial = entry.file_name().to_string_lossy().starts_with(PARTIAL);
            if partial && now.duration_since(modified).unwrap_or_default() > ABANDONED {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            total += metadata.len();
            if !partial {
                copies.push((modified, metadata.len(), entry.path()));
            }
        }
        copies.sort();
        for (_, size, path) in copies {
            if total.saturating_add(len) <= self.max_bytes {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => total -= size,
                // Taken meanwhile.
                Err(error) if error.kind() == io::ErrorKind::NotFound => total -= size,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &Path, name: &str, content: &[u8]) -> File {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut file| file.write_all(content))
            .unwrap();
        File::open(path).unwrap()
    }

    /// `MIN_LEN` bytes of `byte`: the smallest file worth a prepared copy.
    fn content(byte: u8) -> Vec<u8> {
        vec![byte; MIN_LEN as usize]
    }

    #[test]
    fn a_prepared_copy_is_taken_once_and_holds_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        let source = file_with(dir.path(), "source", &content(b'a'));
        let identity = Identity::of(&source).unwrap();
        prepared.prepare(&source, MIN_LEN, &identity).unwrap();
        let dest = dir.path().join("run-file");
        assert!(prepared.reaches(dir.path()));
        assert!(prepared.take(&identity, MIN_LEN, &dest));
        assert_eq!(std::fs::read(&dest).unwrap(), content(b'a'));
        // The copy is the run's own: writing it leaves the source as it was.
        std::fs::write(&dest, b"changed by the job").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("source")).unwrap(),
            content(b'a')
        );
        let again = dir.path().join("run-file-2");
        assert!(!prepared.take(&identity, MIN_LEN, &again), "taken twice");
        assert!(!again.exists());
    }

    #[test]
    fn a_copy_of_a_file_that_changed_is_not_taken_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        let source = file_with(dir.path(), "source", &content(b'1'));
        let old = Identity::of(&source).unwrap();
        prepared.prepare(&source, MIN_LEN, &old).unwrap();
        let replaced = file_with(dir.path(), "source-2", &content(b'2'));
        let new = Identity::of(&replaced).unwrap();
        assert!(!prepared.take(&new, MIN_LEN, &dir.path().join("run-file")));
    }

    #[test]
    fn what_is_not_a_copy_of_the_right_length_is_not_taken_and_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        let source = file_with(dir.path(), "source", &content(b'x'));
        let identity = Identity::of(&source).unwrap();
        std::fs::create_dir_all(prepared.path_of(&identity)).unwrap();
        let dest = dir.path().join("run-file");
        assert!(!prepared.take(&identity, MIN_LEN, &dest));
        assert!(!dest.exists(), "nothing left in the run directory");
        std::fs::write(prepared.path_of(&identity), b"short").unwrap();
        assert!(!prepared.take(&identity, MIN_LEN, &dest));
        assert!(!dest.exists());
    }

    #[test]
    fn a_copy_being_made_elsewhere_is_not_made_twice() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        let source = file_with(dir.path(), "source", &content(b'x'));
        let identity = Identity::of(&source).unwrap();
        // Another process is making it.
        std::fs::create_dir_all(dir.path().join("prepared")).unwrap();
        let theirs = dir
            .path()
            .join("prepared")
            .join(format!("{PARTIAL}{}", identity.file_name()));
        std::fs::write(&theirs, b"half").unwrap();
        prepared.prepare(&source, MIN_LEN, &identity).unwrap();
        assert!(!prepared.path_of(&identity).exists());
        assert_eq!(std::fs::read(&theirs).unwrap(), b"half", "left alone");
    }

    #[test]
    fn the_budget_keeps_the_copies_used_last_and_small_files_get_none() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 2 * MIN_LEN + MIN_LEN / 2);
        let mut identities = Vec::new();
        for name in ["a", "b", "c"] {
            let source = file_with(dir.path(), name, &content(name.as_bytes()[0]));
            let identity = Identity::of(&source).unwrap();
            prepared.prepare(&source, MIN_LEN, &identity).unwrap();
            identities.push(identity);
            // Modification times a clear step apart.
            std::thread::sleep(Duration::from_millis(20));
        }
        let kept: Vec<bool> = identities
            .iter()
            .map(|identity| prepared.path_of(identity).exists())
            .collect();
        assert_eq!(kept, [false, true, true]);
        // Larger than the whole budget, or too small to be worth it: none.
        for len in [3 * MIN_LEN, MIN_LEN - 1] {
            let file = file_with(dir.path(), "other", &vec![b'o'; len as usize]);
            let identity = Identity::of(&file).unwrap();
            prepared.prepare(&file, len, &identity).unwrap();
            assert!(!prepared.path_of(&identity).exists(), "{len} bytes");
        }
    }

    #[test]
    fn no_copy_is_made_that_would_leave_the_file_system_too_full() {
        let dir = tempfile::tempdir().unwrap();
        let source = file_with(dir.path(), "source", &content(b'f'));
        let identity = Identity::of(&source).unwrap();
        // Asked to keep the whole file system free: nothing fits.
        let full = Prepared {
            keep_free_percent: 100,
            ..Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN)
        };
        full.prepare(&source, MIN_LEN, &identity).unwrap();
        assert!(!full.path_of(&identity).exists());
        // Nothing left behind: a later fetch with room may make the copy.
        assert_eq!(
            std::fs::read_dir(dir.path().join("prepared"))
                .unwrap()
                .count(),
            0
        );
        let roomy = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        roomy.prepare(&source, MIN_LEN, &identity).unwrap();
        assert!(roomy.path_of(&identity).exists());
    }

    #[test]
    fn a_partial_copy_left_by_a_process_that_stopped_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = Prepared::new(dir.path().join("prepared"), 8 * MIN_LEN);
        std::fs::create_dir_all(dir.path().join("prepared")).unwrap();
        let left = dir.path().join("prepared").join(format!("{PARTIAL}x-1"));
        let file = file_with(
            &dir.path().join("prepared"),
            &format!("{PARTIAL}x-1"),
            b"half",
        );
        file.set_modified(SystemTime::now() - 2 * ABANDONED)
            .unwrap();
        drop(file);
        let source = file_with(dir.path(), "source", &content(b's'));
        prepared
            .prepare(&source, MIN_LEN, &Identity::of(&source).unwrap())
            .unwrap();
        assert!(!left.exists());
    }
}
