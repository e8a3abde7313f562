//! [`FetchError`]: everything that can go wrong, saying which artifact and why.

use std::path::PathBuf;

use reqwest::StatusCode;
use url::Url;

use crate::artifact::Sha256;
use crate::unpack::UnpackError;

/// Why a fetch failed. Each variant names the artifact (by its `name`) and what
/// was wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// An artifact's name is not a relative path inside the run directory.
    #[error("artifact name {name:?} is refused: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Two artifacts would write the same path, or one inside the other.
    #[error("artifact names {first:?} and {second:?} overlap: one would overwrite the other")]
    NamesOverlap {
        /// The first of them, in the order given.
        first: String,
        /// The second.
        second: String,
    },
    /// An artifact's URL is not one we can fetch.
    #[error("artifact {name:?}: cannot fetch {url}: only http and https URLs are supported")]
    UnsupportedUrl {
        /// The artifact.
        name: String,
        /// Its URL.
        url: Url,
    },
    /// The origin answered with an error status (after retries, for a 5xx).
    #[error("artifact {name:?}: {url} answered {status} (after {attempts} attempt(s))")]
    Status {
        /// The artifact.
        name: String,
        /// Its URL.
        url: Url,
        /// The status of the last answer.
        status: StatusCode,
        /// How many requests were made.
        attempts: u32,
    },
    /// The request failed (connection refused, timeout, body cut short), after
    /// retries.
    #[error("artifact {name:?}: fetching {url} failed after {attempts} attempt(s): {reason}")]
    Network {
        /// The artifact.
        name: String,
        /// Its URL.
        url: Url,
        /// How many requests were made.
        attempts: u32,
        /// The last error with its causes, as one line.
        reason: String,
        /// The last error.
        #[source]
        source: reqwest_middleware::Error,
    },
    /// A request that cannot succeed by trying again (too many redirects, a URL the
    /// client refuses, a middleware's refusal).
    #[error("request failed: {reason}")]
    Request {
        /// The error with its causes, as one line.
        reason: String,
        /// The error.
        #[source]
        source: reqwest_middleware::Error,
    },
    /// The file's digest is not the one the artifact names. Neither the run
    /// directory nor the cache keeps the file.
    #[error(
        "artifact {name:?}: checksum mismatch for {url}: expected sha256 {expected}, got {actual}"
    )]
    ChecksumMismatch {
        /// The artifact.
        name: String,
        /// Its URL.
        url: Url,
        /// The digest the artifact names.
        expected: Sha256,
        /// The digest of what was fetched.
        actual: Sha256,
    },
    /// The archive could not be unpacked (it is damaged, too large, or has entries
    /// that would leave its directory). Nothing of it is left in the run directory.
    #[error("artifact {name:?}: unpacking failed: {source}")]
    Unpack {
        /// The artifact.
        name: String,
        /// What was wrong.
        #[source]
        source: UnpackError,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The cache could not be opened.
    #[error("cannot open the artifact cache in {}: {source}", dir.display())]
    Cache {
        /// Its directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: cachecontrol::StoreError,
    },
    /// No cache directory was given and the user's one is unknown.
    #[error(
        "no cache directory: set XDG_CACHE_HOME or HOME, or give one with FetcherBuilder::cache_dir"
    )]
    NoCacheDir,
}

impl FetchError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> FetchError {
        FetchError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
