//! `dadd master`: the HTTP API that takes specs and the runners' reports, and
//! keeps them in a database.
//!
//! # Flow
//!
//! A client `POST`s a spec to `/api/processes`; the master checks it as `dadd
//! run` would ([`Spec::parse`](crate::spec::Spec::parse)), stores it as a process
//! `queued`, assigns it to a worker (see Scheduling) and answers its id. The
//! worker starts a runner for it and reports each state of the run to
//! `/api/processes/{id}/states`, and the log of the run, when it ends, to
//! `/api/processes/{id}/log` (the shapes are in [`crate::api`]). A runner started
//! by hand (`dadd run --master URL`) reports the same way under an id the master
//! has never seen: the first state creates the process, without a spec.
//!
//! The master also keeps files under `/files/{path}` ([`files`]), so that it can
//! host the artifacts its specs download, and serves a web page at `/` that
//! shows the processes, the hosts, and a process's states and log (static: its
//! script reads the API, with the token the user types in).
//!
//! Everything is in the [`Store`] (SQLite: one file, WAL, synced at each commit)
//! or on disk under the data directory before the master answers: a master
//! restarted at any moment has lost nothing it acknowledged.
//!
//! # Security
//!
//! With a token, every call needs `Authorization: Bearer TOKEN` (but `GET /`,
//! the web page, which holds no data). Without one, the
//! master only starts on a loopback address: [`Master::bind`] refuses any other.
//! Logs and files have size limits (413 beyond them); file paths that could leave
//! the store are refused (400).
//!
//! # Scheduling
//!
//! Workers (`dadd worker`) register and stay alive with heartbeats; a submitted
//! process is assigned to a live host ([`Store::schedule`]) and offered to it in
//! the answer to its next heartbeat. The protocol, and what happens when a host
//! goes down, is in [`crate::api`]. Scheduling runs at every submit and
//! heartbeat, and on a timer (every [`MasterConfig::heartbeat_every`]), so that
//! the work of a host that went silent moves on even when nothing else happens.
//!
//! # Storage
//!
//! SQLite by default (one master); PostgreSQL (`--database postgres://...`) for
//! several masters sharing one database: see [`store`].

pub mod files;
mod routes;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use files::FileStore;
pub use store::{Store, StoreError};

/// The default for `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8440";
/// The default limit on a process's log.
pub const DEFAULT_MAX_LOG_BYTES: usize = 16 * 1024 * 1024;
/// The default limit on a file in the file store.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// The default for how often workers send a heartbeat.
pub const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The default for how long a host may be silent before it is down.
pub const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(15);
/// The database file in the data directory, when no URL is given.
pub const DATABASE_FILE: &str = "dadd.sqlite3";

/// How a master is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MasterConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its directory: the database (unless [`database`](Self::database) says
    /// otherwise), `files/` and `tmp/`.
    pub data_dir: PathBuf,
    /// The database URL (`sqlite:PATH`); by default [`DATABASE_FILE`] in the data
    /// directory.
    pub database: Option<String>,
    /// The bearer token every call must present.
    pub token: Option<String>,
    /// The limit on a process's log, in bytes.
    pub max_log_bytes: usize,
    /// The limit on a file in the file store, in bytes.
    pub max_file_bytes: u64,
    /// How often workers are to send a heartbeat (they are told in each
    /// answer).
    pub heartbeat_every: Duration,
    /// How long a host may go without a heartbeat before it is down.
    pub host_timeout: Duration,
}

impl MasterConfig {
    /// A master on `listen` keeping its data in `data_dir`, without a token, with
    /// the default limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> MasterConfig {
        MasterConfig {
            listen,
            data_dir,
            database: None,
            token: None,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            heartbeat_every: DEFAULT_HEARTBEAT_EVERY,
            host_timeout: DEFAULT_HOST_TIMEOUT,
        }
    }
}

