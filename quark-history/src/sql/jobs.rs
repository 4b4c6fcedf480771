//! Durable jobs ([`JobStore`]), implemented once for both databases: cancelling, pausing and
//! resuming jobs, finishing tasks, progress reports and the retention of finished jobs (reading
//! jobs is [`super::job_list`], the queues' controls [`super::queue_settings`]). A job's row is read with
//! [`Dialect::FOR_UPDATE`] before it changes, a row lock on PostgreSQL and nothing on SQLite, whose
//! write transactions hold the one writer. What differs is finishing many tasks at once
//! ([`SqlStore::finish_tasks`]: one set statement on PostgreSQL) and handing a concurrency slot on
//! ([`Dialect::PROMOTE`]).

use futures::future::BoxFuture;

use super::queue_settings::{queue_settings, set_queue_paused, set_rate_limit};
use super::{Dialect, SqlStore, Stmt, job_list};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{HELD, JobFilter, JobInfo, JobState, Progress, Purged, QueueSettings, RateLimit};
use crate::queue::{Lease, TaskKind};
use crate::store::JobStore;

type Conn<S> = <<S as crate::inbox::InboxStore>::Db as sqlx::Database>::Connection;

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// How a task leaves the hot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Done.
    Completed,
    /// Cancelled.
    Cancelled,
}

/// A task leaving the hot table, for [`SqlStore::finish_tasks`].
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub(crate) id: i64,
    /// Only jobs leave a record.
    pub(crate) kind: TaskKind,
    pub(crate) how: Finish,
    /// Why it was cancelled (a completed job keeps no error).
    pub(crate) error: Option<String>,
}

impl Finish {
    fn state(self) -> JobState {
        match self {
            Finish::Completed => JobState::Completed,
            Finish::Cancelled => JobState::Cancelled,
        }
    }
}

impl Finished {
    /// The state a finished job is recorded with.
    pub(crate) fn state(&self) -> &'static str {
        self.how.state().as_str()
    }
}

/// Removes tasks from the hot table, a statement or two each; jobs among them are recorded in
/// `finished_jobs` (when the store keeps finished jobs). The default of
/// [`SqlStore::finish_tasks`].
pub(crate) async fn finish_one_by_one<S: SqlStore>(
    store: &S,
    conn: &mut Conn<S>,
    tasks: &[Finished],
    now: Timestamp,
) -> Result<()> {
    let keep = !store.settings().finished_job_retention.is_zero();
    for task in tasks {
        if task.kind != TaskKind::Job {
            // Only jobs leave a record.
        } else if keep {
            Stmt::<S::Db>::new(
                "INSERT INTO finished_jobs (id, queue, state, priority, attempts, error, created_at, \
                 finished_at, payload) \
                 SELECT id, queue, $2, priority, attempts, \
                   CASE WHEN $2 = 'completed' THEN NULL ELSE COALESCE($3, last_error) END, \
                   created_at, $4, payload \
                 FROM tasks WHERE id = $1 AND kind = 'job'",
            )
            .bind(task.id)
            .bind(task.state())
            .bind(task.error.clone())
            .bind(now.as_micros())
            .execute(&mut *conn)
            .await?;
        } else {
            Stmt::<S::Db>::new("DELETE FROM job_progress WHERE task_id = $1")
                .bind(task.id)
                .execute(&mut *conn)
                .await?;
        }
        Stmt::<S::Db>::new("DELETE FROM tasks WHERE id = $1")
            .bind(task.id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The error for an operation that found job `id` in the wrong state (or found none).
async fn refuse<S: SqlStore>(store: &S, id: i64, action: &'static str) -> Error {
    match job_list::job(store, id).await {
        Ok(Some(job)) => Error::JobState {
            id,
            state: job.state,
            action,
        },
        Ok(None) => Error::TaskNotFound { task_id: id },
        Err(e) => e,
    }
}

/// Cancels a job: removes one that has not started, asks a running one to stop.
async fn cancel_job<S: SqlStore>(store: &S, id: i64) -> Result<JobState> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "SELECT lease_owner IS NOT NULL AND visible_at > $2 AS running FROM tasks \
         WHERE id = $1 AND kind = 'job'{}",
        S::Db::FOR_UPDATE
    )))
    .bind(id)
    .bind(now.as_micros())
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        return Err(refuse(store, id, "cancel").await);
    };
    let state = if row.get("running")? {
        Stmt::<S::Db>::new("UPDATE tasks SET cancel_requested = true WHERE id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        JobState::Cancelling
    } else {
        let finished = Finished {
            id,
            kind: TaskKind::Job,
            how: Finish::Cancelled,
            error: Some("cancelled before it ran".into()),
        };
        store.finish_tasks(&mut tx, &[finished], now).await?;
        JobState::Cancelled
    };
    tx.commit().await?;
    Ok(state)
}

