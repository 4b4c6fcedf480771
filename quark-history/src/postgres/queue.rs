//! Enqueues on PostgreSQL: plain tasks in one `UNNEST` statement.

use crate::clock::Timestamp;
use crate::error::Result;
use crate::jobs::Enqueued;
use crate::queue::{NewTask, TaskKind};

/// What an enqueue inside a transaction did.
pub(super) struct Inserted {
    /// The task ids, in input order.
    pub(super) ids: Vec<i64>,
    /// Tasks deduplicated by their unique key.
    pub(super) deduplicated: Vec<(usize, Enqueued)>,
}

/// Inserts tasks inside a write transaction, merging orchestration tasks per instance and
/// deduplicating jobs by unique key.
pub(super) async fn enqueue_in_tx(
    conn: &mut sqlx::PgConnection,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<Inserted> {
    let mut ids = vec![0i64; tasks.len()];
    let mut deduplicated = Vec::new();
    let mut plain: Vec<(usize, &NewTask)> = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        if task.kind == TaskKind::Orchestration {
            // One orchestration task per instance: a pending one absorbs the new one; a leased
            // one is marked to run again when its holder settles it.
            ids[i] = sqlx::query_scalar(
                "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload) \
                 VALUES ('orchestration', $1, $2, $3, $4, $5, COALESCE($6, (SELECT affinity FROM instances WHERE id = $2)), $7) \
                 ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO UPDATE SET \
                 rerun = tasks.rerun OR tasks.lease_owner IS NOT NULL, \
                 visible_at = CASE WHEN tasks.lease_owner IS NULL THEN LEAST(tasks.visible_at, excluded.visible_at) ELSE tasks.visible_at END, \
                 priority = GREATEST(tasks.priority, excluded.priority) \
                 RETURNING id",
            )
            .bind(&task.queue)
            .bind(task.instance_id.as_deref())
            .bind(task.priority)
            .bind(task.visible_at.unwrap_or(now).as_micros())
            .bind(now.as_micros())
            .bind(task.affinity.as_deref())
            .bind(&task.payload)
            .fetch_one(&mut *conn)
            .await?;
        } else if task.unique.is_some() {
            let (id, outcome) = super::jobs::enqueue_unique(conn, task, now).await?;
            ids[i] = id;
            if outcome != Enqueued::New {
                deduplicated.push((i, outcome));
            }
        } else {
            plain.push((i, task));
        }
    }
    if !plain.is_empty() {
        let tasks: Vec<NewTask> = plain.iter().map(|(_, t)| (*t).clone()).collect();
        let inserted = insert_plain(conn, &tasks, now).await?;
        for ((i, _), id) in plain.iter().zip(inserted) {
            ids[*i] = id;
        }
    }
    Ok(Inserted { ids, deduplicated })
}

/// Inserts tasks that are not orchestrations, in one statement. Identity values are drawn in row
/// order, so sorting the returned ids restores the input order.
pub(super) async fn insert_plain(
    conn: &mut sqlx::PgConnection,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<Vec<i64>> {
    let mut inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload, \
         lease_owner, attempts, concurrency_key, concurrency_limit) \
         SELECT kind, queue, instance_id, priority, visible_at, $1, affinity, payload, lease_owner, attempts, ckey, climit \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::bytea[], \
         $9::text[], $10::int[], $11::text[], $12::int[]) \
         WITH ORDINALITY AS t(kind, queue, instance_id, priority, visible_at, affinity, payload, lease_owner, attempts, ckey, climit, ord) \
         ORDER BY ord RETURNING id",
    )
    .bind(now.as_micros())
    .bind(tasks.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.queue.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.instance_id.as_deref()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.priority).collect::<Vec<_>>())
    .bind(
        tasks
            .iter()
            .map(|t| match &t.lease_to {
                Some((_, lease)) => (now + *lease).as_micros(),
                None => t.visible_at.unwrap_or(now).as_micros(),
            })
            .collect::<Vec<_>>(),
    )
    .bind(tasks.iter().map(|t| t.affinity.as_deref()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.payload.as_slice()).collect::<Vec<_>>())
    .bind(
        tasks
            .iter()
            .map(|t| t.lease_to.as_ref().map(|(w, _)| w.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        tasks
            .iter()
            .map(|t| i32::from(t.lease_to.is_some()))
            .collect::<Vec<_>>(),
    )
    .bind(tasks.iter().map(|t| t.concurrency.as_ref().map(|c| c.0.as_str())).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.concurrency.as_ref().map(|c| c.1 as i32)).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    inserted.sort_unstable();
    Ok(inserted)
}

/// The instances whose orchestration task `tasks` would create or merge into.
pub(super) fn woken_instances(tasks: &[NewTask]) -> Vec<&str> {
    tasks
        .iter()
        .filter(|t| t.kind == TaskKind::Orchestration)
        .filter_map(|t| t.instance_id.as_deref())
        .collect()
}
