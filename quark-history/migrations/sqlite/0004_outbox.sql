-- The transactional outbox and the inbox. Times are microseconds since the Unix epoch.

-- Messages to relay. While a message is leased, next_attempt_at is its lease expiry: "due" and
-- "lease lost" are one indexed condition, as in `tasks`. The head of an ordering key (its pending
-- message with the smallest id) is the only one of the key that may be claimed.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    destination     TEXT NOT NULL,
    ordering_key    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload         BLOB NOT NULL,
    headers         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
) STRICT;
CREATE INDEX outbox_pending_by_key ON outbox (ordering_key, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE state = 'sent';

-- Ids of messages already handled, for deduplication within a window.
CREATE TABLE inbox (
    message_id  TEXT PRIMARY KEY NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;
CREATE INDEX inbox_by_age ON inbox (received_at);
