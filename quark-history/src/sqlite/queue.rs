//! The shared queue on SQLite: enqueues, claims, leases, dead letters and workers.

use std::time::Duration;

use sqlx::Row;

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::Enqueued;
use crate::queue::{
    ClaimRequest, ClaimedTask, DeadTask, Lease, NewTask, QueueStats, TaskKind, WorkerInfo,
};
use crate::wakeup::Wake;

fn json_list<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

fn kind_of(text: &str) -> Result<TaskKind> {
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
    pub(super) async fn claim_impl(&self, request: ClaimRequest) -> Result<Vec<ClaimedTask>> {
        let now = self.config.clock.now();
        let limited = self.rate_limited_among(&request.queues).await?;
        let mut tx = self.begin().await?;
        // Queues without a rate limit: one statement, which leaves out paused and limited queues.
        let mut tasks =
            claim_from(&mut tx, &request, &request.queues, request.limit, now, true).await?;
        // Rate-limited queues take their grant from the shared bucket first.
        for queue in limited {
            let want = request.limit.saturating_sub(tasks.len() as u32);
            if want == 0 {
                break;
            }
            let Some(grant) = self.take_tokens(&mut tx, &queue, want, now).await? else {
                continue;
            };
            let claimed = if grant > 0 {
                claim_from(
                    &mut tx,
                    &request,
                    std::slice::from_ref(&queue),
                    grant,
                    now,
                    false,
                )
                .await?
            } else {
                Vec::new()
            };
            self.return_tokens(&mut tx, &queue, grant - claimed.len() as u32)
                .await?;
            tasks.extend(claimed);
        }
        tx.commit().await?;
        tasks.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.lease.task_id.cmp(&b.lease.task_id))
        });
        Ok(tasks)
    }

    pub(super) async fn extend_lease_impl(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> Result<Timestamp> {
        let expires = self.config.clock.now() + lease_for;
        let cancelled: Option<bool> = sqlx::query_scalar(
            "UPDATE tasks SET visible_at = ?4 WHERE id = ?1 AND attempts = ?2 AND lease_owner = ?3 \
             RETURNING cancel_requested",
        )
        .bind(lease.task_id)
        .bind(i64::from(lease.attempt))
        .bind(&lease.worker)
        .bind(expires.as_micros())
        .fetch_optional(&self.writer)
        .await?;
        match cancelled {
            None => Err(Error::LeaseLost {
                task_id: lease.task_id,
                attempt: lease.attempt,
            }),
            Some(true) => Err(Error::CancelRequested {
                task_id: lease.task_id,
            }),
            Some(false) => Ok(expires),
        }
    }

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

/// Claims up to `limit` tasks from `queues`; `unlimited_only` leaves out paused and rate-limited
/// queues (the caller took tokens otherwise, and checked the pause).
async fn claim_from(
    conn: &mut sqlx::SqliteConnection,
    request: &ClaimRequest,
    queues: &[String],
    limit: u32,
    now: Timestamp,
    unlimited_only: bool,
) -> Result<Vec<ClaimedTask>> {
    let expires = now + request.lease;
    let kinds: Vec<&str> = request.kinds.iter().map(|k| k.as_str()).collect();
    let rows = sqlx::query(
        "UPDATE tasks SET attempts = attempts + 1, lease_owner = ?1, visible_at = ?2, rerun = 0 \
         WHERE id IN (SELECT id FROM tasks \
           WHERE queue IN (SELECT value FROM json_each(?3)) AND visible_at <= ?4 AND NOT cancel_requested \
           AND (?9 = 0 OR queue NOT IN (SELECT queue FROM queue_settings WHERE paused OR rate_limit IS NOT NULL)) \
           AND (json_array_length(?5) = 0 OR kind IN (SELECT value FROM json_each(?5))) \
           AND (affinity IS NULL OR affinity = ?1 OR visible_at <= ?6 \
                OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = tasks.affinity AND w.heartbeat_at > ?7)) \
           ORDER BY priority DESC, visible_at, id LIMIT ?8) \
         RETURNING id, attempts, kind, queue, instance_id, priority, created_at, payload",
    )
    .bind(&request.worker)
    .bind(expires.as_micros())
    .bind(json_list(queues))
    .bind(now.as_micros())
    .bind(json_list(&kinds))
    .bind((now - request.affinity_delay).as_micros())
    .bind((now - request.worker_ttl).as_micros())
    .bind(i64::from(limit))
    .bind(unlimited_only)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ClaimedTask {
                lease: Lease {
                    task_id: row.try_get("id")?,
                    attempt: row.try_get::<i64, _>("attempts")? as u32,
                    worker: request.worker.clone(),
                },
                kind: kind_of(row.try_get::<&str, _>("kind")?)?,
                queue: row.try_get("queue")?,
                instance_id: row.try_get("instance_id")?,
                priority: row.try_get("priority")?,
                created_at: Timestamp::from_micros(row.try_get("created_at")?),
                lease_expires_at: expires,
                payload: row.try_get("payload")?,
            })
        })
        .collect()
}
