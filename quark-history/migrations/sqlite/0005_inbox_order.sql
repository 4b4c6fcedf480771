-- Ordered delivery in the inbox (`SequencedInbox`). Times are microseconds since the Unix epoch.

-- One row per key: the sequence number it applies next. Every receive for a key locks this row
-- first (on SQLite the single writer already serializes), so a key is handled by one consumer at a
-- time.
CREATE TABLE inbox_keys (
    key        TEXT PRIMARY KEY NOT NULL,
    next_seq   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Messages that arrived ahead of a gap, stored until the gap fills or is declared lost.
CREATE TABLE inbox_held (
    key         TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
) STRICT;
CREATE INDEX inbox_held_by_age ON inbox_held (received_at);

-- Gaps declared lost after the gap timeout: sequence numbers first_seq..=last_seq of key were
-- skipped. late_arrivals counts deliveries of those numbers that came after the declaration.
CREATE TABLE inbox_lost (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT NOT NULL,
    first_seq     INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    declared_at   INTEGER NOT NULL,
    late_arrivals INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX inbox_lost_by_key ON inbox_lost (key, first_seq);
