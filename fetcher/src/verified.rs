//! Which stored files have been verified against which digest, so that a repeat
//! fetch of a large artifact does not read it all again to hash it.
//!
//! A record lives in `verified/<digest>` under the cache directory: the identities
//! (device, inode, length, modification time) of stored body files whose content
//! had that digest when it was hashed. The cache never changes a body file once it
//! is published, and a write to it moves its modification time, so a file with a
//! recorded identity still has the recorded digest.
//!
//! The change time would also catch a writer that sets the modification time back,
//! but it moves with every link, rename and unlink of a hard-linked file, so it
//! would make every use of a read-only artifact hash it again. A job that runs as
//! the cache's owner and means to change it can write the cache's directory anyway;
//! what this guards against is a job writing to its files by mistake.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::artifact::Sha256;

/// How many identities a record keeps (the newest): a few copies of one artifact
/// can be in the cache at once (a replaced entry still being read).
const KEPT: usize = 8;

/// A file's identity, as far as its content goes: device, inode, length,
/// modification time, and birth time where the file system keeps one (an inode
/// number freed and reused for a file of the same length, modified within the
/// same clock tick, is then still another identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity(String);

impl Identity {
    pub(crate) fn of(file: &File) -> io::Result<Identity> {
        let metadata = file.metadata()?;
        let born = metadata
            .created()
            .ok()
            .and_then(|born| born.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        Ok(Identity(format!(
            "{} {} {} {}.{} {}.{}",
            metadata.dev(),
            metadata.ino(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec(),
            born.as_secs(),
            born.subsec_nanos()
        )))
    }

    /// The identity as a file name (no spaces, no slashes).
    pub(crate) fn file_name(&self) -> String {
        self.0.replace(' ', "-")
    }
}

/// The records, in a directory.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    dir: PathBuf,
}

impl Verified {
    pub(crate) fn new(dir: PathBuf) -> Verified {
        Verified { dir }
    }

    /// Whether a file with this identity was found to have this digest.
    pub(crate) fn contains(&self, digest: &Sha256, identity: &Identity) -> bool {
        std::fs::read_to_string(self.dir.join(digest.to_string()))
            .is_ok_and(|text| text.lines().any(|line| line == identity.0))
    }

    /// Records that a file with this identity has this digest. Best effort: a
    /// record that cannot be written only means hashing again next time.
    pub(crate) fn record(&self, digest: &Sha256, identity: &Identity) {
        if let Err(error) = self.try_record(digest, identity) {
            tracing::debug!(%error, dir = %self.dir.display(), "could not record a verified digest");
        }
    }

    fn try_record(&self, digest: &Sha256, identity: &Identity) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(digest.to_string());
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines: Vec<&str> = old.lines().filter(|line| *line != identity.0).collect();
        lines.push(&identity.0);
        let keep = &lines[lines.len().saturating_sub(KEPT)..];
        // Written whole and renamed in, so that a reader never sees half a record.
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        for line in keep {
            writeln!(temp, "{line}")?;
        }
        temp.persist(&path).map_err(|error| error.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_identity_is_found_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let verified = Verified::new(dir.path().join("verified"));
        let digest = Sha256([7; 32]);
        let path = dir.path().join("body");
        std::fs::write(&path, b"body").unwrap();
        let identity = Identity::of(&File::open(&path).unwrap()).unwrap();
        assert!(!verified.contains(&digest, &identity));
        verified.record(&digest, &identity);
        assert!(verified.contains(&digest, &identity));
        assert!(!verified.contains(&Sha256([8; 32]), &identity));

        std::fs::write(&path, b"other body").unwrap();
        let changed = Identity::of(&File::open(&path).unwrap()).unwrap();
        assert!(!verified.contains(&digest, &changed));
    }

    #[test]
    fn a_record_keeps_the_newest_identities() {
        let dir = tempfile::tempdir().unwrap();
        let verified = Verified::new(dir.path().to_path_buf());
        let digest = Sha256([1; 32]);
        for n in 0..20 {
            verified.record(&digest, &Identity(format!("file {n}")));
        }
        assert!(verified.contains(&digest, &Identity("file 19".into())));
        assert!(verified.contains(&digest, &Identity("file 12".into())));
        assert!(!verified.contains(&digest, &Identity("file 11".into())));
    }
}
