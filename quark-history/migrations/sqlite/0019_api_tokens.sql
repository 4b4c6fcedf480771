-- Bearer tokens of the API (`quark serve`). Only a hash of each token's secret is kept: a token is
-- shown once, when it is created, and cannot be read back from the database.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    -- Calls a second the token may make (a burst of one second's worth); NULL: no limit.
    rate_limit  INTEGER,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
