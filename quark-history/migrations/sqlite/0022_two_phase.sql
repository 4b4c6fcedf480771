-- Two-phase commit across databases: the coordinator's log. A transaction prepared in other
-- PostgreSQL databases (its participants) commits there if and only if a 'commit' decision for its
-- global id stands here; whoever records a decision first wins (the primary key), so a coordinator
-- that commits and a recovery that gives up on the same transaction cannot both succeed.
CREATE TABLE tx_decisions (
    gid          TEXT PRIMARY KEY,
    decision     TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
    -- The participants' names, comma-separated, in the order they were prepared.
    participants TEXT NOT NULL,
    decided_at   INTEGER NOT NULL
);
CREATE INDEX tx_decisions_by_time ON tx_decisions (decided_at);
-- This log's id, made once: every global id it decides starts with it, so that two deployments
-- sharing a participant database never take each other's prepared transactions for their own.
CREATE TABLE tx_coordinator (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id  TEXT NOT NULL
);
