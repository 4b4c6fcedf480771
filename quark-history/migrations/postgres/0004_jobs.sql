-- Durable jobs: unique keys, concurrency keys, holds (paused jobs, jobs waiting for a concurrency
-- slot), cancellation, progress, the record of finished jobs, and per-queue controls.

-- A held task is not claimable: its visible_at is parked at the far future and its own time is kept
-- in held_visible_at. `held` says why: 'paused' (by an operator) or 'concurrency' (waiting for a
-- slot of its concurrency key).
ALTER TABLE tasks
    ADD COLUMN held              TEXT,
    ADD COLUMN held_visible_at   BIGINT,
    ADD COLUMN concurrency_key   TEXT,
    ADD COLUMN concurrency_limit INTEGER,
    ADD COLUMN cancel_requested  BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX tasks_by_concurrency_key ON tasks (concurrency_key, priority DESC, id)
    WHERE concurrency_key IS NOT NULL;

-- The jobs with a concurrency key that are not held (ready, scheduled, running or waiting for a
-- retry) never outnumber their limit. Both sides take a transaction-scoped advisory lock on the key,
-- so concurrent enqueuers and finishers of one key are serialized.
CREATE FUNCTION quark_concurrency_admit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('quark.concurrency:' || NEW.concurrency_key, 0));
    IF NEW.held IS NULL AND (
        SELECT count(*) FROM tasks WHERE concurrency_key = NEW.concurrency_key AND held IS NULL
    ) >= NEW.concurrency_limit THEN
        NEW.held := 'concurrency';
        NEW.held_visible_at := NEW.visible_at;
        NEW.visible_at := 9223372036854775807;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_concurrency_admit BEFORE INSERT ON tasks
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION quark_concurrency_admit();

-- Frees the slots of `key` to the oldest waiting jobs of the highest priority.
CREATE FUNCTION quark_concurrency_promote(key TEXT, lim INTEGER) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('quark.concurrency:' || key, 0));
    UPDATE tasks SET held = NULL, visible_at = held_visible_at, held_visible_at = NULL
    WHERE id IN (
        SELECT id FROM tasks WHERE concurrency_key = key AND held = 'concurrency'
        ORDER BY priority DESC, id
        LIMIT greatest(0, lim - (SELECT count(*) FROM tasks WHERE concurrency_key = key AND held IS NULL))
    );
END $$;
CREATE FUNCTION quark_concurrency_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM quark_concurrency_promote(OLD.concurrency_key, OLD.concurrency_limit);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_concurrency_release AFTER DELETE ON tasks
    FOR EACH ROW WHEN (OLD.concurrency_key IS NOT NULL AND OLD.held IS NULL)
    EXECUTE FUNCTION quark_concurrency_release();

-- A dead job keeps its concurrency key, so that a re-drive waits its turn like any other.
ALTER TABLE dead_tasks ADD COLUMN concurrency_key TEXT, ADD COLUMN concurrency_limit INTEGER;

-- Unique keys: a key is taken by one job until `expires_at` (the window), or while that job is not
-- finished when `until_finished`. Stale rows are taken over on conflict and purged in batches.
CREATE TABLE job_keys (
    key            TEXT PRIMARY KEY,
    task_id        BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    until_finished BOOLEAN NOT NULL
);
CREATE INDEX job_keys_by_expiry ON job_keys (expires_at);

-- Progress and the checkpoint a retried attempt resumes from; one row per job that reported any.
CREATE TABLE job_progress (
    task_id    BIGINT PRIMARY KEY,
    percent    REAL,
    message    TEXT,
    checkpoint BYTEA,
    updated_at BIGINT NOT NULL
);

-- Finished jobs (completed or cancelled), kept for the retention period and purged in batches.
-- Dead jobs are in dead_tasks.
CREATE TABLE finished_jobs (
    id          BIGINT PRIMARY KEY,
    queue       TEXT NOT NULL,
    state       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    payload     BYTEA NOT NULL
);
CREATE INDEX finished_jobs_by_time ON finished_jobs (finished_at);
CREATE INDEX finished_jobs_by_queue ON finished_jobs (queue, finished_at);

-- Per-queue controls: paused queues are not claimed from; a rate limit is a token bucket of
-- `rate_limit` tokens refilled over `rate_interval` microseconds, shared by every worker.
CREATE TABLE queue_settings (
    queue         TEXT PRIMARY KEY,
    paused        BOOLEAN NOT NULL DEFAULT false,
    rate_limit    INTEGER,
    rate_interval BIGINT,
    tokens        DOUBLE PRECISION NOT NULL DEFAULT 0,
    refilled_at   BIGINT NOT NULL DEFAULT 0
);
