-- The W3C trace context (`traceparent`) of the span that created a task, so the worker that runs
-- it continues the same trace. A dead task keeps it, and a re-driven one continues the trace too.
-- NULL: the task was created outside any trace.
ALTER TABLE tasks ADD COLUMN traceparent TEXT;
ALTER TABLE dead_tasks ADD COLUMN traceparent TEXT;
