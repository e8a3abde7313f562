//! [`Tree`]: the destination directory, written only through handles opened without
//! following symlinks, with the limits, the counts and the record of what was created.
//! Both formats unpack through it, so the rules hold for both alike.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, FileTimes, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::name::{EntryPath, below_dest, check_symlink_target};
use super::{Archive, Escape, Limits, UnpackError, Unpacked};

/// Files are copied in chunks of this size.
const COPY_CHUNK: usize = 64 << 10;
/// The permission bits a file may keep: no setuid, setgid or sticky bit, no write
/// for group or others.
const FILE_MODE_MASK: u32 = 0o755;
const DIR_MODE: u32 = 0o755;

/// The destination directory being unpacked into.
pub(super) struct Tree {
    /// The archive being unpacked, for errors.
    archive: PathBuf,
    format: Archive,
    dest: PathBuf,
    /// `dest`, opened once: every path below it is walked from here.
    root: OwnedFd,
    /// The outermost directory `Tree::open` created to make `dest`, if it did:
    /// removed whole when unpacking fails.
    made: Option<PathBuf>,
    /// What the entries created, relative to `dest`, in order.
    created: Vec<PathBuf>,
    /// The regular files unpacked so far: the only targets a hard link may have.
    files: HashSet<PathBuf>,
    limits: Limits,
    entries: u64,
    unpacked: Unpacked,
    chunk: Box<[u8]>,
}

