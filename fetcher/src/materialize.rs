//! Putting a stored body into the run directory without copying it through user
//! space: a reflink where the file system shares blocks (btrfs, XFS, ...), else a
//! copy in the kernel (`copy_file_range`), else a plain copy; a hard link only for a
//! read-only artifact. Blocking code: run it off the async threads.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::AtFlags;
use rustix::io::Errno;
use serde::Serialize;
use sha2::Digest;

use crate::artifact::Sha256;

/// How an artifact's file got into the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Materialized {
    /// Written from the response as it arrived.
    Streamed,
    /// A reflink of the cache's copy: blocks shared, copied only when written.
    Reflink,
    /// Copied by the kernel from the cache's copy (`copy_file_range`).
    KernelCopy,
    /// Copied through a buffer (the file systems offered nothing better).
    Copy,
    /// A hard link to the cache's copy, made read-only.
    HardLink,
    /// A copy of the cache's copy made after an earlier fetch and moved into place
    /// ([`FetcherBuilder::prepared_copies`](crate::FetcherBuilder::prepared_copies)).
    Prepared,
    /// Unpacked from the archive into a directory.
    Unpacked,
}

/// The file mode of a read-only artifact, and of any other one.
pub(crate) const READ_ONLY: u32 = 0o444;
pub(crate) const WRITABLE: u32 = 0o644;

/// Puts the first `len` bytes of `source` at `dest` (which must not exist).
pub(crate) fn from_stored(
    source: &File,
    len: u64,
    dest: &Path,
    read_only: bool,
) -> io::Result<Materialized> {
    if read_only && source.metadata()?.len() == len && hard_link(source, dest).is_ok() {
        std::fs::set_permissions(dest, Permissions::from_mode(READ_ONLY))?;
        return Ok(Materialized::HardLink);
    }
    let mode = if read_only { READ_ONLY } else { WRITABLE };
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)?;
    if rustix::fs::ioctl_ficlone(&target, source).is_ok() {
        target.set_len(len)?;
        return Ok(Materialized::Reflink);
    }
    copy(source, &target, len)
}

/// Copies the first `len` bytes of `source` to `target`: in the kernel where the
/// file systems allow, else through a buffer.
pub(crate) fn copy(source: &File, target: &File, len: u64) -> io::Result<Materialized> {
    match kernel_copy(source, target, len) {
        Ok(()) => Ok(Materialized::KernelCopy),
        Err(error) if unsupported(&error) => {
            buffered_copy(source, target, len)?;
            Ok(Materialized::Copy)
        }
        Err(error) => Err(error),
    }
}

/// A hard link to an open file, through its `/proc` entry (linking by descriptor
/// needs a privilege; this does not).
fn hard_link(source: &File, dest: &Path) -> io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", source.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        dest,
        AtFlags::SYMLINK_FOLLOW,
    )?;
    Ok(())
}

fn kernel_copy(source: &File, target: &File, len: u64) -> io::Result<()> {
    let mut offset_in = 0u64;
    let mut offset_out = 0u64;
    while offset_in < len {
        let chunk = usize::try_from(len - offset_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let copied = rustix::fs::copy_file_range(
            source,
            Some(&mut offset_in),
            target,
            Some(&mut offset_out),
            chunk,
        )?;
        if copied == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stored body is shorter than its entry says",
            ));
        }
    }
    Ok(())
}

/// Errors that mean "not here": fall back to copying through a buffer.
fn unsupported(error: &io::Error) -> bool {
    let errno = Errno::from_io_error(error);
    [
        Errno::XDEV,
        Errno::INVAL,
        Errno::NOSYS,
        Errno::OPNOTSUPP,
        Errno::PERM,
    ]
    .into_iter()
    .any(|unsupported| errno == Some(unsupported))
}

fn buffered_copy(source: &File, mut target: &File, len: u64) -> io::Result<()> {
    let mut buffer = vec![0; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let read = source.read_at(&mut buffer[..want], offset)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stored body is shorter than its entry says",
            ));
        }
        target.write_all(&buffer[..read])?;
        offset += read as u64;
    }
    Ok(())
}

/// The SHA-256 of the first `len` bytes of `file`, read with positioned reads.
pub(crate) fn hash_file(file: &File, len: u64) -> io::Result<Sha256> {
    let mut hasher = sha2::Sha256::new();
    let mut reader = PositionedReader { file, offset: 0 }.take(len);
    let mut buffer = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    if total != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stored body is shorter than its entry says",
        ));
    }
    Ok(Sha256(hasher.finalize().into()))
}

/// `Read` over positioned reads: leaves the file's own offset alone.
struct PositionedReader<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buffer, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, body: &[u8]) -> File {
        let path = dir.join("source");
        std::fs::write(&path, body).unwrap();
        File::open(path).unwrap()
    }

    #[test]
    fn a_copy_has_the_body_and_does_not_share_writes() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|n| n as u8).collect();
        let file = source(dir.path(), &body);
        let dest = dir.path().join("copy");
        let how = from_stored(&file, body.len() as u64, &dest, false).unwrap();
        assert!(matches!(
            how,
            Materialized::Reflink | Materialized::KernelCopy | Materialized::Copy
        ));
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        std::fs::write(&dest, b"changed by the job").unwrap();
        assert_eq!(std::fs::read(dir.path().join("source")).unwrap(), body);
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            WRITABLE
        );
    }

    #[test]
    fn only_the_first_len_bytes_are_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let file = source(dir.path(), b"body and more");
        let dest = dir.path().join("copy");
        from_stored(&file, 4, &dest, false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"body");
        assert!(
            hash_file(&file, 100).is_err(),
            "a body shorter than said is an error"
        );
    }

    #[test]
    fn a_read_only_artifact_is_a_read_only_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let file = source(dir.path(), b"shared");
        let dest = dir.path().join("link");
        assert_eq!(
            from_stored(&file, 6, &dest, true).unwrap(),
            Materialized::HardLink
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"shared");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            READ_ONLY
        );
    }

    #[test]
    fn hashing_reads_the_file_without_moving_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = source(dir.path(), b"abc");
        let digest = hash_file(&file, 3).unwrap();
        assert_eq!(
            digest.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut read = String::new();
        file.read_to_string(&mut read).unwrap();
        assert_eq!(read, "abc");
    }
}
