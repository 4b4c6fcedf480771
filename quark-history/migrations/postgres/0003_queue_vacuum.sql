-- The queue table churns: every task is inserted, updated on claim and deleted on completion. Vacuum
-- it after a thousand dead rows rather than after a fifth of the table, and without sleeping, so
-- claims do not wade through dead index entries between autovacuum runs.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
