//! The parts of durable jobs ([`JobStore`](crate::JobStore)) that are the same on both databases:
//! progress reports and the queues' controls. Cancelling, pausing and resuming jobs, unique keys
//! and finishing stay in the dialect files, where PostgreSQL locks rows and works in set
//! statements that SQLite's one writer does not need.

use std::time::Duration;

use super::{SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{Progress, QueueSettings, RateLimit};
use crate::queue::{Lease, TaskKind};

/// Records progress for the job held under `lease` (fenced like a commit).
pub(crate) async fn report_progress<S: SqlStore>(
    store: &S,
    lease: &Lease,
    progress: Progress,
) -> Result<()> {
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
pub(crate) async fn job_progress<S: SqlStore>(store: &S, id: i64) -> Result<Option<Progress>> {
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

/// Pauses or resumes claims from a queue; a resumed queue's waiting workers are woken.
pub(crate) async fn set_queue_paused<S: SqlStore>(
    store: &S,
    queue: &str,
    paused: bool,
) -> Result<()> {
    Stmt::<S::Db>::new(
        "INSERT INTO queue_settings (queue, paused) VALUES ($1, $2) \
         ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused",
    )
    .bind(queue)
    .bind(paused)
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    if !paused {
        store.announce(TaskKind::ALL.map(|k| (queue.to_string(), k)));
    }
    Ok(())
}

/// A queue's controls.
pub(crate) async fn queue_settings<S: SqlStore>(store: &S, queue: &str) -> Result<QueueSettings> {
    // The limit is INTEGER (32 bits) on PostgreSQL and 64 on SQLite: read as 64 on both.
    let row = Stmt::<S::Db>::new(
        "SELECT paused, CAST(rate_limit AS BIGINT) AS rate_limit, rate_interval \
         FROM queue_settings WHERE queue = $1",
    )
    .bind(queue)
    .fetch_optional(&mut *store.reader().acquire().await?)
    .await?;
    let Some(row) = row else {
        return Ok(QueueSettings::default());
    };
    let limit: Option<i64> = row.get("rate_limit")?;
    let interval: Option<i64> = row.get("rate_interval")?;
    Ok(QueueSettings {
        paused: row.get("paused")?,
        rate_limit: limit.zip(interval).map(|(l, i)| RateLimit {
            limit: l as u32,
            interval: Duration::from_micros(i as u64),
        }),
    })
}
