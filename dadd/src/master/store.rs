//! The master's storage: processes, their states and logs, and the hosts, in
//! SQLite or PostgreSQL.
//!
//! SQLite (`sqlite:PATH`, the default) is one file, created and migrated when the
//! master starts, in WAL mode with `synchronous = FULL`: a state the master
//! answered 2xx to is on disk, and survives the master being killed, or the
//! machine losing power, a moment later. One master uses it at a time.
//!
//! PostgreSQL (`postgres://...`) lets several masters share one database: the
//! scheduling locks the hosts' rows while it assigns (so two masters assign one
//! after the other) and takes queued processes with `FOR UPDATE SKIP LOCKED`;
//! offering a process to its host, and a kill, lock the process's row.
//!
//! The migrations of each (in `dadd/migrations/`) are embedded in the binary.
//! Every change is one transaction; the SQL is the same for both but for the row
//! locks, which SQLite does without (its writers take turns).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow, AnyTransactionManager};
use sqlx::{Connection, TransactionManager};

use crate::api::{
    Assignment, Heartbeat, HeartbeatReply, HostSummary, LOST, ProcessDetail, ProcessSummary, State,
    StateChange,
};
use crate::spec::Spec;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The states of a process that hold a place on its host: it was given one and
/// has not ended.
const ACTIVE: &str = "('assigned', 'dispatched', 'init', 'setup', 'running')";

/// How many queued processes one round of scheduling looks at.
const SCHEDULE_BATCH: i64 = 1000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL names a database this master cannot use.
    #[error(
        "database {0:?}: use sqlite:PATH (one master) or postgres://USER@HOST/DATABASE (several)"
    )]
    Unsupported(String),
    /// The database cannot be opened or created.
    #[error("opening the database {url}: {source}")]
    Open {
        /// The URL (without its password).
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
    /// No host has this name.
    #[error("no host {0}")]
    NoHost(String),
    /// Another worker, up, has the name a heartbeat came under.
    #[error(
        "host {host} is up as another worker (its last heartbeat {last}): two workers \
         with one name would start the same processes; give this one another name \
         (--name, or name in its config)"
    )]
    HostTaken {
        /// The name.
        host: String,
        /// When the other worker's last heartbeat came.
        last: String,
    },
    /// The process cannot be killed: it ended, or no worker of this master runs
    /// it.
    #[error("process {id}: {reason}")]
    CannotKill {
        /// The process.
        id: String,
        /// Why.
        reason: String,
    },
}

/// Which database the store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The master's processes, states, logs and hosts.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: this process's writers take turns, so that a transaction that
    /// reads then writes never meets another's lock half-way (SQLite would
    /// answer "database is locked" at once, not wait).
    writers: Arc<tokio::sync::Mutex<()>>,
    host_timeout: Duration,
}

/// The columns [`summary`] reads.
const SUMMARY_COLUMNS: &str = "id, name, state, host, pid, created_at, updated_at, exit_code, \
     signal, reason, CASE WHEN spec IS NULL THEN 0 ELSE 1 END AS submitted";

