//! Durable jobs on SQLite: unique keys, finishing, cancellation, holds, progress, queue controls and
//! retention. Writers are serialized, so the checks here are exact without row locks.

use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{Enqueued, HELD, JobInfo, JobState, Purged, UniquePolicy};
use crate::queue::{NewTask, TaskKind};
use crate::store::JobStore;
use crate::wakeup::Wake;
use futures::future::BoxFuture;

/// How a task leaves the hot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish {
    /// Done.
    Completed,
    /// Cancelled.
    Cancelled,
}

/// Frees slots of a concurrency key to the oldest waiting jobs of the highest priority (the same
/// statement as the delete trigger's).
const PROMOTE: &str = "UPDATE tasks SET held = NULL, visible_at = held_visible_at, held_visible_at = NULL \
    WHERE id IN (SELECT id FROM tasks WHERE concurrency_key = ?1 AND held = 'concurrency' \
      ORDER BY priority DESC, id \
      LIMIT max(0, ?2 - (SELECT count(*) FROM tasks WHERE concurrency_key = ?1 AND held IS NULL)))";

/// Removes a task from the hot table; a job is recorded in `finished_jobs` (when the store keeps
/// finished jobs) with its state and error.
pub(super) async fn finish_task(
    conn: &mut SqliteConnection,
    store: &SqliteStore,
    id: i64,
    kind: TaskKind,
    finish: Finish,
    error: Option<String>,
    now: Timestamp,
) -> Result<()> {
    if kind != TaskKind::Job {
        // Only jobs leave a record.
    } else if store.config.finished_job_retention.is_zero() {
        sqlx::query("DELETE FROM job_progress WHERE task_id = ?1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    } else {
        let state = match finish {
            Finish::Completed => JobState::Completed,
            Finish::Cancelled => JobState::Cancelled,
        };
        sqlx::query(
            "INSERT INTO finished_jobs (id, queue, state, priority, attempts, error, created_at, finished_at, payload) \
             SELECT id, queue, ?2, priority, attempts, \
               CASE WHEN ?2 = 'completed' THEN NULL ELSE COALESCE(?3, last_error) END, created_at, ?4, payload \
             FROM tasks WHERE id = ?1 AND kind = 'job'",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(error)
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("DELETE FROM tasks WHERE id = ?1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Enqueues one task with a unique key, inside the caller's write transaction.
pub(super) async fn enqueue_unique(
    conn: &mut SqliteConnection,
    task: &NewTask,
    now: Timestamp,
) -> Result<(i64, Enqueued)> {
    let unique = task.unique.as_ref().expect("called for unique tasks");
    let holder: Option<i64> = sqlx::query_scalar(
        "SELECT task_id FROM job_keys k WHERE key = ?1 AND k.expires_at > ?2 \
         AND NOT (k.until_finished AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = k.task_id))",
    )
    .bind(&unique.key)
    .bind(now.as_micros())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(existing) = holder else {
        let id = super::queue::insert_one(conn, task, now).await?;
        sqlx::query(
            "INSERT INTO job_keys (key, task_id, expires_at, until_finished) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id, expires_at = excluded.expires_at, \
               until_finished = excluded.until_finished",
        )
        .bind(&unique.key)
        .bind(id)
        .bind(unique.window.map_or(HELD, |w| (now + w).as_micros()))
        .bind(unique.window.is_none())
        .execute(&mut *conn)
        .await?;
        return Ok((id, Enqueued::New));
    };
    match unique.policy {
        UniquePolicy::Reject => Err(Error::Duplicate {
            key: unique.key.clone(),
            existing,
        }),
        UniquePolicy::Keep => Ok((existing, Enqueued::Existing)),
        UniquePolicy::Replace => {
            let at = task.visible_at.unwrap_or(now).as_micros();
            let replaced = sqlx::query(
                "UPDATE tasks SET payload = ?2, priority = ?3, \
                   visible_at = CASE WHEN held IS NULL THEN ?4 ELSE visible_at END, \
                   held_visible_at = CASE WHEN held IS NULL THEN NULL ELSE ?4 END \
                 WHERE id = ?1 AND lease_owner IS NULL AND attempts = 0",
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

impl SqliteStore {
    /// The state of a job that an operation found in the wrong state, for its error.
    async fn refuse(&self, id: i64, action: &'static str) -> Error {
        match self.job(id).await {
            Ok(Some(job)) => Error::JobState {
                id,
                state: job.state,
                action,
            },
            Ok(None) => Error::TaskNotFound { task_id: id },
            Err(e) => e,
        }
    }
}

impl JobStore for SqliteStore {
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
            let running: Option<bool> = sqlx::query_scalar(
                "SELECT lease_owner IS NOT NULL AND visible_at > ?2 FROM tasks WHERE id = ?1 AND kind = 'job'",
            )
            .bind(id)
            .bind(now.as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            let state = match running {
                None => {
                    drop(tx);
                    return Err(self.refuse(id, "cancel").await);
                }
                Some(true) => {
                    sqlx::query("UPDATE tasks SET cancel_requested = 1 WHERE id = ?1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    JobState::Cancelling
                }
                Some(false) => {
                    finish_task(
                        &mut tx,
                        self,
                        id,
                        TaskKind::Job,
                        Finish::Cancelled,
                        Some("cancelled before it ran".into()),
                        now,
                    )
                    .await?;
                    JobState::Cancelled
                }
            };
            tx.commit().await?;
            Ok(state)
        })
    }

    fn pause_job(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let now = self.config.clock.now();
            let mut tx = self.begin().await?;
            let row: Option<(Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
                "SELECT held, concurrency_key, concurrency_limit FROM tasks WHERE id = ?1 AND kind = 'job' \
                 AND (held IS NULL OR held = 'concurrency') AND (lease_owner IS NULL OR visible_at <= ?2)",
            )
            .bind(id)
            .bind(now.as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((was, key, limit)) = row else {
                drop(tx);
                return match self.refuse(id, "pause").await {
                    Error::JobState {
                        state: JobState::Paused,
                        ..
                    } => Ok(()),
                    e => Err(e),
                };
            };
            sqlx::query(
                "UPDATE tasks SET held = 'paused', held_visible_at = COALESCE(held_visible_at, visible_at), \
                 visible_at = ?2 WHERE id = ?1",
            )
            .bind(id)
            .bind(HELD)
            .execute(&mut *tx)
            .await?;
            if was.is_none()
                && let Some(key) = key
            {
                // It held a slot of its concurrency key: pass the slot on.
                sqlx::query(PROMOTE)
                    .bind(key)
                    .bind(limit.unwrap_or(0))
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
            let row: Option<(Option<String>, Option<i64>, String, i64)> = sqlx::query_as(
                "UPDATE tasks SET \
                   held = CASE WHEN concurrency_key IS NULL THEN NULL ELSE 'concurrency' END, \
                   visible_at = CASE WHEN concurrency_key IS NULL THEN held_visible_at ELSE visible_at END, \
                   held_visible_at = CASE WHEN concurrency_key IS NULL THEN NULL ELSE held_visible_at END \
                 WHERE id = ?1 AND held = 'paused' \
                 RETURNING concurrency_key, concurrency_limit, queue, visible_at",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((key, limit, queue, _)) = row else {
                drop(tx);
                return Err(self.refuse(id, "resume").await);
            };
            if let Some(key) = key {
                sqlx::query(PROMOTE)
                    .bind(key)
                    .bind(limit.unwrap_or(0))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.hub.announce(Wake::Queue {
                queue,
                kind: TaskKind::Job,
            });
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
                 VALUES (?1, ?2, ?3, COALESCE(?2, 0), ?4) \
                 ON CONFLICT (queue) DO UPDATE SET rate_limit = excluded.rate_limit, \
                   rate_interval = excluded.rate_interval, tokens = excluded.tokens, refilled_at = excluded.refilled_at",
            )
            .bind(queue)
            .bind(limit.map(|l| i64::from(l.limit)))
            .bind(limit.map(|l| l.interval.as_micros() as i64))
            .bind(self.config.clock.now().as_micros())
            .execute(&self.writer)
            .await?;
            self.rate_limited.invalidate();
            if limit.is_none() {
                for kind in TaskKind::ALL {
                    self.hub.announce(Wake::Queue {
                        queue: queue.to_string(),
                        kind,
                    });
                }
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
            let mut tx = self.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "DELETE FROM finished_jobs WHERE id IN ( \
                   SELECT id FROM finished_jobs WHERE finished_at < ?1 ORDER BY finished_at LIMIT ?2) RETURNING id",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            if !ids.is_empty() {
                sqlx::query(
                    "DELETE FROM job_progress WHERE task_id IN (SELECT value FROM json_each(?1))",
                )
                .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
                .execute(&mut *tx)
                .await?;
            }
            let keys = sqlx::query(
                "DELETE FROM job_keys WHERE key IN (SELECT key FROM job_keys k WHERE k.expires_at <= ?1 \
                   OR (k.until_finished AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = k.task_id)) LIMIT ?2)",
            )
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let progress = sqlx::query(
                "DELETE FROM job_progress WHERE task_id IN (SELECT p.task_id FROM job_progress p \
                   WHERE p.updated_at < ?1 \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = p.task_id) \
                   AND NOT EXISTS (SELECT 1 FROM finished_jobs f WHERE f.id = p.task_id) \
                   AND NOT EXISTS (SELECT 1 FROM dead_tasks d WHERE d.id = p.task_id) LIMIT ?2)",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A job cancelled while running whose worker died: it must not run again.
            let abandoned: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM tasks WHERE cancel_requested AND visible_at <= ?1 ORDER BY id LIMIT ?2",
            )
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            for id in &abandoned {
                finish_task(
                    &mut tx,
                    self,
                    *id,
                    TaskKind::Job,
                    Finish::Cancelled,
                    Some("cancelled while running; its worker stopped before settling".into()),
                    now,
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Purged {
                jobs: ids.len() as u64,
                keys,
                progress,
                cancelled: abandoned.len() as u64,
            })
        })
    }
}
