-- Retention removes a stream's oldest events (after a snapshot covers them). The chain then starts
-- at `first_seq`, linked to `base_hash`, the hash of the last event removed (NULL: the genesis),
-- so what is left still verifies, and a row deleted behind retention's back is still caught.
ALTER TABLE instances ADD COLUMN first_seq BIGINT NOT NULL DEFAULT 1;
ALTER TABLE instances ADD COLUMN base_hash BYTEA;