impl Store {
    /// Opens the database at `url` (`sqlite:PATH`, created when missing, or
    /// `postgres://...`), migrating it as needed. A host whose last heartbeat is
    /// older than `host_timeout` is down.
    pub async fn open(url: &str, host_timeout: Duration) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url) = if url.starts_with("sqlite:") {
            // Created when missing, unless the URL says otherwise.
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Unsupported(url.to_owned()));
        };
        let shown = without_password(url);
        let mut options = AnyPoolOptions::new().max_connections(8);
        if backend == Backend::Sqlite {
            options = options
                .max_connections(4)
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(&mut *connection, SQLITE_SETTINGS)
                            .await
                            .map(drop)
                    })
                })
                .after_release(|connection, _| {
                    Box::pin(async move {
                        // A future dropped while it wrote (the handler of a request
                        // whose client hung up) can hand its connection back inside
                        // a transaction: sqlx's SQLite worker runs a `BEGIN
                        // IMMEDIATE` already sent even when no one waits for it, and
                        // nothing rolls that back. The connection would keep the
                        // database's write lock until it is next used, every other
                        // writer failing with "database is locked" meanwhile. A
                        // rollback, queued after whatever that future sent, ends it
                        // (and does nothing outside a transaction); a connection
                        // still in one after it is closed.
                        AnyTransactionManager::rollback(connection).await?;
                        Ok(!connection.is_in_transaction())
                    })
                });
        }
        let pool = options
            .connect(&connect_url)
            .await
            .map_err(|source| StoreError::Open {
                url: shown.clone(),
                source,
            })?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        tracing::info!(url = %shown, "database ready");
        Ok(Store {
            pool,
            backend,
            writers: Arc::new(tokio::sync::Mutex::new(())),
            host_timeout,
        })
    }

    /// Waits for this process's turn to write (SQLite only).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writers.lock().await),
            Backend::Postgres => None,
        }
    }

    /// A transaction that writes: on SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so that it waits for another process's writer
    /// instead of failing half-way when it first writes.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// `clause` on PostgreSQL, nothing on SQLite (which has no row locks).
    fn lock(&self, clause: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => clause,
        }
    }

    /// The oldest heartbeat of a host that is up.
    fn live_since(&self) -> String {
        let timeout =
            jiff::SignedDuration::try_from(self.host_timeout).unwrap_or(jiff::SignedDuration::MAX);
        stored_time(
            Timestamp::now()
                .checked_sub(timeout)
                .unwrap_or(Timestamp::MIN),
        )
    }

    /// Stores a submitted spec as a new process, queued, and schedules it; its
    /// id. A scheduling that fails is logged, not returned: the process is
    /// stored, and the master's timer schedules it.
    pub async fn submit(&self, spec: &Spec) -> Result<String, StoreError> {
        let spec_json = serde_json::to_string(spec)?;
        let now = stored_time(Timestamp::now());
        let id = loop {
            let id = new_process_id();
            // Two masters (or a restart within the same millisecond) could
            // make the same id: the insert then does nothing, and the next try
            // has a new one.
            let _turn = self.write_turn().await;
            let inserted = sqlx::query(
                "INSERT INTO processes \
                     (id, name, spec, state, created_at, updated_at, wanted_host) \
                 VALUES ($1, $2, $3, 'queued', $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&id)
            .bind(spec.name.as_deref())
            .bind(&spec_json)
            .bind(&now)
            .bind(&now)
            .bind(spec.host.as_deref())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                break id;
            }
        };
        // Stored is submitted: a scheduling that fails now (the timer schedules
        // again) must not make the client think it was not, and submit twice.
        if let Err(error) = self.schedule().await {
            tracing::warn!(%id, %error, "scheduling after a submit failed; the next round will");
        }
        Ok(id)
    }

    /// Gives queued processes to live hosts: each to the host its spec names,
    /// or else to the live host with the fewest processes among those with room
    /// (ties by name). Processes assigned to a host that is down, or was removed,
    /// and not yet offered to it, are queued again first. What finds no host
    /// stays queued for the next round (the master runs one at every submit and
    /// heartbeat, and on a timer).
    pub async fn schedule(&self) -> Result<(), StoreError> {
        let live_since = self.live_since();
        let now = stored_time(Timestamp::now());
        let _turn = self.write_turn().await;
        let mut transaction = self.begin().await?;
        // Locking the live hosts makes two masters schedule one after the other,
        // each seeing what the other assigned.
        let hosts = sqlx::query(&format!(
            "SELECT name, max_processes FROM hosts \
             WHERE last_heartbeat >= $1 AND removed = 0 ORDER BY name{}",
            self.lock(" FOR UPDATE")
        ))
        .bind(&live_since)
        .fetch_all(&mut *transaction)
        .await?;
        let requeued = sqlx::query(
            "UPDATE processes SET state = 'queued', host = NULL, updated_at = $1 \
             WHERE state = 'assigned' \
             AND (host IS NULL OR host NOT IN \
                 (SELECT name FROM hosts WHERE last_heartbeat >= $2 AND removed = 0))",
        )
        .bind(&now)
        .bind(&live_since)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if requeued > 0 {
            tracing::warn!(
                processes = requeued,
                "processes assigned to hosts that are down are queued again"
            );
        }
        let mut room: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for host in &hosts {
            room.insert(host.try_get("name")?, (0, host.try_get("max_processes")?));
        }
        let counts = sqlx::query(&format!(
            "SELECT host, COUNT(*) AS active FROM processes \
             WHERE state IN {ACTIVE} AND host IS NOT NULL GROUP BY host"
        ))
        .fetch_all(&mut *transaction)
        .await?;
        for row in &counts {
            let host: String = row.try_get("host")?;
            if let Some((active, _)) = room.get_mut(&host) {
                *active = row.try_get("active")?;
            }
        }
        // Only what some host can take now: processes that wait for a host that
        // is down, or full, never hold back those behind them.
        let open: Vec<&String> = room
            .iter()
            .filter(|(_, (active, max))| active < max)
            .map(|(name, _)| name)
            .collect();
        if open.is_empty() {
            transaction.commit().await?;
            return Ok(());
        }
        let wanted = (0..open.len())
            .map(|n| format!("${}", n + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let query = format!(
            "SELECT id, wanted_host FROM processes WHERE state = 'queued' \
             AND (wanted_host IS NULL OR wanted_host IN ({wanted})) \
             ORDER BY created_at, id LIMIT $1{}",
            self.lock(" FOR UPDATE SKIP LOCKED")
        );
        let mut queued = sqlx::query(&query).bind(SCHEDULE_BATCH);
        for name in &open {
            queued = queued.bind(name.as_str());
        }
        let queued = queued.fetch_all(&mut *transaction).await?;
        for row in &queued {
            let id: String = row.try_get("id")?;
            let wanted: Option<String> = row.try_get("wanted_host")?;
            let chosen = match &wanted {
                Some(name) => room
                    .get(name)
                    .filter(|(active, max)| active < max)
                    .map(|_| name.clone()),
                None => room
                    .iter()
                    .filter(|(_, (active, max))| active < max)
                    .min_by_key(|(_, (active, _))| *active)
                    .map(|(name, _)| name.clone()),
            };
            let Some(host) = chosen else { continue };
            let assigned = sqlx::query(
                "UPDATE processes SET state = 'assigned', host = $1, updated_at = $2 \
                 WHERE id = $3 AND state = 'queued'",
            )
            .bind(&host)
            .bind(&now)
            .bind(&id)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if assigned == 1 {
                if let Some((active, _)) = room.get_mut(&host) {
                    *active += 1;
                }
                tracing::info!(%id, %host, "process assigned");
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    /// A worker's heartbeat: registers the host (or notes it is alive), gives it
    /// queued work, and answers what it is to start and to kill (see
    /// [`crate::api`] for the protocol).
    pub async fn heartbeat(
        &self,
        host: &str,
        heartbeat: &Heartbeat,
        heartbeat_every: Duration,
        max_log_bytes: u64,
    ) -> Result<HeartbeatReply, StoreError> {
        let now = stored_time(Timestamp::now());
        let live_since = self.live_since();
        {
            let _turn = self.write_turn().await;
            let mut transaction = self.begin().await?;
            let existing = sqlx::query(&format!(
                "SELECT instance, last_heartbeat, removed FROM hosts WHERE name = $1{}",
                self.lock(" FOR UPDATE")
            ))
            .bind(host)
            .fetch_optional(&mut *transaction)
            .await?;
            if let Some(row) = &existing {
                let instance: Option<String> = row.try_get("instance")?;
                let last: String = row.try_get("last_heartbeat")?;
                let up = last >= live_since && row.try_get::<i64, _>("removed")? == 0;
                if up
                    && let (Some(theirs), Some(ours)) = (&instance, &heartbeat.instance)
                    && theirs != ours
                {
                    return Err(StoreError::HostTaken {
                        host: host.to_owned(),
                        last,
                    });
                }
            }
            sqlx::query(
                "INSERT INTO hosts (name, registered_at, last_heartbeat, max_processes, instance) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET \
                     last_heartbeat = excluded.last_heartbeat, \
                     max_processes = excluded.max_processes, \
                     instance = excluded.instance, \
                     removed = 0",
            )
            .bind(host)
            .bind(&now)
            .bind(&now)
            .bind(i64::from(heartbeat.max_processes))
            .bind(heartbeat.instance.as_deref())
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await?;
            if existing.is_none() {
                tracing::info!(%host, max_processes = heartbeat.max_processes, "host registered");
            }
        }
        self.schedule().await?;
        let known: HashSet<&str> = heartbeat.known.iter().map(String::as_str).collect();
        let _turn = self.write_turn().await;
        let mut transaction = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT id, spec, state, kill_requested FROM processes \
             WHERE host = $1 AND spec IS NOT NULL \
             AND state IN {ACTIVE} \
             ORDER BY created_at, id{}",
            self.lock(" FOR UPDATE")
        ))
        .bind(host)
        .fetch_all(&mut *transaction)
        .await?;
        let mut reply = HeartbeatReply {
            start: Vec::new(),
            kill: Vec::new(),
            heartbeat_every_ms: u64::try_from(heartbeat_every.as_millis()).unwrap_or(u64::MAX),
            max_log_bytes: Some(max_log_bytes),
        };
        for row in &rows {
            let id: String = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let kill_requested = row.try_get::<i64, _>("kill_requested")? != 0;
            let is_known = known.contains(id.as_str());
            let started = matches!(state.as_str(), "init" | "setup" | "running");
            if started && !is_known {
                // The worker records a process before it starts it, and keeps the
                // record until the master has its last state: a live worker that
                // does not list a started process has lost its records.
                fail(
                    &mut transaction,
                    &id,
                    format!(
                        "its host {host} no longer knows it (the worker's state directory \
                         was lost?): whether it still runs there is unknown"
                    ),
                    &now,
                )
                .await?;
                continue;
            }
            if kill_requested {
                if is_known {
                    reply.kill.push(id);
                } else if matches!(state.as_str(), "assigned" | "dispatched") {
                    // Never received: it ends here.
                    fail(
                        &mut transaction,
                        &id,
                        "killed before it started".to_owned(),
                        &now,
                    )
                    .await?;
                }
                continue;
            }
            if is_known || !matches!(state.as_str(), "assigned" | "dispatched") {
                continue;
            }
            let spec: String = row.try_get("spec")?;
            let spec: Value =
                serde_json::from_str(&spec).map_err(|error| corrupt(&id, "spec", error))?;
            if state == "assigned" {
                sqlx::query(
                    "UPDATE processes SET state = 'dispatched', updated_at = $1 \
                     WHERE id = $2 AND state = 'assigned'",
                )
                .bind(&now)
                .bind(&id)
                .execute(&mut *transaction)
                .await?;
            }
            reply.start.push(Assignment { id, spec });
        }
        transaction.commit().await?;
        Ok(reply)
    }

    /// Records a state a runner reported from `host`, creating the process when
    /// the master does not know it yet (a `dadd run --master` started by hand).
    ///
    /// A state the process already has (same state, same time: a worker sending
    /// again what it is not sure arrived) changes nothing. One that comes after
    /// a later one (a `setup` after `running`) goes into the history, and leaves
    /// the current state alone.
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
        let name = change.state.name();
        let _turn = self.write_turn().await;
        let mut transaction = self.begin().await?;
        let created = sqlx::query(
            "INSERT INTO processes \
                 (id, state, host, pid, exit_code, signal, reason, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(host)
        .bind(pid)
        .bind(exit_code.map(i64::from))
        .bind(signal.map(i64::from))
        .bind(reason)
        .bind(&now)
        .bind(&now)
        .execute(&mut *transaction)
        .await?
        .rows_affected()
            == 1;
        // The process's row first: two reports of one process (a worker sending
        // again while the first is in flight) then take turns, where inserting
        // the state first would have each hold the row's key lock and wait for
        // the other's.
        let current: String = sqlx::query(&format!(
            "SELECT state FROM processes WHERE id = $1{}",
            self.lock(" FOR UPDATE")
        ))
        .bind(id)
        .fetch_one(&mut *transaction)
        .await?
        .try_get("state")?;
        let new = sqlx::query(
            "INSERT INTO states (process_id, state, at, details) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (process_id, state, at) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(stored_time(change.at))
        .bind(serde_json::to_string(change)?)
        .execute(&mut *transaction)
        .await?
        .rows_affected()
            == 1;
        if new && !created {
            if rank(name) > rank(&current) {
                sqlx::query(
                    "UPDATE processes SET \
                         state = $1, \
                         host = COALESCE(host, $2), \
                         pid = COALESCE($3, pid), \
                         exit_code = $4, \
                         signal = $5, \
                         reason = $6, \
                         updated_at = $7 \
                     WHERE id = $8",
                )
                .bind(name)
                .bind(host)
                .bind(pid)
                .bind(exit_code.map(i64::from))
                .bind(signal.map(i64::from))
                .bind(reason)
                .bind(&now)
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            } else {
                tracing::info!(%id, state = name, %current, "a state reported after a later one is kept in the history only");
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Asks for the process `id` to be killed: one that has not reached its
    /// host yet fails at once; one on a host is killed by its worker at its next
    /// heartbeat (and fails with the signal); one on a host that is down stays
    /// `lost`, and is killed there if the host comes back. The process as it is
    /// now.
    pub async fn kill(&self, id: &str) -> Result<ProcessSummary, StoreError> {
        let now = stored_time(Timestamp::now());
        let live_since = self.live_since();
        {
            let _turn = self.write_turn().await;
            let mut transaction = self.begin().await?;
            let query = format!(
                "SELECT state, host, CASE WHEN spec IS NULL THEN 0 ELSE 1 END AS submitted, \
                     (SELECT COUNT(*) FROM hosts WHERE name = processes.host \
                         AND last_heartbeat >= $1 AND removed = 0) AS host_up \
                 FROM processes WHERE id = $2{}",
                self.lock(" FOR UPDATE")
            );
            let Some(row) = sqlx::query(&query)
                .bind(&live_since)
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await?
            else {
                return Err(StoreError::NoProcess(id.to_owned()));
            };
            let state: String = row.try_get("state")?;
            let host: Option<String> = row.try_get("host")?;
            let host_up = row.try_get::<i64, _>("host_up")? > 0;
            let cannot = |reason: String| StoreError::CannotKill {
                id: id.to_owned(),
                reason,
            };
            if matches!(state.as_str(), "success" | "failed") {
                return Err(cannot(format!("it has already ended ({state})")));
            }
            let submitted = row.try_get::<i64, _>("submitted")? != 0;
            if !submitted {
                return Err(cannot(format!(
                    "it was started by hand (dadd run --master) on {}: only the host it runs on can kill it",
                    host.as_deref().unwrap_or("an unknown host")
                )));
            }
            sqlx::query("UPDATE processes SET kill_requested = 1, updated_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            match state.as_str() {
                "queued" | "assigned" => {
                    fail(
                        &mut transaction,
                        id,
                        "killed before it started".to_owned(),
                        &now,
                    )
                    .await?;
                }
                // Lost: it may run there still; it stays as it is until its host
                // reports again and its worker kills it.
                _ if !host_up => tracing::info!(%id, "kill requested; its host is down"),
                _ => tracing::info!(%id, "kill requested"),
            }
            transaction.commit().await?;
        }
        match self.show(id).await? {
            Some(detail) => Ok(detail.process),
            None => Err(StoreError::NoProcess(id.to_owned())),
        }
    }

    /// Forgets the host `name`; its processes not yet offered to it go to other
    /// hosts. A worker that heartbeats again registers again.
    pub async fn remove_host(&self, name: &str) -> Result<(), StoreError> {
        {
            let _turn = self.write_turn().await;
            let removed =
                sqlx::query("UPDATE hosts SET removed = 1 WHERE name = $1 AND removed = 0")
                    .bind(name)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            if removed == 0 {
                return Err(StoreError::NoHost(name.to_owned()));
            }
        }
        tracing::info!(host = %name, "host removed");
        self.schedule().await
    }

    /// Every host, by name, with its processes that have not ended.
    pub async fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        let live_since = self.live_since();
        let rows = sqlx::query(
            "SELECT name, registered_at, last_heartbeat, max_processes FROM hosts \
             WHERE removed = 0 ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut processes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in sqlx::query(&format!(
            "SELECT id, host FROM processes WHERE state IN {ACTIVE} AND host IS NOT NULL \
             ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        {
            processes
                .entry(row.try_get("host")?)
                .or_default()
                .push(row.try_get("id")?);
        }
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                let time = |column: &'static str| -> Result<Timestamp, StoreError> {
                    let text: String = row.try_get(column)?;
                    text.parse().map_err(|error| StoreError::Corrupt {
                        id: format!("(host {name})"),
                        what: column,
                        reason: format!("{error}"),
                    })
                };
                let last: String = row.try_get("last_heartbeat")?;
                Ok(HostSummary {
                    up: last >= live_since,
                    registered_at: time("registered_at")?,
                    last_heartbeat: time("last_heartbeat")?,
                    max_processes: u32::try_from(row.try_get::<i64, _>("max_processes")?)
                        .unwrap_or(u32::MAX),
                    processes: processes.remove(&name).unwrap_or_default(),
                    name,
                })
            })
            .collect()
    }

    /// The workers, and whether each is up (removed ones are down).
    async fn workers(&self) -> Result<Workers, StoreError> {
        let live_since = self.live_since();
        let mut workers = Workers::new();
        for row in sqlx::query("SELECT name, last_heartbeat, removed FROM hosts")
            .fetch_all(&self.pool)
            .await?
        {
            let last: String = row.try_get("last_heartbeat")?;
            let removed = row.try_get::<i64, _>("removed")? != 0;
            workers.insert(row.try_get("name")?, !removed && last >= live_since);
        }
        Ok(workers)
    }

    /// Stores (or replaces) the log of the process `id`, which must be known.
    pub async fn put_log(&self, id: &str, log: &[u8]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let result = sqlx::query(
            "INSERT INTO logs (process_id, body, updated_at) \
             SELECT id, $1, $2 FROM processes WHERE id = $3 \
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
        let row = sqlx::query("SELECT body FROM logs WHERE process_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("body")).transpose()?)
    }

    /// Every process, newest first.
    pub async fn list(&self) -> Result<Vec<ProcessSummary>, StoreError> {
        let workers = self.workers().await?;
        let rows = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM processes ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| summary(row, &workers)).collect()
    }

    /// The process `id`, with its spec and states, when it exists.
    pub async fn show(&self, id: &str) -> Result<Option<ProcessDetail>, StoreError> {
        let workers = self.workers().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS}, spec, \
                 (SELECT COUNT(*) FROM logs WHERE process_id = processes.id) AS logs \
             FROM processes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let process = summary(&row, &workers)?;
        let spec = row
            .try_get::<Option<String>, _>("spec")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|error| corrupt(id, "spec", error))?;
        let has_log = row.try_get::<i64, _>("logs")? > 0;
        let states = sqlx::query("SELECT details FROM states WHERE process_id = $1 ORDER BY seq")
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

/// SQLite's settings, on each new connection: WAL, synced at each commit,
/// foreign keys checked, and a wait (not an error) when another process
/// writes.
const SQLITE_SETTINGS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// Ends the process `id` as failed, for `reason`, with the state in its
/// history.
async fn fail(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    reason: String,
    now: &str,
) -> Result<(), StoreError> {
    let change = StateChange::now(State::Failed {
        exit_code: None,
        signal: None,
        reason: reason.clone(),
    });
    sqlx::query(
        "UPDATE processes SET state = 'failed', reason = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(&reason)
    .bind(now)
    .bind(id)
    .execute(&mut **transaction)
    .await?;
    sqlx::query(
        "INSERT INTO states (process_id, state, at, details) VALUES ($1, 'failed', $2, $3) \
         ON CONFLICT (process_id, state, at) DO NOTHING",
    )
    .bind(id)
    .bind(stored_time(change.at))
    .bind(serde_json::to_string(&change)?)
    .execute(&mut **transaction)
    .await?;
    tracing::info!(%id, %reason, "process failed");
    Ok(())
}

/// Where a state stands in a run: a report never moves a process back.
fn rank(state: &str) -> u8 {
    match state {
        "queued" => 0,
        "assigned" => 1,
        "dispatched" => 2,
        "init" => 3,
        "setup" => 4,
        "running" => 5,
        "success" | "failed" => 6,
        _ => 0,
    }
}

/// The URL as it can be logged: without a password.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails on URLs that cannot have one.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Each worker the master knows (by its heartbeats), and whether it is up.
type Workers = std::collections::HashMap<String, bool>;

fn summary(row: &AnyRow, workers: &Workers) -> Result<ProcessSummary, StoreError> {
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
    let host: Option<String> = row.try_get("host")?;
    let mut state: String = row.try_get("state")?;
    // Offered to, or started on, a worker that is down (or was removed): it
    // may be running there. (A `dadd run --master` started by hand reports
    // from an address, not a worker: its host's life is not known.)
    let worker_down = host
        .as_ref()
        .and_then(|host| workers.get(host))
        .is_some_and(|up| !up);
    if worker_down && matches!(state.as_str(), "dispatched" | "init" | "setup" | "running") {
        state = LOST.to_owned();
    }
    Ok(ProcessSummary {
        name: row.try_get("name")?,
        state,
        host,
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

    /// What a handler dropped right after its `BEGIN IMMEDIATE` was acknowledged
    /// leaves, made on purpose: a connection back in the pool inside a transaction,
    /// with no `Transaction` to end it. The next writer must not wait for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_handed_back_inside_a_transaction_does_not_keep_others_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
        let store = Store::open(&url, Duration::from_secs(30)).await.unwrap();
        let mut connection = store.pool.acquire().await.unwrap();
        AnyTransactionManager::begin(&mut connection, Some("BEGIN IMMEDIATE".into()))
            .await
            .unwrap();
        drop(connection);
        let scheduled = tokio::time::timeout(Duration::from_secs(3), store.schedule()).await;
        assert!(
            matches!(scheduled, Ok(Ok(()))),
            "the next write: {scheduled:?}"
        );
        store.close().await;
    }

    /// A request's handler is dropped when its client hangs up, at any await. The
    /// writes it had begun must not keep the database locked: the next writer
    /// goes on at once (SQLite's busy timeout would make it wait 10 s, then fail
    /// with "database is locked").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_cut_short_at_any_point_does_not_keep_others_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
        let store = Store::open(&url, Duration::from_secs(30)).await.unwrap();
        let spec = Spec::from_value(serde_json::json!({"cmd": ["true"]})).unwrap();
        // From before the first await to after the last.
        for cut in 0..400u64 {
            let _ = tokio::time::timeout(Duration::from_micros(cut * 5), store.submit(&spec)).await;
            match tokio::time::timeout(Duration::from_secs(3), store.schedule()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("cut after {} us: {error}", cut * 5),
                Err(_) => panic!("cut after {} us: the next write waited 3 s", cut * 5),
            }
        }
        store.close().await;
    }
}
