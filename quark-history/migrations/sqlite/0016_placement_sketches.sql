-- Who talks to whom, as each worker's commits saw it: its heaviest edges (postcard-encoded),
-- published with its heartbeats, for the placement coordinator to merge.
CREATE TABLE placement_sketches (
    worker_id    TEXT PRIMARY KEY,
    sketch       BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
