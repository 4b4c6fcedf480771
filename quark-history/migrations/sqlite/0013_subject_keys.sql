-- Data keys of the subjects (people) whose personal fields the journal holds sealed. `wrapped` is
-- the data key sealed with the operator's master key, which is never stored; erasing a subject
-- sets it to NULL and records when, so its fields can never be opened again and the subject is
-- never given a new key.
CREATE TABLE subject_keys (
    subject    TEXT PRIMARY KEY,
    wrapped    BLOB,
    created_at INTEGER NOT NULL,
    erased_at  INTEGER
) STRICT;
