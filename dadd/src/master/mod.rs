//! `dadd master`: the HTTP API that takes specs and the runners' reports, and
//! keeps them in a database.
//!
//! # Flow
//!
//! A client `POST`s a spec to `/api/processes`; the master checks it as `dadd
//! run` would ([`Spec::parse`](crate::spec::Spec::parse)), stores it as a process
//! in state `init` and answers its id. A runner (`dadd run --master URL --id ID`)
//! then reports each state of the run to `/api/processes/{id}/states`, and the
//! log of a failure to `/api/processes/{id}/log` (the shapes are in
//! [`crate::api`]). A runner started by hand reports under an id the master has
//! never seen: the first state creates the process, without a spec.
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
//! # Scope
//!
//! Not yet: scheduling onto workers, hosts and heartbeats, killing a process,
//! PostgreSQL.

pub mod files;
mod routes;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use files::FileStore;
pub use store::{Store, StoreError};

/// The default for `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8440";
/// The default limit on a process's log.
pub const DEFAULT_MAX_LOG_BYTES: usize = 16 * 1024 * 1024;
/// The default limit on a file in the file store.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
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
        let database = match config.database {
            Some(url) => url,
            None => format!("sqlite:{}", config.data_dir.join(DATABASE_FILE).display()),
        };
        let store = Store::open(&database).await?;
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
            shared: Arc::new(routes::Shared {
                store,
                files,
                token,
                max_log_bytes: config.max_log_bytes,
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
        let app = routes::routes(self.shared);
        let result = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MasterError::Serve);
        store.close().await;
        result
    }
}
