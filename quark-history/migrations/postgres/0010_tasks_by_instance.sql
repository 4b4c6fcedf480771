-- An instance's activities and timers, found when it ends: the commit that ends it drops the ones
-- not running and asks the running ones to cancel. Orchestration tasks have their own unique index
-- and jobs no instance, so neither is in this one.
CREATE INDEX tasks_by_instance ON tasks (instance_id)
    WHERE instance_id IS NOT NULL AND kind IN ('activity', 'timer');
