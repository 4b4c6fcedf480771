-- A token may be limited to one namespace (its instances, queues and schedules are named
-- `<namespace>::...`); NULL: every namespace.
ALTER TABLE api_tokens ADD COLUMN namespace TEXT;
