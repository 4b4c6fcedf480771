-- The orchestrations and activities that workers run, as they registered them: what a server
-- without the workflow code needs to start an instance by its type's name (its version and
-- queue), and what it lists as startable. The last registration of a name wins.
CREATE TABLE catalog (
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    queue         TEXT NOT NULL,
    -- An activity's options (retries, timeouts) as JSON, for jobs enqueued by name; empty for an
    -- orchestration.
    options       TEXT NOT NULL,
    worker_id     TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
