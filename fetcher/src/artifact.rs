//! What a job asks for: [`Artifact`]s, their names inside the run directory, and
//! their [`Sha256`] digests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::FetchError;
use crate::unpack::Archive;

/// A file a job needs: where it comes from, where it goes in the run directory, and
/// optionally its digest and how to unpack it.
///
/// ```
/// use fetcher::{Artifact, Archive};
///
/// let data = Artifact::new("data/input.csv", "https://example.com/input.csv".parse()?)
///     .sha256("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?);
/// let tools = Artifact::new("tools", "https://example.com/tools.tar.gz".parse()?)
///     .unpack(Archive::TarGz);
/// # let _ = (data, tools);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// A relative path inside the run directory: the file, or with
    /// [`unpack`](Artifact::unpack) the directory the archive is unpacked into.
    /// `..`, absolute paths and paths through a symbolic link are refused.
    pub name: String,
    /// Where it is fetched from (`http` or `https`).
    pub url: Url,
    /// The SHA-256 of the file (of the archive, when it is unpacked). When given,
    /// the file is verified before it is used, and any stored copy with this digest
    /// is used without asking the origin: the content is what was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    /// Unpack the file as this kind of archive into the directory `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<Archive>,
    /// The job only reads it: the file is made read-only. With a digest too, it is
    /// a hard link to the cache's copy (no copy at all, even on file systems
    /// without reflinks). A job that made such a file writable again and wrote to
    /// it would change the cache's copy, and the other runs' links to it: the next
    /// fetch with the digest notices (the file's modification time moved), finds
    /// the content wrong, and downloads it again.
    #[serde(default)]
    pub read_only: bool,
}

impl Artifact {
    /// An artifact `name` fetched from `url`.
    pub fn new(name: impl Into<String>, url: Url) -> Artifact {
        Artifact {
            name: name.into(),
            url,
            sha256: None,
            unpack: None,
            read_only: false,
        }
    }

    /// Verifies the file against this digest.
    pub fn sha256(mut self, digest: Sha256) -> Artifact {
        self.sha256 = Some(digest);
        self
    }

    /// Unpacks the file into the directory `name`.
    pub fn unpack(mut self, archive: Archive) -> Artifact {
        self.unpack = Some(archive);
        self
    }

    /// Makes the file read-only (and allows a hard link to the cache's copy).
    pub fn read_only(mut self, read_only: bool) -> Artifact {
        self.read_only = read_only;
        self
    }
}

/// A SHA-256 digest, written as 64 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// A string that is not a SHA-256 digest.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{value:?} is not a SHA-256 digest: expected 64 hexadecimal digits")]
pub struct InvalidSha256 {
    /// What was given.
    pub value: String,
}

impl FromStr for Sha256 {
    type Err = InvalidSha256;

    /// Accepts 64 hexadecimal digits, either case, with an optional `sha256:`
    /// prefix.
    fn from_str(value: &str) -> Result<Sha256, InvalidSha256> {
        let digits = value.strip_prefix("sha256:").unwrap_or(value);
        let mut digest = [0; 32];
        hex::decode_to_slice(digits, &mut digest).map_err(|_| InvalidSha256 {
            value: value.to_owned(),
        })?;
        Ok(Sha256(digest))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sha256, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks every artifact's name before anything is fetched: each is a relative path
/// that stays inside `dir`, no two overlap, and none goes through a symbolic link
/// that is already in `dir`. Returns the relative paths, in the artifacts' order.
pub(crate) fn check_names(artifacts: &[Artifact], dir: &Path) -> Result<Vec<PathBuf>, FetchError> {
    let mut paths = Vec::with_capacity(artifacts.len());
    let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for artifact in artifacts {
        let path = relative_path(&artifact.name)?;
        // Two names overlap when one is the other or lies inside it.
        for (other, other_name) in &seen {
            if path.starts_with(other) || other.starts_with(&path) {
                return Err(FetchError::NamesOverlap {
                    first: (*other_name).to_owned(),
                    second: artifact.name.clone(),
                });
            }
        }
        check_no_links(&artifact.name, dir, &path)?;
        seen.insert(path.clone(), &artifact.name);
        paths.push(path);
    }
    Ok(paths)
}

/// Checks one artifact name without a run directory: a relative path of normal
/// components (no `..`, not absolute, not empty), returned normalized (`./a/b` is
/// `a/b`). For validating a job's names early, before it has a run directory;
/// [`Fetcher::fetch`](crate::Fetcher::fetch) checks them again, with the links in
/// the directory and the overlaps between names.
///
/// ```
/// assert_eq!(fetcher::check_name("./data/in.csv")?, std::path::Path::new("data/in.csv"));
/// assert!(fetcher::check_name("../x").is_err());
/// # Ok::<(), fetcher::FetchError>(())
/// ```
pub fn check_name(name: &str) -> Result<PathBuf, FetchError> {
    relative_path(name)
}

/// The name as a relative path of normal components, or why it is not one.
fn relative_path(name: &str) -> Result<PathBuf, FetchError> {
    let refuse = |reason: &'static str| FetchError::BadName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("it is empty"));
    }
    if name.contains('\0') {
        return Err(refuse("it contains a NUL character"));
    }
    if name.contains('\\') {
        return Err(refuse(
            "it contains a backslash (use `/` to separate directories)",
        ));
    }
    let mut path = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(
                    "it has a `..` component, which could leave the run directory",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(
                    "it is an absolute path; names are relative to the run directory",
                ));
            }
        }
    }
    if path.as_os_str().is_empty() {
        return Err(refuse("it names the run directory itself"));
    }
    Ok(path)
}

