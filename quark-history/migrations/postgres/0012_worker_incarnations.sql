-- Runs of a worker id (its incarnations): the run that holds the registration, the scope of the
-- lock that makes the id exclusive (host, container, lock directory), and how often it
-- heartbeats. A restart of the same id takes the leases of the run before it back at once; a
-- worker whose heartbeats stop loses its leases after two of its intervals instead of a whole
-- lease. Rows written before this (NULL here) keep the old rules: leases run out.
ALTER TABLE workers ADD COLUMN incarnation TEXT;
ALTER TABLE workers ADD COLUMN scope TEXT;
ALTER TABLE workers ADD COLUMN heartbeat_interval BIGINT;
