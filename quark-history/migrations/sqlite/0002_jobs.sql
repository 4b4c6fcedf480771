-- Durable jobs: unique keys, concurrency keys, holds (paused jobs, jobs waiting for a concurrency
-- slot), cancellation, progress, the record of finished jobs, and per-queue controls.

-- A held task is not claimable: its visible_at is parked at the far future and its own time is kept
-- in held_visible_at. `held` says why: 'paused' (by an operator) or 'concurrency' (waiting for a
-- slot of its concurrency key).
ALTER TABLE tasks ADD COLUMN held TEXT;
ALTER TABLE tasks ADD COLUMN held_visible_at INTEGER;
ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasks ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_by_concurrency_key ON tasks (concurrency_key, priority DESC, id)
    WHERE concurrency_key IS NOT NULL;

-- The jobs with a concurrency key that are not held never outnumber their limit (writers are
-- serialized, so the count is exact).
CREATE TRIGGER tasks_concurrency_admit AFTER INSERT ON tasks
    WHEN NEW.concurrency_key IS NOT NULL AND NEW.held IS NULL
BEGIN
    UPDATE tasks SET held = 'concurrency', held_visible_at = visible_at, visible_at = 9223372036854775807
    WHERE id = NEW.id
      AND (SELECT count(*) FROM tasks WHERE concurrency_key = NEW.concurrency_key AND held IS NULL)
          > NEW.concurrency_limit;
END;
CREATE TRIGGER tasks_concurrency_release AFTER DELETE ON tasks
    WHEN OLD.concurrency_key IS NOT NULL AND OLD.held IS NULL
BEGIN
    UPDATE tasks SET held = NULL, visible_at = held_visible_at, held_visible_at = NULL
    WHERE id IN (
        SELECT id FROM tasks WHERE concurrency_key = OLD.concurrency_key AND held = 'concurrency'
        ORDER BY priority DESC, id
        LIMIT max(0, OLD.concurrency_limit
            - (SELECT count(*) FROM tasks WHERE concurrency_key = OLD.concurrency_key AND held IS NULL))
    );
END;

-- A dead job keeps its concurrency key, so that a re-drive waits its turn like any other.
ALTER TABLE dead_tasks ADD COLUMN concurrency_key TEXT;
ALTER TABLE dead_tasks ADD COLUMN concurrency_limit INTEGER;

CREATE TABLE job_keys (
    key            TEXT PRIMARY KEY NOT NULL,
    task_id        INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    until_finished INTEGER NOT NULL
) STRICT;
CREATE INDEX job_keys_by_expiry ON job_keys (expires_at);

CREATE TABLE job_progress (
    task_id    INTEGER PRIMARY KEY NOT NULL,
    percent    REAL,
    message    TEXT,
    checkpoint BLOB,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE finished_jobs (
    id          INTEGER PRIMARY KEY NOT NULL,
    queue       TEXT NOT NULL,
    state       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    payload     BLOB NOT NULL
) STRICT;
CREATE INDEX finished_jobs_by_time ON finished_jobs (finished_at);
CREATE INDEX finished_jobs_by_queue ON finished_jobs (queue, finished_at);

CREATE TABLE queue_settings (
    queue         TEXT PRIMARY KEY NOT NULL,
    paused        INTEGER NOT NULL DEFAULT 0,
    rate_limit    INTEGER,
    rate_interval INTEGER,
    tokens        REAL NOT NULL DEFAULT 0,
    refilled_at   INTEGER NOT NULL DEFAULT 0
) STRICT;
