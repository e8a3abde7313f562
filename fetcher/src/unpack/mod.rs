//! Unpacking an artifact archive (tar, tar.gz, zip) into a run directory, safely.
//!
//! An archive comes from a job's build, so it is trusted to hold that job's files, not to
//! be well-behaved: a mistake or an attacker can give it entries that would write outside
//! the run directory, replace files there, or fill the disk. [`unpack`] writes what an
//! archive holds below one directory and nowhere else, or stops with an [`UnpackError`]
//! that says which entry was wrong and why, and removes everything it wrote.
//!
//! # Where entries may go
//!
//! - **Names.** An entry's name is a path below the destination: a name that is
//!   absolute (`/etc/passwd`, `\\server\share`, `C:\x`) or that has a `..` component
//!   (`a/../../x`, or `..\x`: a backslash counts as a separator here, as zip writers on
//!   Windows use it) is refused. `.` components and repeated slashes are ignored, so a
//!   tar made with `tar -C dir .` unpacks as it should.
//! - **No symlink is ever followed.** Directories are walked one component at a time
//!   from an open handle on the destination (`openat` with `O_NOFOLLOW`), files are
//!   created with `O_CREAT | O_EXCL | O_NOFOLLOW`. An entry whose path goes through a
//!   symlink is refused, even one the archive made and that points inside: that closes
//!   the classic attack of a symlink `a -> /etc` followed by an entry `a/passwd`.
//! - **Symlinks** are made only if their target is relative and stays below the
//!   destination when resolved from the link's own directory. `..` components may only
//!   lead the target (`../../lib/x`, climbing no higher than the destination): after a
//!   name, a `..` would climb from wherever that name leads, and a symlink elsewhere in
//!   the archive (`up -> .`) can make `up/../x` land outside.
//! - **Hard links** (tar) may only name a regular file unpacked earlier from the same
//!   archive.
//! - **Nothing is replaced.** The destination is expected to be missing (it is created)
//!   or empty. Directories already there are entered, but an entry whose path is taken
//!   by anything, whether it was there before or an earlier entry put it there, is an
//!   error ([`UnpackError::Exists`]): a file is never silently overwritten, and a
//!   duplicated entry is refused rather than guessed about.
//! - **Kinds.** Regular files, directories, symlinks and hard links are unpacked.
//!   Devices, fifos and sockets are refused ([`UnpackError::UnsupportedEntry`]). PAX
//!   and GNU long names and GNU sparse files are read as the tar format says.
//! - **Permissions.** A file keeps its archived mode masked with `0o755`: no setuid,
//!   setgid or sticky bit, nothing writable by group or others. Directories are made
//!   `0o755`. Owners are never changed. Files keep their archived modification time.
//!
//! # Limits
//!
//! [`Limits`] bound what an archive may cost, against decompression bombs: the bytes
//! written to files are counted as they are copied (a header's declared size can lie,
//! so it is never trusted) and unpacking stops before writing the byte that would pass
//! [`Limits::max_total_bytes`]; an entry past [`Limits::max_entries`] stops it too. A
//! tar stream can also hide data the entries never write out (a directory entry with a
//! body, a huge long-name record, which the tar reader would hold in memory), so the
//! decompressed stream may carry only a small allowance per entry beyond the bytes the
//! files take; past that, unpacking stops with [`UnpackError::TooLarge`] as well.
//!
//! # When it fails, nothing is left behind
//!
//! Unpacking stops at the first refused entry, limit or I/O error, and removes what it
//! wrote: every file, link and directory it created, in reverse order, or the whole
//! destination if `unpack` created it (with any parent directory it created for it).
//! What was in the destination before is left as it was.
//!
//! # Example
//!
//! ```
//! use fetcher::unpack::{unpack, Archive, Limits};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let archive = dir.path().join("artifacts.tar");
//! let mut builder = tar::Builder::new(std::fs::File::create(&archive)?);
//! let mut header = tar::Header::new_gnu();
//! header.set_size(6);
//! header.set_mode(0o644);
//! builder.append_data(&mut header, "logs/build.txt", &b"built\n"[..])?;
//! builder.finish()?;
//!
//! let run = dir.path().join("run");
//! let unpacked = unpack(&archive, Archive::Tar, &run, &Limits::default())?;
//! assert_eq!((unpacked.files, unpacked.dirs, unpacked.bytes), (1, 1, 6));
//! assert_eq!(std::fs::read(run.join("logs/build.txt"))?, b"built\n");
//! # Ok(()) }
//! ```

