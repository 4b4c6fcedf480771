-- Cron schedules: each row enqueues a job (its task template: queue, priority, payload) at every
-- tick of its cron expression, read in its time zone. next_at is the next tick to fire; a worker
-- fires it by moving next_at forward and enqueueing the jobs in one transaction, only if next_at
-- still holds the value it read (under READ COMMITTED a racing UPDATE waits for the row lock and
-- then finds next_at moved). Times are microseconds since the Unix epoch.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    missed        TEXT NOT NULL,
    queue         TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    payload       BYTEA NOT NULL,
    next_at       BIGINT NOT NULL,
    last_fired_at BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_at);
