//! Enqueues on SQLite: a statement per task.

use crate::clock::Timestamp;
use crate::error::Result;
use crate::jobs::Enqueued;
use crate::queue::{NewTask, TaskKind};

/// Inserts tasks inside a write transaction, merging orchestration tasks per instance and
/// deduplicating jobs by unique key. Returns the ids in order and the deduplicated tasks.
pub(super) async fn enqueue_in_tx(
    tx: &mut sqlx::SqliteConnection,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<(Vec<i64>, Vec<(usize, Enqueued)>)> {
    let mut ids = Vec::with_capacity(tasks.len());
    let mut deduplicated = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let id = if task.unique.is_some() {
            let (id, outcome) = super::jobs::enqueue_unique(tx, task, now).await?;
            if outcome != Enqueued::New {
                deduplicated.push((i, outcome));
            }
            id
        } else {
            insert_one(tx, task, now).await?
        };
        ids.push(id);
    }
    Ok((ids, deduplicated))
}

/// Inserts one task (an orchestration task merges into its instance's pending one).
pub(super) async fn insert_one(
    conn: &mut sqlx::SqliteConnection,
    task: &NewTask,
    now: Timestamp,
) -> Result<i64> {
    let (visible_at, lease_owner, attempts) = match &task.lease_to {
        Some((worker, lease)) => ((now + *lease).as_micros(), Some(worker.as_str()), 1i64),
        None => (task.visible_at.unwrap_or(now).as_micros(), None, 0),
    };
    let id: i64 = if task.kind == TaskKind::Orchestration {
        // One orchestration task per instance: a pending one absorbs the new one; a leased one
        // is marked to run again when its holder settles it.
        sqlx::query_scalar(
            "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload) \
             VALUES ('orchestration', ?1, ?2, ?3, ?4, ?5, COALESCE(?6, (SELECT affinity FROM instances WHERE id = ?2)), ?7) \
             ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO UPDATE SET \
             rerun = CASE WHEN tasks.lease_owner IS NOT NULL THEN 1 ELSE tasks.rerun END, \
             visible_at = CASE WHEN tasks.lease_owner IS NULL THEN MIN(tasks.visible_at, excluded.visible_at) ELSE tasks.visible_at END, \
             priority = MAX(tasks.priority, excluded.priority) \
             RETURNING id",
        )
    } else {
        sqlx::query_scalar(
            "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload, \
             lease_owner, attempts, concurrency_key, concurrency_limit) \
             VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?10, ?11, ?12) RETURNING id",
        )
    }
    .bind(&task.queue)
    .bind(task.instance_id.as_deref())
    .bind(task.priority)
    .bind(visible_at)
    .bind(now.as_micros())
    .bind(task.affinity.as_deref())
    .bind(&task.payload)
    .bind(task.kind.as_str())
    .bind(lease_owner)
    .bind(attempts)
    .bind(task.concurrency.as_ref().map(|c| c.0.as_str()))
    .bind(task.concurrency.as_ref().map(|c| i64::from(c.1)))
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}
