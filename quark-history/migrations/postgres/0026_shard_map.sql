-- The shard map this database belongs to, when it is one of a deployment's shards: the shards'
-- names in order (comma-separated) and this database's position among them. Written by the first
-- process that connects with a map; a process with another map refuses to start.
CREATE TABLE shard_map (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    names    TEXT NOT NULL,
    position BIGINT NOT NULL
);
