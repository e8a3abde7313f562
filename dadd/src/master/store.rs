//! The master's storage: processes, their states and their logs, in SQLite.
//!
//! One file, created and migrated when the master starts (the migrations are in
//! `dadd/migrations/`, embedded in the binary), in WAL mode with `synchronous =
//! FULL`: a state the master answered 2xx to is on disk, and survives the master
//! being killed, or the machine losing power, a moment later. Every change is one
//! transaction.
//!
//! The SQL is plain enough (upserts, no SQLite-only functions) to serve
//! PostgreSQL too; [`Store`] is the one place that will have to choose.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::api::{ProcessDetail, ProcessSummary, State, StateChange};
use crate::spec::Spec;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL names a database this master cannot use (yet).
    #[error(
        "database {0:?}: only SQLite (sqlite:PATH) is supported for now; PostgreSQL is to come"
    )]
    Unsupported(String),
    /// The database URL does not parse.
    #[error("database URL {url:?}: {source}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The database cannot be opened or created.
    #[error("opening the database {url:?}: {source}")]
    Open {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value does not read back (the database was changed by hand?).
    #[error("process {id}: stored {what} does not read back: {reason}")]
    Corrupt {
        /// The process.
        id: String,
        /// The column.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A spec cannot be written as JSON.
    #[error("writing the spec as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No process has this id.
    #[error("no process {0}")]
    NoProcess(String),
}

/// The master's processes, states and logs.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// The columns [`summary`] reads.
const SUMMARY_COLUMNS: &str =
    "id, name, state, host, pid, created_at, updated_at, exit_code, signal, reason";

impl Store {
    /// Opens the database at `url` (`sqlite:PATH`), creating and migrating it as
    /// needed.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Err(StoreError::Unsupported(url.to_owned()));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|source| StoreError::BadUrl {
                url: url.to_owned(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: url.to_owned(),
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        tracing::info!(%url, "database ready");
        Ok(Store { pool })
    }

    /// Stores a submitted spec as a new process in state `init`; its id.
    pub async fn submit(&self, spec: &Spec) -> Result<String, StoreError> {
        let spec_json = serde_json::to_string(spec)?;
        let now = stored_time(Timestamp::now());
        loop {
            let id = new_process_id();
            // Two masters (or a restart within the same millisecond) could
            // make the same id: the insert then does nothing, and the next try
            // has a new one.
            let inserted = sqlx::query(
                "INSERT INTO processes (id, name, spec, state, created_at, updated_at) \
                 VALUES (?, ?, ?, 'init', ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&id)
            .bind(spec.name.as_deref())
            .bind(&spec_json)
            .bind(&now)
            .bind(&now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(id);
            }
        }
    }

    /// Records a state a runner reported from `host`, creating the process when
    /// the master does not know it yet (a `dadd run --master` started by hand).
    pub async fn record_state(
        &self,
        id: &str,
        change: &StateChange,
        host: &str,
    ) -> Result<(), StoreError> {
        let now = stored_time(Timestamp::now());
        let (pid, exit_code, signal, reason) = match &change.state {
            State::Running { pid } => (Some(i64::from(*pid)), None, None, None),
            State::Success => (None, Some(0), None, None),
            State::Failed {
                exit_code,
                signal,
                reason,
            } => (None, *exit_code, *signal, Some(reason.as_str())),
            _ => (None, None, None, None),
        };
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO processes \
                 (id, state, host, pid, exit_code, signal, reason, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET \
                 state = excluded.state, \
                 host = COALESCE(processes.host, excluded.host), \
                 pid = COALESCE(excluded.pid, processes.pid), \
                 exit_code = excluded.exit_code, \
                 signal = excluded.signal, \
                 reason = excluded.reason, \
                 updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(change.state.name())
        .bind(host)
        .bind(pid)
        .bind(exit_code)
        .bind(signal)
        .bind(reason)
        .bind(&now)
        .bind(&now)
        .execute(&mut *transaction)
        .await?;
        sqlx::query("INSERT INTO states (process_id, state, at, details) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(change.state.name())
            .bind(stored_time(change.at))
            .bind(serde_json::to_string(change)?)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Stores (or replaces) the log of the process `id`, which must be known.
    pub async fn put_log(&self, id: &str, log: &[u8]) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO logs (process_id, body, updated_at) \
             SELECT id, ?, ? FROM processes WHERE id = ? \
             ON CONFLICT (process_id) DO UPDATE SET \
                 body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(log)
        .bind(stored_time(Timestamp::now()))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NoProcess(id.to_owned()));
        }
        Ok(())
    }

    /// The log of the process `id`, when it has one.
    pub async fn log(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT body FROM logs WHERE process_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("body")).transpose()?)
    }

    /// Every process, newest first.
    pub async fn list(&self) -> Result<Vec<ProcessSummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM processes ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(summary).collect()
    }

    /// The process `id`, with its spec and states, when it exists.
    pub async fn show(&self, id: &str) -> Result<Option<ProcessDetail>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS}, spec, \
                 EXISTS (SELECT 1 FROM logs WHERE process_id = processes.id) AS has_log \
             FROM processes WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let process = summary(&row)?;
        let spec = row
            .try_get::<Option<String>, _>("spec")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| corrupt(id, "spec", error))?;
        let has_log: bool = row.try_get("has_log")?;
        let states = sqlx::query("SELECT details FROM states WHERE process_id = ? ORDER BY seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                let details: String = row.try_get("details")?;
                serde_json::from_str(&details).map_err(|error| corrupt(id, "state", error))
            })
            .collect::<Result<Vec<StateChange>, StoreError>>()?;
        Ok(Some(ProcessDetail {
            process,
            spec,
            states,
            has_log,
        }))
    }

    /// Closes the database's connections (after the server stopped).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn summary(row: &SqliteRow) -> Result<ProcessSummary, StoreError> {
    let id: String = row.try_get("id")?;
    let time = |column: &'static str| -> Result<Timestamp, StoreError> {
        let text: String = row.try_get(column)?;
        text.parse().map_err(|error| corrupt(&id, column, error))
    };
    let pid = row
        .try_get::<Option<i64>, _>("pid")?
        .map(u32::try_from)
        .transpose()
        .map_err(|error| corrupt(&id, "pid", error))?;
    Ok(ProcessSummary {
        name: row.try_get("name")?,
        state: row.try_get("state")?,
        host: row.try_get("host")?,
        pid,
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
        exit_code: row.try_get("exit_code")?,
        signal: row.try_get("signal")?,
        reason: row.try_get("reason")?,
        id,
    })
}

/// A time as the store writes it: RFC 3339 in UTC with nine fractional digits
/// always, so that the text sorts as the times do (`ORDER BY created_at`);
/// jiff's shortest form would put `01:02:03.5Z` before `01:02:03Z`.
fn stored_time(time: Timestamp) -> String {
    format!("{time:.9}")
}

fn corrupt(id: &str, what: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        what,
        reason: error.to_string(),
    }
}

/// A new process id: `p-`, the time in milliseconds, and a counter that makes
/// the ids of one master distinct within a millisecond.
fn new_process_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "p-{}-{}",
        Timestamp::now().as_millisecond(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_the_times_do() {
        let times: Vec<Timestamp> = [
            "2026-11-28T01:02:03Z",
            "2026-11-28T01:02:03.05Z",
            "2026-11-28T01:02:03.5Z",
            "2026-11-28T01:02:03.51Z",
            "2026-11-28T01:02:04Z",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        let mut stored: Vec<String> = times.iter().rev().map(|time| stored_time(*time)).collect();
        stored.sort();
        let read_back: Vec<Timestamp> = stored.iter().map(|text| text.parse().unwrap()).collect();
        assert_eq!(read_back, times);
    }
}