/// Why a master cannot start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// No token, and an address others can reach.
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach it could run \
         commands on the cluster; pass --token (or DADD_TOKEN), or listen on a loopback \
         address such as 127.0.0.1"
    )]
    NoToken(SocketAddr),
    /// The token is empty.
    #[error("the token is empty")]
    EmptyToken,
    /// The heartbeat interval and the host timeout do not fit together.
    #[error(
        "the host timeout ({}) must be longer than the heartbeat interval ({}), \
         or every host would be down between two heartbeats",
        humantime::format_duration(*host_timeout),
        humantime::format_duration(*heartbeat_every)
    )]
    Timing {
        /// The heartbeat interval.
        heartbeat_every: Duration,
        /// The host timeout.
        host_timeout: Duration,
    },
    /// Another master uses the data directory.
    #[error(
        "another master uses the data directory {} ({holder}); give this one its own \
         --data-dir (masters share work through a PostgreSQL database, not a directory)",
        path.display()
    )]
    Busy {
        /// The directory.
        path: PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// The data directory cannot be made.
    #[error("the data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file store.
    #[error(transparent)]
    Files(#[from] files::FileError),
    /// The address cannot be listened on.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped on an error.
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// A master, listening, ready to [`serve`](Master::serve).
#[derive(Debug)]
pub struct Master {
    listener: tokio::net::TcpListener,
    /// Held while the master lives: one master per data directory.
    _lock: std::fs::File,
    shared: Arc<routes::Shared>,
}

impl Master {
    /// Checks the config, opens (creating and migrating) the database and the
    /// file store, and binds the address.
    pub async fn bind(config: MasterConfig) -> Result<Master, MasterError> {
        let token = match config.token {
            Some(token) if token.is_empty() => return Err(MasterError::EmptyToken),
            token => token,
        };
        if token.is_none() && !config.listen.ip().is_loopback() {
            return Err(MasterError::NoToken(config.listen));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| MasterError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let lock = lock_data_dir(&config.data_dir)?;
        let database = match config.database {
            Some(url) => url,
            None => format!("sqlite:{}", config.data_dir.join(DATABASE_FILE).display()),
        };
        if config.heartbeat_every.is_zero() || config.host_timeout <= config.heartbeat_every {
            return Err(MasterError::Timing {
                heartbeat_every: config.heartbeat_every,
                host_timeout: config.host_timeout,
            });
        }
        let store = Store::open(&database, config.host_timeout).await?;
        let files = FileStore::new(
            config.data_dir.join("files"),
            config.data_dir.join("tmp"),
            config.max_file_bytes,
        )?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Listen {
                address: config.listen,
                source,
            })?;
        Ok(Master {
            listener,
            _lock: lock,
            shared: Arc::new(routes::Shared {
                store,
                files,
                token,
                max_log_bytes: config.max_log_bytes,
                heartbeat_every: config.heartbeat_every,
            }),
        })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, MasterError> {
        self.listener.local_addr().map_err(MasterError::Serve)
    }

    /// Serves the API until `shutdown` completes, then lets the calls in flight
    /// finish and closes the database.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MasterError> {
        let store = self.shared.store.clone();
        let scheduler = tokio::spawn(schedule_every(store.clone(), self.shared.heartbeat_every));
        let app = routes::routes(self.shared);
        let result = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MasterError::Serve);
        scheduler.abort();
        store.close().await;
        result
    }
}

/// The lock file in the data directory.
const LOCK_FILE: &str = "master.lock";

/// Takes the data directory for this master: the database file, the file
/// store and its staging area are one master's (a second one would remove the
/// first one's uploads in flight at its start).
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, MasterError> {
    let path = dir.join(LOCK_FILE);
    let io_error = |source| MasterError::DataDir {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
                .unwrap_or_else(|| "a process that did not say who it is".to_owned());
            return Err(MasterError::Busy {
                path: dir.to_owned(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(io_error(error)),
    }
    use std::io::Write;
    file.set_len(0).map_err(io_error)?;
    write!(file, "pid {}", std::process::id()).map_err(io_error)?;
    Ok(file)
}

/// Schedules on a timer: a host that went silent has its unstarted work moved
/// to another, and queued work finds hosts that came back, even when no one
/// submits or heartbeats.
async fn schedule_every(store: Store, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match store.schedule().await {
            Ok(()) => failing = false,
            // Said once per outage, not at every tick.
            Err(error) if !failing => {
                tracing::error!(%error, "scheduling failed; trying again at every tick");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
