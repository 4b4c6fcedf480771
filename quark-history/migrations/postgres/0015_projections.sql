-- Projections: one row per (name, version), with the checkpoint in the global order up to which
-- the read model has applied every event. The checkpoint moves in the read model's own
-- transaction, fenced by the lease holder and the checkpoint it started from, so each event is
-- applied once. A new version builds beside the active one and takes over when it has caught up.
CREATE TABLE projections (
    name             TEXT NOT NULL,
    version          BIGINT NOT NULL,
    state            TEXT NOT NULL,
    checkpoint_tx    BIGINT NOT NULL DEFAULT 0,
    checkpoint_pos   BIGINT NOT NULL DEFAULT 0,
    applied          BIGINT NOT NULL DEFAULT 0,
    last_event_at    BIGINT,
    lease_owner      TEXT,
    lease_expires_at BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
