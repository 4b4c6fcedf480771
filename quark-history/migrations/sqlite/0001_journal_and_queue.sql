-- Quark's journal and shared queue on SQLite. Times are microseconds since the Unix epoch.

CREATE TABLE instances (
    id            TEXT PRIMARY KEY NOT NULL,
    instance_type TEXT NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    input_codec   INTEGER NOT NULL,
    input         BLOB NOT NULL,
    output_codec  INTEGER,
    output        BLOB,
    parent_id     TEXT,
    queue         TEXT NOT NULL,
    next_seq      INTEGER NOT NULL,
    history_bytes INTEGER NOT NULL DEFAULT 0,
    last_hash     BLOB NOT NULL,
    affinity      TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX instances_by_created ON instances (created_at DESC, id DESC);
CREATE INDEX instances_by_type ON instances (instance_type, created_at DESC);
CREATE INDEX instances_by_status ON instances (status, created_at DESC);

-- global_position is the rowid: writers are serialized, so it is also the commit order.
CREATE TABLE history (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id     TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    codec           INTEGER NOT NULL,
    payload         BLOB NOT NULL,
    recorded_at     INTEGER NOT NULL,
    hash            BLOB NOT NULL,
    UNIQUE (instance_id, seq)
) STRICT;
CREATE INDEX history_by_time ON history (instance_id, recorded_at);

-- The shared queue. While a task is leased, visible_at is its lease expiry: one condition,
-- visible_at <= now, finds both pending tasks and tasks whose lease was lost.
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    instance_id TEXT,
    priority    INTEGER NOT NULL,
    visible_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    affinity    TEXT,
    rerun       INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    payload     BLOB NOT NULL
) STRICT;
CREATE UNIQUE INDEX tasks_one_orchestration_per_instance ON tasks (instance_id) WHERE kind = 'orchestration';
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, visible_at, id);

CREATE TABLE dead_tasks (
    id          INTEGER PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    instance_id TEXT,
    priority    INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    died_at     INTEGER NOT NULL,
    payload     BLOB NOT NULL
) STRICT;
CREATE INDEX dead_tasks_by_queue ON dead_tasks (queue, died_at);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY NOT NULL,
    queues       TEXT NOT NULL,
    labels       TEXT NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;
