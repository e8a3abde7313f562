-- The master's storage on PostgreSQL: the same tables as on SQLite (see
-- ../sqlite), in one step. Times are RFC 3339 text in UTC, nine fractional
-- digits, so that they sort as text.

-- One row per process: submitted (with its spec), or first known by a state
-- report (a `dadd run --master` started by hand: no spec).
CREATE TABLE processes (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT,
    spec           TEXT,              -- the spec as JSON
    host           TEXT,              -- the host it is assigned to, or its states come from
    pid            BIGINT,
    state          TEXT NOT NULL,     -- queued, assigned, dispatched, then the runner's
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    exit_code      BIGINT,
    signal         BIGINT,
    reason         TEXT,              -- why it failed
    wanted_host    TEXT,              -- the host the spec names
    kill_requested BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX processes_by_creation ON processes (created_at);
CREATE INDEX processes_by_host ON processes (host, state);
CREATE INDEX processes_by_state ON processes (state, created_at);

-- Every state a runner reported, in the order the master received them; a
-- state reported twice is kept once.
CREATE TABLE states (
    seq        BIGSERIAL PRIMARY KEY,
    process_id TEXT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    state      TEXT NOT NULL,
    at         TEXT NOT NULL,
    details    TEXT NOT NULL,
    UNIQUE (process_id, state, at)
);

CREATE INDEX states_by_process ON states (process_id, seq);

-- The log of a failed run, as the runner put it (bounded by the master's limit).
CREATE TABLE logs (
    process_id TEXT PRIMARY KEY NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    body       BYTEA NOT NULL,
    updated_at TEXT NOT NULL
);

-- One row per worker, created by its first heartbeat.
CREATE TABLE hosts (
    name           TEXT PRIMARY KEY NOT NULL,
    registered_at  TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    max_processes  BIGINT NOT NULL,
    removed        BIGINT NOT NULL DEFAULT 0, -- 1 once removed, until it heartbeats again
    instance       TEXT                      -- the worker's instance id: one worker per name
);