impl Tree {
    /// Opens `dest`, creating it and its missing parents if it does not exist, to
    /// unpack the `format` archive at `archive` into it.
    pub(super) fn open(
        archive: &Path,
        format: Archive,
        dest: &Path,
        limits: Limits,
    ) -> Result<Tree, UnpackError> {
        let made = match fs::symlink_metadata(dest) {
            Ok(_) => None,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                let outermost = outermost_missing(dest);
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dest)
                    .map_err(|source| io_error(dest, "create the directory", source))?;
                Some(outermost)
            }
            Err(source) => return Err(io_error(dest, "look at", source)),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = match rustix::fs::openat(CWD, dest, flags, Mode::empty()) {
            Ok(root) => root,
            Err(errno) => {
                if let Some(made) = &made {
                    remove_logged(made);
                }
                return Err(io_error(dest, "open the directory", errno.into()));
            }
        };
        Ok(Tree {
            archive: archive.to_path_buf(),
            format,
            dest: dest.to_path_buf(),
            root,
            made,
            created: Vec::new(),
            files: HashSet::new(),
            limits,
            entries: 0,
            unpacked: Unpacked::default(),
            chunk: vec![0; COPY_CHUNK].into_boxed_slice(),
        })
    }

    /// Counts one more entry of the archive, against [`Limits::max_entries`].
    pub(super) fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// The limits unpacking runs under.
    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The entries counted so far.
    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// The bytes written to files so far.
    pub(super) fn bytes(&self) -> u64 {
        self.unpacked.bytes
    }

    /// Makes the directory `entry` names, or enters it if it is there already.
    pub(super) fn dir(&mut self, entry: &EntryPath) -> Result<(), UnpackError> {
        self.open_dir(entry, &entry.path).map(drop)
    }

    /// Creates the file `entry` names with what `data` yields, `mode` masked to
    /// `0o755`, and `mtime` if known.
    pub(super) fn file(
        &mut self,
        entry: &EntryPath,
        mode: u32,
        mtime: Option<SystemTime>,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        let (parent, leaf) = self.open_parent(entry)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&parent, leaf, flags, Mode::from_raw_mode(0o600))
            .map_err(|errno| self.make_error(entry, &entry.path, "create the file", errno))?;
        self.created.push(entry.path.clone());
        let mut file = File::from(fd);
        self.copy(data, &mut file, &entry.path)?;
        let path = || self.dest.join(&entry.path);
        file.set_permissions(Permissions::from_mode(mode & FILE_MODE_MASK))
            .map_err(|source| io_error(&path(), "set the permissions of", source))?;
        if let Some(mtime) = mtime {
            let times = FileTimes::new().set_modified(mtime).set_accessed(mtime);
            file.set_times(times)
                .map_err(|source| io_error(&path(), "set the modification time of", source))?;
        }
        self.files.insert(entry.path.clone());
        self.unpacked.files += 1;
        Ok(())
    }

    /// Creates the symlink `entry` names, to `target`, if that leads below the
    /// destination (see [`check_symlink_target`]).
    pub(super) fn symlink(&mut self, entry: &EntryPath, target: &[u8]) -> Result<(), UnpackError> {
        check_symlink_target(&entry.path, target).map_err(|reason| entry.escapes(reason))?;
        let (parent, leaf) = self.open_parent(entry)?;
        rustix::fs::symlinkat(target, &parent, leaf)
            .map_err(|errno| self.make_error(entry, &entry.path, "create the symlink", errno))?;
        self.created.push(entry.path.clone());
        self.unpacked.links += 1;
        Ok(())
    }

    /// Creates the hard link `entry` names, to `target` (a name in the archive), which
    /// must be a regular file unpacked before.
    pub(super) fn hard_link(
        &mut self,
        entry: &EntryPath,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let target_path = below_dest(target)
            .ok()
            .filter(|path| self.files.contains(path))
            .ok_or_else(|| {
                entry.escapes(Escape::HardLinkTarget {
                    target: String::from_utf8_lossy(target).into_owned(),
                })
            })?;
        let (target_dir, target_leaf) = self.open_parent_of(entry, &target_path)?;
        let (parent, leaf) = self.open_parent(entry)?;
        rustix::fs::linkat(&target_dir, target_leaf, &parent, leaf, AtFlags::empty())
            .map_err(|errno| self.make_error(entry, &entry.path, "create the hard link", errno))?;
        self.created.push(entry.path.clone());
        self.files.insert(entry.path.clone());
        self.unpacked.links += 1;
        Ok(())
    }

    /// What was unpacked, once the archive is done.
    pub(super) fn finish(self) -> Unpacked {
        self.unpacked
    }

    /// Removes everything unpacking created: the directory made for `dest`, or what the
    /// entries created in a `dest` that was there before, last first. Failures to
    /// remove are logged: the error that stopped unpacking is the one to report.
    pub(super) fn remove(self) {
        let Tree {
            dest,
            root,
            made,
            created,
            ..
        } = self;
        drop(root);
        if let Some(made) = made {
            remove_logged(&made);
            return;
        }
        for path in created.iter().rev() {
            remove_logged(&dest.join(path));
        }
    }

    /// Opens the directory that holds `entry`, and names its last component.
    fn open_parent<'e>(
        &mut self,
        entry: &'e EntryPath,
    ) -> Result<(OwnedFd, &'e OsStr), UnpackError> {
        self.open_parent_of(entry, &entry.path)
    }

    /// Opens the directory that holds `path`, for `entry`, and names its last component.
    fn open_parent_of<'p>(
        &mut self,
        entry: &EntryPath,
        path: &'p Path,
    ) -> Result<(OwnedFd, &'p OsStr), UnpackError> {
        let (Some(parent), Some(leaf)) = (path.parent(), path.file_name()) else {
            return Err(entry.escapes(Escape::Root));
        };
        Ok((self.open_dir(entry, parent)?, leaf))
    }

    /// Opens the directory `path` (relative to `dest`, for `entry`), creating each
    /// component that is missing, and refusing to go through a symlink or to replace
    /// anything that is not a directory.
    fn open_dir(&mut self, entry: &EntryPath, path: &Path) -> Result<OwnedFd, UnpackError> {
        let mut dir = self
            .root
            .try_clone()
            .map_err(|source| io_error(&self.dest, "open the directory", source))?;
        let mut walked = PathBuf::new();
        for name in path.iter() {
            walked.push(name);
            dir = match open_subdir(dir.as_fd(), name) {
                Ok(subdir) => subdir,
                Err(Errno::NOENT) => self.make_dir(entry, dir.as_fd(), name, &walked)?,
                Err(errno) => return Err(self.blocked(entry, dir.as_fd(), name, &walked, errno)),
            };
        }
        Ok(dir)
    }

    /// Creates the directory `name` in `parent` (`walked` below `dest`) and opens it.
    fn make_dir(
        &mut self,
        entry: &EntryPath,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        walked: &Path,
    ) -> Result<OwnedFd, UnpackError> {
        let mode = Mode::from_raw_mode(DIR_MODE);
        rustix::fs::mkdirat(parent, name, mode)
            .map_err(|errno| self.make_error(entry, walked, "create the directory", errno))?;
        self.created.push(walked.to_path_buf());
        self.unpacked.dirs += 1;
        let dir = open_subdir(parent, name)
            .map_err(|errno| self.blocked(entry, parent, name, walked, errno))?;
        // mkdirat's mode goes through the umask; the tree is to be the same whatever it is.
        rustix::fs::fchmod(&dir, mode).map_err(|errno| {
            io_error(
                &self.dest.join(walked),
                "set the permissions of",
                errno.into(),
            )
        })?;
        Ok(dir)
    }

    /// The error for `name` in `parent` (`walked` below `dest`) that could not be
    /// opened as a directory: a symlink in the way, or anything else that is not a
    /// directory.
    fn blocked(
        &self,
        entry: &EntryPath,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        walked: &Path,
        errno: Errno,
    ) -> UnpackError {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => entry
                .escapes(Escape::ThroughSymlink {
                    link: walked.to_path_buf(),
                }),
            Ok(_) if matches!(errno, Errno::NOTDIR | Errno::LOOP) => UnpackError::Exists {
                entry: entry.name.clone(),
                path: self.dest.join(walked),
            },
            _ => io_error(&self.dest.join(walked), "open the directory", errno.into()),
        }
    }

    /// The error for creating `path` (below `dest`): [`UnpackError::Exists`] when
    /// something is in the way.
    fn make_error(
        &self,
        entry: &EntryPath,
        path: &Path,
        action: &'static str,
        errno: Errno,
    ) -> UnpackError {
        let path = self.dest.join(path);
        if errno == Errno::EXIST {
            UnpackError::Exists {
                entry: entry.name.clone(),
                path,
            }
        } else {
            io_error(&path, action, errno.into())
        }
    }

    /// Copies `data` into `file` (`path` below `dest`), counting the bytes against
    /// [`Limits::max_total_bytes`] before writing them.
    fn copy(
        &mut self,
        data: &mut dyn Read,
        file: &mut File,
        path: &Path,
    ) -> Result<(), UnpackError> {
        loop {
            let read = match data.read(&mut self.chunk) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.corrupt(error)),
            };
            if self.unpacked.bytes + read as u64 > self.limits.max_total_bytes {
                return Err(UnpackError::TooLarge {
                    limit: self.limits.max_total_bytes,
                });
            }
            file.write_all(&self.chunk[..read])
                .map_err(|source| io_error(&self.dest.join(path), "write", source))?;
            self.unpacked.bytes += read as u64;
        }
    }

    /// The error for an archive that could not be read.
    pub(super) fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            archive: self.archive.clone(),
            format: self.format,
            source,
        }
    }
}

/// Opens the directory `name` in `parent`, not following a symlink.
fn open_subdir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

/// The outermost of `dest` and its parents that does not exist.
fn outermost_missing(dest: &Path) -> PathBuf {
    let mut outermost = dest;
    for parent in dest.ancestors().skip(1) {
        if parent.as_os_str().is_empty() || fs::symlink_metadata(parent).is_ok() {
            break;
        }
        outermost = parent;
    }
    outermost.to_path_buf()
}

/// Removes `path`, all of it if it is a directory (never following a symlink), logging
/// a failure.
fn remove_logged(path: &Path) {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    if let Err(error) = removed {
        tracing::warn!(path = %path.display(), %error, "could not remove what a failed unpack wrote");
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}
