-- Workers and scheduling: the hosts that heartbeat, where each process is to
-- run, and kills asked for.

-- One row per worker, created by its first heartbeat.
CREATE TABLE hosts (
    name           TEXT PRIMARY KEY NOT NULL,
    registered_at  TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    max_processes  INTEGER NOT NULL,
    removed        INTEGER NOT NULL DEFAULT 0, -- 1 once removed, until it heartbeats again
    instance       TEXT                      -- the worker's instance id: one worker per name
);

-- The host the spec names, if any: the process runs there and nowhere else.
ALTER TABLE processes ADD COLUMN wanted_host TEXT;
-- 1 once someone asked for the process to be killed.
ALTER TABLE processes ADD COLUMN kill_requested INTEGER NOT NULL DEFAULT 0;

-- A submitted process that no host has taken yet is `queued` now (it was `init`).
UPDATE processes SET state = 'queued' WHERE state = 'init' AND spec IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM states WHERE states.process_id = processes.id);

CREATE INDEX processes_by_host ON processes (host, state);
CREATE INDEX processes_by_state ON processes (state, created_at);

-- A state reported twice (a worker resending after a restart) is kept once.
DELETE FROM states WHERE seq NOT IN (
    SELECT MIN(seq) FROM states GROUP BY process_id, state, at
);
CREATE UNIQUE INDEX states_once ON states (process_id, state, at);
