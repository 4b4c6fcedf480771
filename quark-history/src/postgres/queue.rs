//! The queue's set statements on PostgreSQL: plain tasks inserted and settled tasks finished in
//! one `UNNEST` statement each, whatever their number.

use sqlx::PgConnection;

use super::PostgresStore;
use crate::clock::Timestamp;
use crate::error::Result;
use crate::queue::{NewTask, TaskKind};
use crate::sql::jobs::Finished;

/// Inserts tasks that are not orchestrations, in one statement. Identity values are drawn in row
/// order, so sorting the returned ids restores the input order.
pub(super) async fn insert_plain(
    conn: &mut PgConnection,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<Vec<i64>> {
    let mut inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload, \
         lease_owner, attempts, concurrency_key, concurrency_limit, traceparent) \
         SELECT kind, queue, instance_id, priority, visible_at, $1, affinity, payload, lease_owner, attempts, ckey, climit, \
         traceparent \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::bytea[], \
         $9::text[], $10::int[], $11::text[], $12::int[], $13::text[]) \
         WITH ORDINALITY AS t(kind, queue, instance_id, priority, visible_at, affinity, payload, lease_owner, attempts, ckey, climit, \
         traceparent, ord) \
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
    .bind(tasks.iter().map(|t| t.traceparent.as_deref()).collect::<Vec<_>>())
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

/// Removes tasks from the hot table; jobs among them are recorded in `finished_jobs` (when the
/// store keeps finished jobs) with their state and error. One statement whatever their number.
pub(super) async fn finish_tasks(
    conn: &mut PgConnection,
    store: &PostgresStore,
    tasks: &[Finished],
    now: Timestamp,
) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = tasks.iter().map(|t| t.id).collect();
    if store.config.finished_job_retention.is_zero() {
        sqlx::query(
            "WITH d AS (DELETE FROM tasks WHERE id = ANY($1) RETURNING id, kind) \
             DELETE FROM job_progress p USING d WHERE p.task_id = d.id AND d.kind = 'job'",
        )
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        return Ok(());
    }
    sqlx::query(
        "WITH d AS (DELETE FROM tasks t USING UNNEST($1::bigint[], $2::text[], $3::text[]) AS u(id, state, error) \
           WHERE t.id = u.id \
           RETURNING t.id, t.kind, t.queue, t.priority, t.attempts, t.created_at, t.payload, u.state, \
             CASE WHEN u.state = 'completed' THEN NULL ELSE COALESCE(u.error, t.last_error) END AS error) \
         INSERT INTO finished_jobs (id, queue, state, priority, attempts, error, created_at, finished_at, payload) \
         SELECT id, queue, state, priority, attempts, error, created_at, $4, payload FROM d WHERE kind = 'job'",
    )
    .bind(&ids)
    .bind(tasks.iter().map(Finished::state).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.error.as_deref()).collect::<Vec<_>>())
    .bind(now.as_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
