//! What a fetch did: the [`FetchReport`], and the [`Progress`] events on the way.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::artifact::Sha256;
use crate::materialize::Materialized;

/// How an artifact was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Served {
    /// From this host's cache without a request: fresh, or a stored copy that has
    /// the artifact's digest.
    Cached,
    /// From this host's cache after the origin said it is unchanged (a `304`, which
    /// moves no body).
    Revalidated,
    /// Downloaded from the origin.
    Downloaded,
    /// From the shared tier (another host fetched it), without the origin.
    SharedTier,
}

impl Served {
    /// A short lower-case word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Cached => "cached",
            Served::Revalidated => "revalidated",
            Served::Downloaded => "downloaded",
            Served::SharedTier => "shared-tier",
        }
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one artifact.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ArtifactReport {
    /// Its name (its path relative to the run directory).
    pub name: String,
    /// Where it came from.
    pub url: Url,
    /// Its path in the run directory.
    pub path: PathBuf,
    /// How it was served.
    pub served: Served,
    /// How its file got into the run directory.
    pub materialized: Materialized,
    /// Its size in bytes (of the archive, for an unpacked one).
    pub size: u64,
    /// Body bytes that came over the network: from the origin, or from the shared
    /// tier. Zero for a cached or revalidated artifact.
    pub network_bytes: u64,
    /// Its verified digest, when the artifact names one.
    pub sha256: Option<Sha256>,
    /// How many requests it took (retries included; 0 when none was needed).
    pub attempts: u32,
    /// How long it took, waiting for another fetch of the same URL included.
    pub elapsed: Duration,
}

/// What a fetch did, artifact by artifact, in the order they were given.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FetchReport {
    /// One report per artifact.
    pub artifacts: Vec<ArtifactReport>,
    /// How long the whole fetch took.
    pub elapsed: Duration,
}

impl FetchReport {
    /// Body bytes that came over the network, for all artifacts.
    pub fn network_bytes(&self) -> u64 {
        self.artifacts
            .iter()
            .map(|artifact| artifact.network_bytes)
            .sum()
    }

    /// How many artifacts were served this way.
    pub fn count(&self, served: Served) -> usize {
        self.artifacts
            .iter()
            .filter(|artifact| artifact.served == served)
            .count()
    }
}

impl fmt::Display for FetchReport {
    /// A table, one line per artifact, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .artifacts
            .iter()
            .map(|a| a.name.len())
            .max()
            .unwrap_or(0)
            .max(8);
        writeln!(
            f,
            "{:<width$}  {:<11}  {:>10}  {:>10}  {:>8}",
            "artifact", "served", "size", "network", "time"
        )?;
        for artifact in &self.artifacts {
            writeln!(
                f,
                "{:<width$}  {:<11}  {:>10}  {:>10}  {:>7.2}s",
                artifact.name,
                artifact.served.as_str(),
                human_bytes(artifact.size),
                human_bytes(artifact.network_bytes),
                artifact.elapsed.as_secs_f64(),
            )?;
        }
        write!(
            f,
            "{} artifact(s) in {:.2}s, {} over the network",
            self.artifacts.len(),
            self.elapsed.as_secs_f64(),
            human_bytes(self.network_bytes())
        )
    }
}

/// `1.5 MiB`, `312 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Something happened to an artifact: for progress bars and logs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Progress<'a> {
    /// The artifact's name.
    pub name: &'a str,
    /// What happened.
    pub event: ProgressEvent,
}

/// What happened, in [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// Its fetch started.
    Started,
    /// Another fetch of the same URL (maybe in another process) goes first; this
    /// one waits, then finds it in the cache.
    Waiting,
    /// Body bytes written so far, and the total when the origin said it. Sent at
    /// most every MiB, and at the end.
    Bytes {
        /// Bytes written so far.
        done: u64,
        /// The whole body's length, when known.
        total: Option<u64>,
    },
    /// An attempt failed; another follows after `delay`.
    Retrying {
        /// The attempt that failed (from 1).
        attempt: u32,
        /// Why.
        error: String,
        /// The wait before the next one.
        delay: Duration,
    },
    /// Unpacking the archive.
    Unpacking,
    /// It is in the run directory.
    Done {
        /// How it was served.
        served: Served,
        /// Its size.
        size: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_a_person_would_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
