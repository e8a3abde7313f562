-- The master's storage: its processes, the states their runners reported, and
-- the logs of failed runs. Times are RFC 3339 text in UTC.

-- One row per process: submitted (with its spec), or first known by a state
-- report (a `dadd run --master` started by hand: no spec).
CREATE TABLE processes (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT,
    spec       TEXT,              -- the spec as JSON
    host       TEXT,              -- where its states come from
    pid        INTEGER,
    state      TEXT NOT NULL,     -- the last state reported (init when submitted)
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    exit_code  INTEGER,
    signal     INTEGER,
    reason     TEXT               -- why it failed
);

CREATE INDEX processes_by_creation ON processes (created_at);

-- Every state a runner reported, in the order the master received them.
CREATE TABLE states (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    process_id TEXT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    state      TEXT NOT NULL,
    at         TEXT NOT NULL,     -- when the runner says it happened
    details    TEXT NOT NULL      -- the state change as the runner sent it (JSON)
);

CREATE INDEX states_by_process ON states (process_id, seq);

-- The log of a failed run, as the runner put it (bounded by the master's limit).
CREATE TABLE logs (
    process_id TEXT PRIMARY KEY NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    body       BLOB NOT NULL,
    updated_at TEXT NOT NULL
);
