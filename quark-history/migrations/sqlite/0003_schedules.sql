-- Cron schedules: each row enqueues a job (its task template: queue, priority, payload) at every
-- tick of its cron expression, read in its time zone. next_at is the next tick to fire; a worker
-- fires it by moving next_at forward and enqueueing the jobs in one transaction, only if next_at
-- still holds the value it read. Times are microseconds since the Unix epoch.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    missed        TEXT NOT NULL,
    queue         TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    payload       BLOB NOT NULL,
    next_at       INTEGER NOT NULL,
    last_fired_at INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX schedules_due ON schedules (next_at);
