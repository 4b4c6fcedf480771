-- Entity streams are rows of `instances` (status 'stream') whose history holds their events, so
-- they share the global order, the hash chain and checkpoints with workflows. A snapshot is an
-- entity's state at a version of its stream, in the schema its code declared when it was taken:
-- a reader with another schema ignores it and rebuilds from the events.
CREATE TABLE snapshots (
    stream_id    TEXT NOT NULL,
    version      BIGINT NOT NULL,
    state_schema INTEGER NOT NULL,
    codec        SMALLINT NOT NULL,
    state        BYTEA NOT NULL,
    taken_at     BIGINT NOT NULL,
    PRIMARY KEY (stream_id, version)
);