mod name;
mod tar;
mod tree;
mod zip;

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use tree::Tree;

/// An archive format.
///
/// Serialized as `"tar"`, `"tar.gz"` (`"tgz"` is read too) and `"zip"`, the names
/// [`FromStr`] and [`Display`](fmt::Display) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Archive {
    /// An uncompressed tar archive (ustar, GNU or PAX).
    Tar,
    /// A tar archive compressed with gzip (several concatenated gzip members are read
    /// as one stream, as `gzip -d` does).
    #[serde(rename = "tar.gz", alias = "tgz")]
    TarGz,
    /// A zip archive, its entries stored or deflated.
    Zip,
}

impl Archive {
    /// The format a file name's extension says, ignoring case: `.tar`, `.tar.gz` or
    /// `.tgz`, `.zip`. `None` for any other name.
    ///
    /// ```
    /// use fetcher::unpack::Archive;
    ///
    /// assert_eq!(Archive::from_name("site.TAR.GZ"), Some(Archive::TarGz));
    /// assert_eq!(Archive::from_name("report.pdf"), None);
    /// ```
    #[must_use]
    pub fn from_name(name: &str) -> Option<Archive> {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Archive::TarGz)
        } else if name.ends_with(".tar") {
            Some(Archive::Tar)
        } else if name.ends_with(".zip") {
            Some(Archive::Zip)
        } else {
            None
        }
    }

    /// The format's name, as serialized.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Archive::Tar => "tar",
            Archive::TarGz => "tar.gz",
            Archive::Zip => "zip",
        }
    }
}

