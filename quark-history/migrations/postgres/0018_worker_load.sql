-- What a worker reports with each heartbeat: its memory pressure level (0 normal, 1 warning,
-- 2 critical, 3 reject), its resident memory and limit, and the warm state it keeps. A claim
-- treats the affinity of a worker under pressure (level 1 and up) as handed away: another worker
-- takes the task at once instead of waiting for the affinity delay.
ALTER TABLE workers ADD COLUMN pressure BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN rss_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN memory_limit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN cached_instances BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN cached_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN live_entities BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN entity_bytes BIGINT NOT NULL DEFAULT 0;
