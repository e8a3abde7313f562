//! The rules on entry names and link targets, on bytes, before anything touches the
//! file system.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Escape, UnpackError};

/// An archive entry's name, and the path below the destination it names.
#[derive(Debug)]
pub(super) struct EntryPath {
    /// The name as the archive spells it, for messages.
    pub(super) name: String,
    /// Only normal components; empty for the destination itself.
    pub(super) path: PathBuf,
}

impl EntryPath {
    /// Checks an entry's name: see [`below_dest`].
    pub(super) fn new(name: &[u8]) -> Result<EntryPath, UnpackError> {
        let shown = String::from_utf8_lossy(name).into_owned();
        match below_dest(name) {
            Ok(path) => Ok(EntryPath { name: shown, path }),
            Err(reason) => Err(UnpackError::EntryEscapes {
                entry: shown,
                reason,
            }),
        }
    }

    /// Refuses this entry for `reason`.
    pub(super) fn escapes(&self, reason: Escape) -> UnpackError {
        UnpackError::EntryEscapes {
            entry: self.name.clone(),
            reason,
        }
    }
}

/// The path an archive name stands for below the destination, as normal components
/// only (empty for the destination itself), or why it is refused.
///
/// Refused: an absolute name (a leading `/` or `\`, or a drive letter as in `C:`), a
/// `..` component (with `/` and `\` both taken as separators, as zip writers on Windows
/// use `\`), a NUL byte. Only `/` separates the components of the path made: on Unix a
/// `\` is a character of a file name. Empty and `.` components are dropped.
pub(super) fn below_dest(name: &[u8]) -> Result<PathBuf, Escape> {
    if name.contains(&0) {
        return Err(Escape::Nul);
    }
    let drive = matches!(name, [letter, b':', ..] if letter.is_ascii_alphabetic());
    if drive || name.starts_with(b"/") || name.starts_with(b"\\") {
        return Err(Escape::Absolute);
    }
    if name
        .split(|&b| b == b'/' || b == b'\\')
        .any(|part| part == b"..")
    {
        return Err(Escape::ParentDir);
    }
    Ok(name
        .split(|&b| b == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .map(OsStr::from_bytes)
        .collect())
}

/// Checks that a symlink at `link` (below the destination, as [`below_dest`] made it)
/// to `target` leads below the destination.
///
/// The target must be relative and non-empty. Its `..` components must all come first,
/// and climb no higher than the destination from the link's directory; after them come
/// only names (and `.`). A `..` after a name is refused even when it looks harmless:
/// the kernel climbs from where the name leads, not from where it is written, so with
/// a symlink `up -> .` in the destination, `up/../x` is outside. With the rule, every
/// symlink unpacked leads below the destination, so any path through them does too.
/// Only `/` separates components here, as the kernel reads the target.
pub(super) fn check_symlink_target(link: &Path, target: &[u8]) -> Result<(), Escape> {
    let shown = || String::from_utf8_lossy(target).into_owned();
    if target.is_empty() {
        return Err(Escape::EmptyTarget);
    }
    if target.contains(&0) {
        return Err(Escape::Nul);
    }
    if target.starts_with(b"/") {
        return Err(Escape::AbsoluteTarget { target: shown() });
    }
    let depth = link.components().count().saturating_sub(1);
    let mut climbed = 0;
    let mut after_name = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if after_name => return Err(Escape::TargetClimbsAfterName { target: shown() }),
            b".." => {
                climbed += 1;
                if climbed > depth {
                    return Err(Escape::TargetOutside { target: shown() });
                }
            }
            _ => after_name = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_normal_components() {
        assert_eq!(below_dest(b"a/b/c.txt"), Ok(PathBuf::from("a/b/c.txt")));
        assert_eq!(below_dest(b"./a//b/./"), Ok(PathBuf::from("a/b")));
        assert_eq!(below_dest(b"./"), Ok(PathBuf::new()));
        assert_eq!(below_dest(b"a\\b"), Ok(PathBuf::from("a\\b")));
        assert_eq!(below_dest(b"a..b/..c"), Ok(PathBuf::from("a..b/..c")));
    }

    #[test]
    fn names_that_escape_are_refused() {
        for name in [
            &b"/etc/passwd"[..],
            b"\\\\server\\share\\x",
            b"C:\\x",
            b"c:x",
        ] {
            assert_eq!(below_dest(name), Err(Escape::Absolute), "{name:?}");
        }
        for name in [
            &b".."[..],
            b"../x",
            b"a/../b",
            b"a/..",
            b"..\\x",
            b"a\\..\\..\\x",
        ] {
            assert_eq!(below_dest(name), Err(Escape::ParentDir), "{name:?}");
        }
        assert_eq!(below_dest(b"a\0/b"), Err(Escape::Nul));
    }

    #[test]
    fn symlink_targets_may_only_climb_first_and_within() {
        let ok =
            |link: &str, target: &str| check_symlink_target(Path::new(link), target.as_bytes());
        assert_eq!(ok("l", "x/y"), Ok(()));
        assert_eq!(ok("l", "./x"), Ok(()));
        assert_eq!(ok("a/b/l", "../../x"), Ok(()));
        assert_eq!(ok("a/l", ".."), Ok(()));
        assert!(matches!(
            ok("a/b/l", "../../../x"),
            Err(Escape::TargetOutside { .. })
        ));
        assert!(matches!(ok("l", ".."), Err(Escape::TargetOutside { .. })));
        assert!(matches!(
            ok("l", "up/../x"),
            Err(Escape::TargetClimbsAfterName { .. })
        ));
        assert!(matches!(
            ok("l", "/etc"),
            Err(Escape::AbsoluteTarget { .. })
        ));
        assert_eq!(ok("l", ""), Err(Escape::EmptyTarget));
    }
}
