//! The shared queue on SQLite: enqueues, queue statistics, dead letters and workers.

use sqlx::Row;

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::Enqueued;
use crate::queue::{DeadTask, NewTask, QueueStats, TaskKind, WorkerInfo};
use crate::wakeup::Wake;

pub(super) fn json_list<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

pub(super) fn kind_of(text: &str) -> Result<TaskKind> {
    text.parse().map_err(Error::Invalid)
}

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

impl SqliteStore {
    pub(super) async fn queue_stats_impl(&self, queue: &str) -> Result<QueueStats> {
        let now = self.config.clock.now().as_micros();
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND held IS NULL AND (lease_owner IS NULL OR visible_at <= ?2)), \
               (SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND held IS NULL AND lease_owner IS NOT NULL AND visible_at > ?2), \
               (SELECT COUNT(*) FROM dead_tasks WHERE queue = ?1), \
               (SELECT COUNT(*) FROM tasks WHERE queue = ?1 AND held IS NOT NULL), \
               COALESCE((SELECT paused FROM queue_settings WHERE queue = ?1), 0)",
        )
        .bind(queue)
        .bind(now)
        .fetch_one(&self.reader)
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
             WHERE ?1 IS NULL OR queue = ?1 ORDER BY died_at, id LIMIT ?2",
        )
        .bind(queue)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadTask {
                    task_id: row.try_get("id")?,
                    kind: kind_of(row.try_get::<&str, _>("kind")?)?,
                    queue: row.try_get("queue")?,
                    instance_id: row.try_get("instance_id")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
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
             SELECT id, kind, queue, instance_id, priority, ?2, created_at, 0, payload, \
             concurrency_key, concurrency_limit FROM dead_tasks WHERE id = ?1 \
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
        sqlx::query("DELETE FROM dead_tasks WHERE id = ?1")
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.hub.announce(Wake::Queue { queue, kind });
        Ok(())
    }

    pub(super) async fn heartbeat_worker_impl(&self, info: WorkerInfo) -> Result<()> {
        let now = self.config.clock.now();
        sqlx::query(
            "INSERT INTO workers (id, queues, labels, heartbeat_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, labels = excluded.labels, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&info.id)
        .bind(json_list(&info.queues))
        .bind(&info.labels)
        .bind(now.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub(super) async fn list_workers_impl(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query("SELECT id, queues, labels, heartbeat_at FROM workers ORDER BY id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let queues: String = row.try_get("queues")?;
                Ok(WorkerInfo {
                    id: row.try_get("id")?,
                    queues: serde_json::from_str(&queues)
                        .map_err(|e| Error::Invalid(e.to_string()))?,
                    labels: row.try_get("labels")?,
                    heartbeat_at: Timestamp::from_micros(row.try_get("heartbeat_at")?),
                })
            })
            .collect()
    }
}