impl fmt::Display for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name [`Archive::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown archive format {0:?}: expected \"tar\", \"tar.gz\" (or \"tgz\") or \"zip\"")]
pub struct UnknownArchive(pub String);

impl FromStr for Archive {
    type Err = UnknownArchive;

    /// Reads `"tar"`, `"tar.gz"` or `"tgz"`, `"zip"`: the serialized names, exactly.
    fn from_str(name: &str) -> Result<Archive, UnknownArchive> {
        match name {
            "tar" => Ok(Archive::Tar),
            "tar.gz" | "tgz" => Ok(Archive::TarGz),
            "zip" => Ok(Archive::Zip),
            _ => Err(UnknownArchive(name.to_owned())),
        }
    }
}

/// Limits against decompression bombs: what one archive may write at most.
///
/// The defaults are far above what a job's artifacts need and below what would hurt a
/// worker: they are there to stop a runaway or hostile archive, not to budget disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes the files may add up to, counted as they are written. Default
    /// 16 GiB: more than any artifact set we ship (build outputs, test data), less
    /// than the free disk of a worker, which a gzip stream can otherwise fill from a
    /// few megabytes (zeros compress about a thousand to one).
    pub max_total_bytes: u64,
    /// The most entries the archive may have, of any kind. Default 100,000: twice a
    /// large `node_modules` tree; each entry costs an inode and a few system calls,
    /// so millions of empty files are a bomb of their own.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_total_bytes: 16 << 30,
            max_entries: 100_000,
        }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files created.
    pub files: u64,
    /// Directories created: those the archive names and the parents its entries imply
    /// (not those that were already there).
    pub dirs: u64,
    /// Symlinks and hard links created.
    pub links: u64,
    /// Bytes written to the files.
    pub bytes: u64,
}

/// Why an archive was not unpacked. After any of these, nothing it wrote is left (see
/// the [module documentation](self)).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would be written, or a link would lead, outside the destination.
    #[error("refused archive entry {entry:?}: {reason}")]
    EntryEscapes {
        /// The entry's name, as the archive spells it.
        entry: String,
        /// What is wrong with it.
        reason: Escape,
    },
    /// An entry's path is already taken, by something that was in the destination
    /// before or by an earlier entry of the same archive.
    #[error(
        "archive entry {entry:?} would replace {path}, which already exists \
         (unpack never overwrites: give it an empty or missing directory)"
    )]
    Exists {
        /// The entry's name, as the archive spells it.
        entry: String,
        /// What is in the way.
        path: PathBuf,
    },
    /// The files add up to more than [`Limits::max_total_bytes`], or the archive
    /// carries more data than its entries account for.
    #[error(
        "the archive unpacks to more than {limit} bytes, the limit \
         (a decompression bomb, or artifacts larger than expected)"
    )]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The archive has more entries than [`Limits::max_entries`].
    #[error("the archive has more than {limit} entries, the limit")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// An entry of a kind that has no place in a run directory (a device, a fifo...).
    #[error("archive entry {entry:?} is a {kind}, which is not unpacked")]
    UnsupportedEntry {
        /// The entry's name, as the archive spells it.
        entry: String,
        /// What it is: "character device", "fifo"...
        kind: &'static str,
    },
    /// The archive could not be read as the format it was said to be: damaged,
    /// truncated, another format, or a feature this reader lacks (encrypted or
    /// bzip2-compressed zip entries...).
    #[error("cannot read {archive} as {format}: {source}")]
    Corrupt {
        /// The archive file.
        archive: PathBuf,
        /// The format it was read as.
        format: Archive,
        /// What the reader found.
        #[source]
        source: io::Error,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// The file or directory it was done on.
        path: PathBuf,
        /// What was being done, as a verb: "create the directory", "write"...
        action: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How an entry would escape the destination: the reason of
/// [`UnpackError::EntryEscapes`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Escape {
    /// The name is an absolute path: `/x`, `\x`, `C:x`.
    #[error("its name is an absolute path")]
    Absolute,
    /// The name has a `..` component (`/` and `\` both count as separators).
    #[error("its name has a `..` component")]
    ParentDir,
    /// The name, or a symlink's target, has a NUL byte, where the file system would
    /// cut it short.
    #[error("its name or link target has a NUL byte")]
    Nul,
    /// The name is the destination itself (`.`, `./`) for something that is not a
    /// directory.
    #[error("its name is the destination directory itself")]
    Root,
    /// The path goes through a symlink (`link`, relative to the destination).
    #[error("its path goes through the symlink {}", link.display())]
    ThroughSymlink {
        /// The symlink, relative to the destination.
        link: PathBuf,
    },
    /// A symlink whose target is empty.
    #[error("it is a symlink with an empty target")]
    EmptyTarget,
    /// A symlink whose target is absolute.
    #[error("it is a symlink to the absolute path {target:?}")]
    AbsoluteTarget {
        /// The target, as the archive spells it.
        target: String,
    },
    /// A symlink whose leading `..` climb above the destination.
    #[error("it is a symlink to {target:?}, which climbs out of the destination")]
    TargetOutside {
        /// The target, as the archive spells it.
        target: String,
    },
    /// A symlink whose target has a `..` after a name, which another symlink could
    /// make climb anywhere.
    #[error(
        "it is a symlink to {target:?}, which has a `..` after a name \
         (only leading `..` are allowed)"
    )]
    TargetClimbsAfterName {
        /// The target, as the archive spells it.
        target: String,
    },
    /// A hard link to something other than a regular file unpacked before it.
    #[error("it is a hard link to {target:?}, which is not a file unpacked before it")]
    HardLinkTarget {
        /// The target, as the archive spells it.
        target: String,
    },
}

/// Unpacks the `format` archive at `archive` into `dest`, within `limits`.
///
/// `dest` is created, with its missing parents, if it does not exist; it is expected to
/// be empty otherwise. Blocking: call it from `spawn_blocking` in async code.
///
/// # Errors
///
/// Stops at the first entry that would escape `dest` or replace something, of a kind
/// that is not unpacked, or past a limit; and when the archive cannot be read or a
/// file system operation fails. Then everything it wrote is removed. See
/// [`UnpackError`] and the [module documentation](self) for the rules.
pub fn unpack(
    archive: &Path,
    format: Archive,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let file = File::open(archive).map_err(|source| UnpackError::Io {
        path: archive.to_path_buf(),
        action: "open the archive",
        source,
    })?;
    unpack_file(file, archive, format, dest, limits)
}

/// Unpacks the `format` archive that is the whole of `file` (at its start) into
/// `dest`, within `limits`, as [`unpack`] does; `archive` names it in errors.
///
/// # Errors
///
/// As [`unpack`].
pub fn unpack_file(
    file: File,
    archive: &Path,
    format: Archive,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let mut tree = Tree::open(archive, format, dest, limits.clone())?;
    let unpacked = match format {
        Archive::Tar => tar::unpack(BufReader::new(file), &mut tree),
        Archive::TarGz => tar::unpack(
            flate2::bufread::MultiGzDecoder::new(BufReader::new(file)),
            &mut tree,
        ),
        Archive::Zip => zip::unpack(BufReader::new(file), &mut tree),
    };
    match unpacked {
        Ok(()) => Ok(tree.finish()),
        Err(error) => {
            tree.remove();
            Err(error)
        }
    }
}
