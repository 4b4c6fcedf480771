-- The transactional outbox and the inbox. Times are microseconds since the Unix epoch.

-- Messages to relay. While a message is leased, next_attempt_at is its lease expiry: "due" and
-- "lease lost" are one indexed condition, as in `tasks`. The head of an ordering key (its pending
-- message with the smallest id) is the only one of the key that may be claimed.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination     TEXT NOT NULL,
    ordering_key    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload         BYTEA NOT NULL,
    headers         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX outbox_pending_by_key ON outbox (ordering_key, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE state = 'sent';

-- Ids of messages already handled, for deduplication within a window.
CREATE TABLE inbox (
    message_id  TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL
);
CREATE INDEX inbox_by_age ON inbox (received_at);
