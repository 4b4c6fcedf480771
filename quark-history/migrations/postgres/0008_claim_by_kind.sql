-- Claims look tasks up by queue and kind, in priority order: one index range per (queue, kind),
-- read in the order tasks are handed out. The old index led with the queue alone, so a claim for
-- one kind read (and sorted) every visible task of the queue, of every kind.
CREATE INDEX tasks_claim_by_kind ON tasks (queue, kind, priority DESC, visible_at, id);
DROP INDEX tasks_claim;