/// Refuses a path that goes through (or is) a symbolic link already in `dir`: a
/// link could point anywhere.
fn check_no_links(name: &str, dir: &Path, relative: &Path) -> Result<(), FetchError> {
    let mut path = dir.to_path_buf();
    for part in relative.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(FetchError::BadName {
                    name: name.to_owned(),
                    reason: "it goes through a symbolic link in the run directory",
                });
            }
            Ok(_) => {}
            // Nothing there yet: nothing further down either.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Artifact {
        Artifact::new(name, "http://example.com/x".parse().unwrap())
    }

    fn check(names: &[&str]) -> Result<Vec<PathBuf>, FetchError> {
        let dir = tempfile::tempdir().unwrap();
        let artifacts: Vec<Artifact> = names.iter().map(|name| artifact(name)).collect();
        check_names(&artifacts, dir.path())
    }

    #[test]
    fn relative_names_are_accepted_and_normalized() {
        let paths = check(&["a.txt", "./data/b.csv", "deep/er/c"]).unwrap();
        assert_eq!(
            paths,
            [
                PathBuf::from("a.txt"),
                PathBuf::from("data/b.csv"),
                PathBuf::from("deep/er/c")
            ]
        );
    }

    #[test]
    fn names_that_escape_are_refused_with_the_reason() {
        for (name, reason) in [
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("/etc/passwd", "absolute"),
            ("", "empty"),
            (".", "run directory itself"),
            ("a\\..\\x", "backslash"),
            ("a\0b", "NUL"),
        ] {
            let error = check(&[name]).unwrap_err().to_string();
            assert!(error.contains(reason), "{name:?}: {error}");
        }
    }

    #[test]
    fn overlapping_names_are_refused() {
        for names in [["a", "a"], ["a", "a/b"], ["a/b", "./a"]] {
            let error = check(&names).unwrap_err().to_string();
            assert!(error.contains("overlap"), "{names:?}: {error}");
        }
        check(&["a", "ab", "b/a"]).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn names_through_a_symbolic_link_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("file")).unwrap();
        for name in ["out/x", "file"] {
            let error = check_names(&[artifact(name)], dir.path()).unwrap_err();
            assert!(error.to_string().contains("symbolic link"), "{error}");
        }
    }

    #[test]
    fn digests_parse_from_hex_and_say_what_is_wrong() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let digest: Sha256 = hex.parse().unwrap();
        assert_eq!(digest.to_string(), hex.to_lowercase());
        assert_eq!(format!("sha256:{hex}").parse::<Sha256>().unwrap(), digest);
        let error = "abc".parse::<Sha256>().unwrap_err().to_string();
        assert!(error.contains("\"abc\"") && error.contains("64"), "{error}");
    }

    #[test]
    fn artifacts_read_from_json_refuse_unknown_fields() {
        let artifact: Artifact = serde_json::from_str(
            r#"{"name": "x", "url": "http://h/x", "unpack": "tar.gz", "read_only": true}"#,
        )
        .unwrap();
        assert_eq!(artifact.unpack, Some(Archive::TarGz));
        assert!(artifact.read_only);
        let error =
            serde_json::from_str::<Artifact>(r#"{"name": "x", "url": "http://h/x", "sha": "1"}"#)
                .unwrap_err()
                .to_string();
        assert!(error.contains("sha"), "{error}");
    }
}