/// Passes the free slots of concurrency key `key` on to the jobs waiting for one.
async fn promote<DB: Dialect>(conn: &mut DB::Connection, key: String, limit: i32) -> Result<()> {
    Stmt::<DB>::new(DB::PROMOTE)
        .bind(key)
        .bind(limit)
        .execute(conn)
        .await?;
    Ok(())
}

/// Holds a job that has not started; pausing a paused job does nothing.
async fn pause_job<S: SqlStore>(store: &S, id: i64) -> Result<()> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "SELECT held, concurrency_key, COALESCE(concurrency_limit, 0) AS concurrency_limit \
         FROM tasks WHERE id = $1 AND kind = 'job' AND (held IS NULL OR held = 'concurrency') \
         AND (lease_owner IS NULL OR visible_at <= $2){}",
        S::Db::FOR_UPDATE
    )))
    .bind(id)
    .bind(now.as_micros())
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        return match refuse(store, id, "pause").await {
            Error::JobState {
                state: JobState::Paused,
                ..
            } => Ok(()),
            e => Err(e),
        };
    };
    Stmt::<S::Db>::new(
        "UPDATE tasks SET held = 'paused', held_visible_at = COALESCE(held_visible_at, visible_at), \
         visible_at = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(HELD)
    .execute(&mut tx)
    .await?;
    let was: Option<String> = row.get("held")?;
    if was.is_none()
        && let Some(key) = row.get::<Option<String>>("concurrency_key")?
    {
        // It held a slot of its concurrency key: pass the slot on.
        promote::<S::Db>(&mut tx, key, row.get("concurrency_limit")?).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Releases a paused job, into its concurrency key's line if it has one.
async fn resume_job<S: SqlStore>(store: &S, id: i64) -> Result<()> {
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(
        "UPDATE tasks SET \
           held = CASE WHEN concurrency_key IS NULL THEN NULL ELSE 'concurrency' END, \
           visible_at = CASE WHEN concurrency_key IS NULL THEN held_visible_at ELSE visible_at END, \
           held_visible_at = CASE WHEN concurrency_key IS NULL THEN NULL ELSE held_visible_at END \
         WHERE id = $1 AND held = 'paused' \
         RETURNING concurrency_key, COALESCE(concurrency_limit, 0) AS concurrency_limit, queue, \
           visible_at",
    )
    .bind(id)
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        return Err(refuse(store, id, "resume").await);
    };
    if let Some(key) = row.get::<Option<String>>("concurrency_key")? {
        promote::<S::Db>(&mut tx, key, row.get("concurrency_limit")?).await?;
    }
    tx.commit().await?;
    if row.get::<i64>("visible_at")? <= store.settings().clock.now().as_micros() {
        store.announce([(row.get("queue")?, TaskKind::Job)]);
    }
    Ok(())
}

/// Records progress for the job held under `lease` (fenced like a commit).
async fn report_progress<S: SqlStore>(store: &S, lease: &Lease, progress: Progress) -> Result<()> {
    if let Some(checkpoint) = &progress.checkpoint {
        crate::rows::check_size(store.settings(), checkpoint.len())?;
    }
    let now = store.settings().clock.now();
    let done = Stmt::<S::Db>::new(
        "INSERT INTO job_progress (task_id, percent, message, checkpoint, updated_at) \
         SELECT id, $4, $5, $6, $7 FROM tasks WHERE id = $1 AND attempts = $2 AND lease_owner = $3 \
         ON CONFLICT (task_id) DO UPDATE SET percent = excluded.percent, message = excluded.message, \
           checkpoint = COALESCE(excluded.checkpoint, job_progress.checkpoint), updated_at = excluded.updated_at",
    )
    .bind(lease.task_id)
    .bind(i64::from(lease.attempt))
    .bind(lease.worker.as_str())
    .bind(progress.percent)
    .bind(progress.message)
    .bind(progress.checkpoint)
    .bind(now.as_micros())
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    if done == 0 {
        return Err(Error::LeaseLost {
            task_id: lease.task_id,
            attempt: lease.attempt,
        });
    }
    Ok(())
}

/// The last progress report of a job, if any.
async fn job_progress<S: SqlStore>(store: &S, id: i64) -> Result<Option<Progress>> {
    let row = Stmt::<S::Db>::new(
        "SELECT percent, message, checkpoint, updated_at FROM job_progress WHERE task_id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *store.reader().acquire().await?)
    .await?;
    row.map(|row| {
        Ok(Progress {
            percent: row.get("percent")?,
            message: row.get("message")?,
            checkpoint: row.get("checkpoint")?,
            updated_at: Timestamp::from_micros(row.get("updated_at")?),
        })
    })
    .transpose()
}

/// Removes up to `limit` finished jobs past the retention (with their progress), expired unique
/// keys, orphaned progress rows, and jobs cancelled while running whose worker died.
async fn purge_finished<S: SqlStore>(store: &S, limit: u32) -> Result<Purged> {
    let now = store.settings().clock.now();
    let before = now - store.settings().finished_job_retention;
    let mut tx = store.begin_write().await?;
    let ids = Stmt::<S::Db>::new(
        "DELETE FROM finished_jobs WHERE id IN (SELECT id FROM finished_jobs \
         WHERE finished_at < $1 ORDER BY finished_at LIMIT $2) RETURNING id",
    )
    .bind(before.as_micros())
    .bind(i64::from(limit))
    .fetch_all(&mut tx)
    .await?
    .iter()
    .map(|row| row.get("id"))
    .collect::<Result<Vec<i64>>>()?;
    let jobs = ids.len() as u64;
    if !ids.is_empty() {
        let stmt = Stmt::<S::Db>::new(sql(format!(
            "DELETE FROM job_progress WHERE {}",
            S::Db::in_list("task_id", 1)
        )));
        S::Db::bind_ids(stmt, ids).execute(&mut tx).await?;
    }
    tx.commit().await?;
    let keys = Stmt::<S::Db>::new(
        "DELETE FROM job_keys WHERE key IN (SELECT key FROM job_keys k WHERE k.expires_at <= $1 \
           OR (k.until_finished AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = k.task_id)) \
           LIMIT $2)",
    )
    .bind(now.as_micros())
    .bind(i64::from(limit))
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    let progress = Stmt::<S::Db>::new(
        "DELETE FROM job_progress WHERE task_id IN (SELECT p.task_id FROM job_progress p \
           WHERE p.updated_at < $1 \
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = p.task_id) \
           AND NOT EXISTS (SELECT 1 FROM finished_jobs f WHERE f.id = p.task_id) \
           AND NOT EXISTS (SELECT 1 FROM dead_tasks d WHERE d.id = p.task_id) LIMIT $2)",
    )
    .bind(before.as_micros())
    .bind(i64::from(limit))
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    // A job cancelled while running whose worker died: it must not run again.
    let mut tx = store.begin_write().await?;
    let abandoned = Stmt::<S::Db>::new(sql(format!(
        "SELECT id, kind FROM tasks WHERE cancel_requested AND visible_at <= $1 \
         ORDER BY id LIMIT $2{}",
        S::Db::SKIP_LOCKED
    )))
    .bind(now.as_micros())
    .bind(i64::from(limit))
    .fetch_all(&mut tx)
    .await?
    .iter()
    .map(|row| {
        Ok(Finished {
            id: row.get("id")?,
            kind: row.get::<String>("kind")?.parse().map_err(Error::Invalid)?,
            how: Finish::Cancelled,
            error: Some("cancelled while running; its worker stopped before settling".into()),
        })
    })
    .collect::<Result<Vec<_>>>()?;
    store.finish_tasks(&mut tx, &abandoned, now).await?;
    tx.commit().await?;
    Ok(Purged {
        jobs,
        keys,
        progress,
        cancelled: abandoned.len() as u64,
    })
}

impl<S: SqlStore> JobStore for S {
    fn job(&self, id: i64) -> BoxFuture<'_, Result<Option<JobInfo>>> {
        Box::pin(job_list::job(self, id))
    }

    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, Result<Vec<JobInfo>>> {
        Box::pin(job_list::list_jobs(self, filter))
    }

    fn cancel_job(&self, id: i64) -> BoxFuture<'_, Result<JobState>> {
        Box::pin(cancel_job(self, id))
    }

    fn pause_job(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(pause_job(self, id))
    }

    fn resume_job(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(resume_job(self, id))
    }

    fn report_progress<'a>(
        &'a self,
        lease: &'a Lease,
        progress: Progress,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(report_progress(self, lease, progress))
    }

    fn job_progress(&self, id: i64) -> BoxFuture<'_, Result<Option<Progress>>> {
        Box::pin(job_progress(self, id))
    }

    fn set_queue_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<()>> {
        Box::pin(set_queue_paused(self, queue, paused))
    }

    fn set_rate_limit<'a>(
        &'a self,
        queue: &'a str,
        limit: Option<RateLimit>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(set_rate_limit(self, queue, limit))
    }

    fn queue_settings<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueSettings>> {
        Box::pin(queue_settings(self, queue))
    }

    fn purge_finished(&self, limit: u32) -> BoxFuture<'_, Result<Purged>> {
        Box::pin(purge_finished(self, limit))
    }
}
