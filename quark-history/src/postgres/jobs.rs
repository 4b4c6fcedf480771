//! Durable jobs on PostgreSQL: unique keys, finishing, cancellation, holds, progress, queue
//! controls and retention.

use sqlx::{PgConnection, Row};

use super::PostgresStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{Enqueued, HELD, JobInfo, JobState, Purged, UniquePolicy};
use crate::queue::{NewTask, TaskKind};
use crate::store::JobStore;
use futures::future::BoxFuture;

/// How a task leaves the hot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish {
    /// Done.
    Completed,
    /// Cancelled.
    Cancelled,
}

/// Removes tasks from the hot table; jobs among them are recorded in `finished_jobs` (when the
/// store keeps finished jobs) with their state and error. One statement whatever their number.
pub(super) async fn finish_tasks(
    conn: &mut PgConnection,
    store: &PostgresStore,
    tasks: &[(i64, Finish, Option<String>)],
    now: Timestamp,
) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = tasks.iter().map(|t| t.0).collect();
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
    .bind(
        tasks
            .iter()
            .map(|t| match t.1 {
                Finish::Completed => JobState::Completed.as_str(),
                Finish::Cancelled => JobState::Cancelled.as_str(),
            })
            .collect::<Vec<_>>(),
    )
    .bind(tasks.iter().map(|t| t.2.as_deref()).collect::<Vec<_>>())
    .bind(now.as_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Enqueues one task with a unique key, inside the caller's transaction.
pub(super) async fn enqueue_unique(
    conn: &mut PgConnection,
    task: &NewTask,
    now: Timestamp,
) -> Result<(i64, Enqueued)> {
    let unique = task.unique.as_ref().expect("called for unique tasks");
    if task.kind != TaskKind::Job {
        return Err(Error::Invalid("only jobs take a unique key".into()));
    }
    // Take the key if it is free. If another transaction holds it, this waits for that one to end.
    let expires = unique.window.map_or(HELD, |w| (now + w).as_micros());
    let taken = sqlx::query(
        "INSERT INTO job_keys (key, task_id, expires_at, until_finished) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&unique.key)
    .bind(expires)
    .bind(unique.window.is_none())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let mut existing = 0;
    if !taken {
        // Lock the holder's key row (the latest committed version), then look at its job with a
        // fresh snapshot: a key whose window passed, or whose job finished, is taken over.
        let (holder, expires_at, until_finished): (i64, i64, bool) = sqlx::query_as(
            "SELECT task_id, expires_at, until_finished FROM job_keys WHERE key = $1 FOR UPDATE",
        )
        .bind(&unique.key)
        .fetch_one(&mut *conn)
        .await?;
        let live = expires_at > now.as_micros()
            && (!until_finished
                || sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)")
                    .bind(holder)
                    .fetch_one(&mut *conn)
                    .await?);
        if live {
            existing = holder;
        } else {
            sqlx::query(
                "UPDATE job_keys SET task_id = 0, expires_at = $2, until_finished = $3 WHERE key = $1",
            )
            .bind(&unique.key)
            .bind(expires)
            .bind(unique.window.is_none())
            .execute(&mut *conn)
            .await?;
        }
    }
    if existing == 0 {
        let id = super::queue::insert_plain(conn, std::slice::from_ref(task), now).await?[0];
        sqlx::query("UPDATE job_keys SET task_id = $2 WHERE key = $1")
            .bind(&unique.key)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        return Ok((id, Enqueued::New));
    }
    match unique.policy {
        UniquePolicy::Reject => Err(Error::Duplicate {
            key: unique.key.clone(),
            existing,
        }),
        UniquePolicy::Keep => Ok((existing, Enqueued::Existing)),
        UniquePolicy::Replace => {
            let at = task.visible_at.unwrap_or(now).as_micros();
            let replaced = sqlx::query(
                "UPDATE tasks SET payload = $2, priority = $3, \
                   visible_at = CASE WHEN held IS NULL THEN $4 ELSE visible_at END, \
                   held_visible_at = CASE WHEN held IS NULL THEN NULL ELSE $4 END \
                 WHERE id = $1 AND lease_owner IS NULL AND attempts = 0",
            )
            .bind(existing)
            .bind(&task.payload)
            .bind(task.priority)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            if replaced.rows_affected() == 1 {
                Ok((existing, Enqueued::Replaced))
            } else {
                Ok((existing, Enqueued::Existing))
            }
        }
    }
}

impl PostgresStore {
    async fn job_state(&self, id: i64) -> Result<JobState> {
        match self.job(id).await? {
            Some(job) => Ok(job.state),
            None => Err(Error::TaskNotFound { task_id: id }),
        }
    }
}

impl JobStore for PostgresStore {
    fn job(&self, id: i64) -> BoxFuture<'_, Result<Option<JobInfo>>> {
        Box::pin(crate::sql::jobs::job(self, id))
    }

    fn list_jobs(&self, filter: crate::JobFilter) -> BoxFuture<'_, Result<Vec<JobInfo>>> {
        Box::pin(crate::sql::jobs::list_jobs(self, filter))
    }

    fn cancel_job(&self, id: i64) -> BoxFuture<'_, Result<crate::JobState>> {
        Box::pin(async move {
            let now = self.config.clock.now();
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                "SELECT lease_owner IS NOT NULL AND visible_at > $2 AS running FROM tasks \
                 WHERE id = $1 AND kind = 'job' FOR UPDATE",
            )
            .bind(id)
            .bind(now.as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                let state = self.job_state(id).await?;
                return Err(Error::JobState {
                    id,
                    state,
                    action: "cancel",
                });
            };
            let running: bool = row.try_get(0)?;
            let state = if running {
                sqlx::query("UPDATE tasks SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                JobState::Cancelling
            } else {
                finish_tasks(
                    &mut tx,
                    self,
                    &[(
                        id,
                        Finish::Cancelled,
                        Some("cancelled before it ran".into()),
                    )],
                    now,
                )
                .await?;
                JobState::Cancelled
            };
            tx.commit().await?;
            Ok(state)
        })
    }

    fn pause_job(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let now = self.config.clock.now();
            let mut tx = self.begin().await?;
            let row: Option<(Option<String>, i32, Option<String>)> = sqlx::query_as(
                "UPDATE tasks t SET held = 'paused', \
                   held_visible_at = COALESCE(t.held_visible_at, t.visible_at), visible_at = $3 \
                 FROM (SELECT id, held AS was, concurrency_key, concurrency_limit FROM tasks WHERE id = $1 FOR UPDATE) o \
                 WHERE t.id = o.id AND t.kind = 'job' AND (t.held IS NULL OR t.held = 'concurrency') \
                   AND (t.lease_owner IS NULL OR t.visible_at <= $2) \
                 RETURNING o.was, COALESCE(o.concurrency_limit, 0), o.concurrency_key",
            )
            .bind(id)
            .bind(now.as_micros())
            .bind(HELD)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((was, limit, key)) = row else {
                let state = self.job_state(id).await?;
                if state == JobState::Paused {
                    return Ok(());
                }
                return Err(Error::JobState {
                    id,
                    state,
                    action: "pause",
                });
            };
            if was.is_none()
                && let Some(key) = key
            {
                // It held a slot of its concurrency key: pass the slot on.
                sqlx::query("SELECT quark_concurrency_promote($1, $2)")
                    .bind(key)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn resume_job(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut tx = self.begin().await?;
            let row: Option<(Option<String>, i32, String, i64)> = sqlx::query_as(
                "UPDATE tasks SET \
                   held = CASE WHEN concurrency_key IS NULL THEN NULL ELSE 'concurrency' END, \
                   visible_at = CASE WHEN concurrency_key IS NULL THEN held_visible_at ELSE visible_at END, \
                   held_visible_at = CASE WHEN concurrency_key IS NULL THEN NULL ELSE held_visible_at END \
                 WHERE id = $1 AND held = 'paused' \
                 RETURNING concurrency_key, COALESCE(concurrency_limit, 0), queue, visible_at",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((key, limit, queue, visible_at)) = row else {
                let state = self.job_state(id).await?;
                return Err(Error::JobState {
                    id,
                    state,
                    action: "resume",
                });
            };
            if let Some(key) = key {
                sqlx::query("SELECT quark_concurrency_promote($1, $2)")
                    .bind(key)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if visible_at <= self.config.clock.now().as_micros() {
                self.announce([(queue, TaskKind::Job)]);
            }
            Ok(())
        })
    }

    fn report_progress<'a>(
        &'a self,
        lease: &'a crate::Lease,
        progress: crate::Progress,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(crate::sql::jobs::report_progress(self, lease, progress))
    }

    fn job_progress(&self, id: i64) -> BoxFuture<'_, Result<Option<crate::Progress>>> {
        Box::pin(crate::sql::jobs::job_progress(self, id))
    }

    fn set_queue_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(crate::sql::jobs::set_queue_paused(self, queue, paused))
    }

    fn set_rate_limit<'a>(
        &'a self,
        queue: &'a str,
        limit: Option<crate::RateLimit>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if let Some(l) = limit
                && (l.limit == 0 || l.interval.is_zero())
            {
                return Err(Error::Invalid(
                    "a rate limit needs a positive count and interval".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO queue_settings (queue, rate_limit, rate_interval, tokens, refilled_at) \
                 VALUES ($1, $2, $3, COALESCE($2, 0), $4) \
                 ON CONFLICT (queue) DO UPDATE SET rate_limit = excluded.rate_limit, \
                   rate_interval = excluded.rate_interval, tokens = excluded.tokens, refilled_at = excluded.refilled_at",
            )
            .bind(queue)
            .bind(limit.map(|l| l.limit as i32))
            .bind(limit.map(|l| l.interval.as_micros() as i64))
            .bind(self.config.clock.now().as_micros())
            .execute(&self.pool)
            .await?;
            self.rate_limited.invalidate();
            if limit.is_none() {
                self.announce(TaskKind::ALL.map(|k| (queue.to_string(), k)));
            }
            Ok(())
        })
    }

    fn queue_settings<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<crate::QueueSettings>> {
        Box::pin(crate::sql::jobs::queue_settings(self, queue))
    }

    fn purge_finished(&self, limit: u32) -> BoxFuture<'_, Result<crate::Purged>> {
        Box::pin(async move {
            let now = self.config.clock.now();
            let before = now - self.config.finished_job_retention;
            let jobs: i64 = sqlx::query_scalar(
                "WITH f AS (DELETE FROM finished_jobs WHERE id IN ( \
                   SELECT id FROM finished_jobs WHERE finished_at < $1 ORDER BY finished_at LIMIT $2) RETURNING id), \
                 p AS (DELETE FROM job_progress WHERE task_id IN (SELECT id FROM f)) \
                 SELECT count(*) FROM f",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .fetch_one(&self.pool)
            .await?;
            let keys = sqlx::query(
                "DELETE FROM job_keys WHERE key IN (SELECT key FROM job_keys k WHERE k.expires_at <= $1 \
                   OR (k.until_finished AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = k.task_id)) LIMIT $2)",
            )
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?
            .rows_affected();
            let progress = sqlx::query(
                "DELETE FROM job_progress WHERE task_id IN (SELECT p.task_id FROM job_progress p \
                   WHERE p.updated_at < $1 \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = p.task_id) \
                   AND NOT EXISTS (SELECT 1 FROM finished_jobs f WHERE f.id = p.task_id) \
                   AND NOT EXISTS (SELECT 1 FROM dead_tasks d WHERE d.id = p.task_id) LIMIT $2)",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?
            .rows_affected();
            // A job cancelled while running whose worker died: it must not run again.
            let mut tx = self.begin().await?;
            let abandoned: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM tasks WHERE cancel_requested AND visible_at <= $1 \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            let finish: Vec<_> = abandoned
                .iter()
                .map(|id| {
                    (
                        *id,
                        Finish::Cancelled,
                        Some(
                            "cancelled while running; its worker stopped before settling"
                                .to_string(),
                        ),
                    )
                })
                .collect();
            finish_tasks(&mut tx, self, &finish, now).await?;
            tx.commit().await?;
            Ok(Purged {
                jobs: jobs as u64,
                keys,
                progress,
                cancelled: abandoned.len() as u64,
            })
        })
    }
}
