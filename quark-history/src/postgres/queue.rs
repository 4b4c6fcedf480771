//! The shared queue on PostgreSQL: enqueues, queue statistics, dead letters and workers.

use sqlx::Row;

use super::PostgresStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::Enqueued;
use crate::queue::{DeadTask, NewTask, QueueStats, TaskKind, WorkerInfo};

pub(super) fn kind_of(text: &str) -> Result<TaskKind> {
    text.parse().map_err(Error::Invalid)
}

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

impl PostgresStore {
    pub(super) async fn queue_stats_impl(&self, queue: &str) -> Result<QueueStats> {
        let now = self.config.clock.now().as_micros();
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NULL AND (lease_owner IS NULL OR visible_at <= $2)), \
               (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NULL AND lease_owner IS NOT NULL AND visible_at > $2), \
               (SELECT COUNT(*) FROM dead_tasks WHERE queue = $1), \
               (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NOT NULL), \
               COALESCE((SELECT paused FROM queue_settings WHERE queue = $1), false)",
        )
        .bind(queue)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            pending: row.try_get::<i64, _>(0)? as u64,
            leased: row.try_get::<i64, _>(1)? as u64,
            dead: row.try_get::<i64, _>(2)? as u64,
            held: row.try_get::<i64, _>(3)? as u64,
            paused: row.try_get(4)?,
        })
    }

    pub(super) async fn list_dead_impl(
        &self,
        queue: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadTask>> {
        let rows = sqlx::query(
            "SELECT id, kind, queue, instance_id, attempts, error, died_at, payload FROM dead_tasks \
             WHERE $1 IS NULL OR queue = $1 ORDER BY died_at, id LIMIT $2",
        )
        .bind(queue)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadTask {
                    task_id: row.try_get("id")?,
                    kind: kind_of(row.try_get::<&str, _>("kind")?)?,
                    queue: row.try_get("queue")?,
                    instance_id: row.try_get("instance_id")?,
                    attempts: row.try_get::<i32, _>("attempts")? as u32,
                    error: row.try_get("error")?,
                    died_at: Timestamp::from_micros(row.try_get("died_at")?),
                    payload: row.try_get("payload")?,
                })
            })
            .collect()
    }

    pub(super) async fn redrive_impl(&self, task_id: i64) -> Result<()> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let queue: Option<(String, String)> = sqlx::query_as(
            "INSERT INTO tasks (id, kind, queue, instance_id, priority, visible_at, created_at, attempts, payload, \
             concurrency_key, concurrency_limit) \
             OVERRIDING SYSTEM VALUE SELECT id, kind, queue, instance_id, priority, $2, created_at, 0, payload, \
             concurrency_key, concurrency_limit FROM dead_tasks WHERE id = $1 \
             RETURNING queue, kind",
        )
        .bind(task_id)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((queue, kind)) = queue else {
            return Err(Error::TaskNotFound { task_id });
        };
        let kind = kind_of(&kind)?;
        sqlx::query("DELETE FROM dead_tasks WHERE id = $1")
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.announce([(queue, kind)]);
        Ok(())
    }

    pub(super) async fn heartbeat_worker_impl(&self, info: WorkerInfo) -> Result<()> {
        let now = self.config.clock.now();
        sqlx::query(
            "INSERT INTO workers (id, queues, labels, heartbeat_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, labels = excluded.labels, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&info.id)
        .bind(&info.queues)
        .bind(&info.labels)
        .bind(now.as_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn list_workers_impl(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query("SELECT id, queues, labels, heartbeat_at FROM workers ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(WorkerInfo {
                    id: row.try_get("id")?,
                    queues: row.try_get("queues")?,
                    labels: row.try_get("labels")?,
                    heartbeat_at: Timestamp::from_micros(row.try_get("heartbeat_at")?),
                })
            })
            .collect()
    }
}
