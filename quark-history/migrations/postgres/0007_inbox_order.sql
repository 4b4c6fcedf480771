-- Ordered delivery in the inbox (`SequencedInbox`). Times are microseconds since the Unix epoch.

-- One row per key: the sequence number it applies next. Every receive for a key locks this row
-- first (on SQLite the single writer already serializes), so a key is handled by one consumer at a
-- time.
CREATE TABLE inbox_keys (
    key        TEXT PRIMARY KEY,
    next_seq   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Messages that arrived ahead of a gap, stored until the gap fills or is declared lost.
CREATE TABLE inbox_held (
    key         TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    message_id  TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (key, seq)
);
CREATE INDEX inbox_held_by_age ON inbox_held (received_at);

-- Gaps declared lost after the gap timeout: sequence numbers first_seq..=last_seq of key were
-- skipped. late_arrivals counts deliveries of those numbers that came after the declaration.
CREATE TABLE inbox_lost (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key           TEXT NOT NULL,
    first_seq     BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL,
    declared_at   BIGINT NOT NULL,
    late_arrivals BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX inbox_lost_by_key ON inbox_lost (key, first_seq);
