-- Roles one worker at a time plays (the placement coordinator), under a lease. The epoch grows
-- each time the role changes hands; what the holder does under the role is fenced on it.
CREATE TABLE leaders (
    role       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
