//! The host's config file (TOML), shared by the runner and the worker: where
//! failures are mailed, the master, the artifact cache, and the worker's name,
//! capacity and state.
//!
//! ```toml
//! master = "http://dadd-master.example.com:8000"   # report states and logs there
//! token = "s3cret"                                 # the cluster's bearer token
//! cache_dir = "/var/cache/dadd/artifacts"
//! redis = "redis://cache.example.com:6379"         # the tier the hosts share
//! prepared_copies = 10737418240                    # bytes of copies made ahead
//! name = "node-7"                                  # the worker's host name
//! max_processes = 8                                # processes it runs at once
//! state_dir = "/var/lib/dadd/worker"               # what it has started
//!
//! [smtp]                                           # an erroremail config
//! server = "localhost"
//! from = "dadd@example.com"
//! to = ["ops@example.com"]
//! ```
//!
//! Every key is optional; the command line wins over the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

/// The host's config: see the [module documentation](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HostConfig {
    /// Where failures are mailed; none are without it.
    pub smtp: Option<erroremail::Config>,
    /// The master that states and logs are reported to.
    pub master: Option<Url>,
    /// The bearer token of the master's API.
    pub token: Option<String>,
    /// The artifact cache.
    pub cache_dir: Option<PathBuf>,
    /// The Redis shared by the hosts, behind this host's cache.
    pub redis: Option<String>,
    /// Bytes of copies of cached artifacts made ahead for the next runs (see
    /// [`fetcher::FetcherBuilder::prepared_copies`]); 4 GiB by default, 0 for none.
    pub prepared_copies: Option<u64>,
    /// The worker's name on the master (default: the machine's host name).
    pub name: Option<String>,
    /// How many processes the worker runs at once (default: the number of CPUs).
    pub max_processes: Option<u32>,
    /// Where the worker records the processes it started.
    pub state_dir: Option<PathBuf>,
}

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// It cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// It is not a valid config: the message names the key.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl HostConfig {
    /// Reads and checks a TOML config file.
    pub fn from_file(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        HostConfig::from_toml(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; the error names the key.
    fn from_toml(text: &str) -> Result<HostConfig, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_is_read() {
        let config = HostConfig::from_toml(
            r#"
            master = "http://127.0.0.1:8000"
            token = "t"
            cache_dir = "/tmp/c"
            redis = "redis://127.0.0.1:6379"
            prepared_copies = 1048576
            name = "node-7"
            max_processes = 3
            state_dir = "/var/lib/dadd/worker"
            [smtp]
            server = "127.0.0.1"
            port = 2525
            from = "dadd@example.com"
            to = "ops@example.com"
            "#,
        )
        .unwrap();
        assert_eq!(config.smtp.unwrap().port(), 2525);
        assert_eq!(config.master.unwrap().as_str(), "http://127.0.0.1:8000/");
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(config.name.as_deref(), Some("node-7"));
        assert_eq!(config.max_processes, Some(3));
        assert_eq!(config.prepared_copies, Some(1 << 20));
        assert_eq!(
            config.state_dir.as_deref(),
            Some(Path::new("/var/lib/dadd/worker"))
        );
    }

    #[test]
    fn an_empty_config_is_valid_and_a_wrong_key_is_named() {
        assert!(HostConfig::from_toml("").unwrap().smtp.is_none());
        let error = HostConfig::from_toml("mastr = 'x'").unwrap_err();
        assert!(error.contains("mastr"), "{error}");
        let error = HostConfig::from_toml("[smtp]\nserver = 'x'\n").unwrap_err();
        assert!(error.contains("from"), "{error}");
    }
}
