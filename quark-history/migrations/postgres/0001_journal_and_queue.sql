-- Quark's journal and shared queue on PostgreSQL. Times are microseconds since the Unix epoch.

CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    instance_type TEXT NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    input_codec   SMALLINT NOT NULL,
    input         BYTEA NOT NULL,
    output_codec  SMALLINT,
    output        BYTEA,
    parent_id     TEXT,
    queue         TEXT NOT NULL,
    next_seq      BIGINT NOT NULL,
    history_bytes BIGINT NOT NULL DEFAULT 0,
    last_hash     BYTEA NOT NULL,
    affinity      TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX instances_by_created ON instances (created_at DESC, id DESC);
CREATE INDEX instances_by_type ON instances (instance_type, created_at DESC);
CREATE INDEX instances_by_status ON instances (status, created_at DESC);

-- tx_id is the writing transaction: the global order is (tx_id, global_position), read only below
-- the oldest running transaction, so a reader never skips an event that commits later.
CREATE TABLE history (
    instance_id     TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    schema_version  SMALLINT NOT NULL,
    codec           SMALLINT NOT NULL,
    payload         BYTEA NOT NULL,
    recorded_at     BIGINT NOT NULL,
    hash            BYTEA NOT NULL,
    global_position BIGINT GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX history_global ON history (tx_id, global_position);
CREATE INDEX history_by_time ON history (instance_id, recorded_at);

-- The shared queue. While a task is leased, visible_at is its lease expiry: one condition,
-- visible_at <= now, finds both pending tasks and tasks whose lease was lost. The table is kept
-- narrow and finished rows are deleted, so it stays small and vacuum keeps up.
CREATE TABLE tasks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    instance_id TEXT,
    priority    INTEGER NOT NULL,
    visible_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    affinity    TEXT,
    rerun       BOOLEAN NOT NULL DEFAULT false,
    last_error  TEXT,
    payload     BYTEA NOT NULL
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX tasks_one_orchestration_per_instance ON tasks (instance_id) WHERE kind = 'orchestration';
CREATE INDEX tasks_claim ON tasks (queue, priority DESC, visible_at, id);

CREATE TABLE dead_tasks (
    id          BIGINT PRIMARY KEY,
    kind        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    instance_id TEXT,
    priority    INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    died_at     BIGINT NOT NULL,
    payload     BYTEA NOT NULL
);
CREATE INDEX dead_tasks_by_queue ON dead_tasks (queue, died_at);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    queues       TEXT[] NOT NULL,
    labels       TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
