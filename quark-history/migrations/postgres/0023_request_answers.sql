-- Answers to queries and updates of running orchestrations, until their callers collect them.
-- A request itself travels as a task (kind 'request'); an accepted update is in the history.
CREATE TABLE request_answers (
    id          TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    answer      BYTEA NOT NULL,
    answered_at BIGINT NOT NULL
);
CREATE INDEX request_answers_by_time ON request_answers (answered_at);
