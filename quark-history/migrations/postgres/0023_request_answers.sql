-- Answers to queries and updates of running orchestrations, until their callers collect them.
-- A request itself travels as a task (kind 'request'); an accepted update is in the history.
CREATE TABLE request_answers (
    instance_id TEXT NOT NULL,
    -- The request's id, unique per instance (an update's id is the caller's).
    id          TEXT NOT NULL,
    answer      BYTEA NOT NULL,
    answered_at BIGINT NOT NULL,
    PRIMARY KEY (instance_id, id)
);
CREATE INDEX request_answers_by_time ON request_answers (answered_at);
