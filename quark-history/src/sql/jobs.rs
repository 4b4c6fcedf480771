//! The parts of durable jobs ([`JobStore`](crate::JobStore)) that are the same on both databases:
//! reading jobs, progress reports and the queues' controls. Cancelling, pausing and resuming jobs, unique keys
//! and finishing stay in the dialect files, where PostgreSQL locks rows and works in set
//! statements that SQLite's one writer does not need.

use std::time::Duration;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{JobFilter, JobInfo, JobState, Progress, QueueSettings, RateLimit, live_state};
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

/// The SQL (the same in both dialects) that lists jobs: live rows of `tasks`, `finished_jobs` and
/// dead jobs, with their progress, newest first. `now` is inlined (it is our own integer).
fn list_sql(filter: &JobFilter, now: Timestamp, by_id: bool) -> String {
    let now = now.as_micros();
    let wanted = |s: JobState| filter.states.is_empty() || filter.states.contains(&s);
    let live: Vec<String> = [
        (JobState::Pending, format!("(held IS NULL AND visible_at <= {now})")),
        (
            JobState::Scheduled,
            format!("(held IS NULL AND visible_at > {now} AND lease_owner IS NULL AND attempts = 0)"),
        ),
        (
            JobState::Retrying,
            format!("(held IS NULL AND visible_at > {now} AND lease_owner IS NULL AND attempts > 0)"),
        ),
        (JobState::Paused, "(held = 'paused')".to_string()),
        (JobState::Waiting, "(held = 'concurrency')".to_string()),
        (
            JobState::Running,
            format!("(held IS NULL AND lease_owner IS NOT NULL AND visible_at > {now} AND NOT cancel_requested)"),
        ),
        (
            JobState::Cancelling,
            format!("(held IS NULL AND lease_owner IS NOT NULL AND visible_at > {now} AND cancel_requested)"),
        ),
    ]
    .into_iter()
    .filter(|(s, _)| wanted(*s))
    .map(|(_, c)| c)
    .collect();
    let live = if live.is_empty() {
        "1 = 0".to_string()
    } else {
        live.join(" OR ")
    };
    let finished: Vec<&str> = [JobState::Completed, JobState::Cancelled]
        .into_iter()
        .filter(|s| wanted(*s))
        .map(|s| s.as_str())
        .collect();
    let finished = if finished.is_empty() {
        "1 = 0".to_string()
    } else {
        format!(
            "state IN ({})",
            finished
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let dead = if wanted(JobState::Dead) {
        "1 = 1"
    } else {
        "1 = 0"
    };
    let mut outer = vec!["1 = 1".to_string()];
    if by_id {
        outer.push("j.id = $1".into());
    } else {
        if filter.queue.is_some() {
            outer.push("j.queue = $1".into());
        }
        if let Some(before) = filter.before_id {
            outer.push(format!("j.id < {before}"));
        }
    }
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    format!(
        "SELECT j.id, j.queue, j.priority, j.attempts, j.created_at, j.visible_at, j.leased, j.held, \
         j.held_visible_at, j.cancel_requested, j.error, j.concurrency_key, j.payload, j.finished_at, \
         j.source, p.percent, p.message, p.checkpoint, p.updated_at AS progress_at FROM ( \
           SELECT id, queue, priority, attempts, created_at, visible_at, lease_owner IS NOT NULL AS leased, \
             held, held_visible_at, cancel_requested, last_error AS error, concurrency_key, payload, \
             CAST(NULL AS BIGINT) AS finished_at, 'live' AS source \
           FROM tasks WHERE kind = 'job' AND ({live}) \
           UNION ALL \
           SELECT id, queue, priority, attempts, created_at, NULL, false, NULL, NULL, false, error, NULL, \
             payload, finished_at, state FROM finished_jobs WHERE {finished} \
           UNION ALL \
           SELECT id, queue, priority, attempts, created_at, NULL, false, NULL, NULL, false, error, NULL, \
             payload, died_at, 'dead' FROM dead_tasks WHERE kind = 'job' AND {dead} \
         ) j LEFT JOIN job_progress p ON p.task_id = j.id \
         WHERE {} ORDER BY j.id DESC LIMIT {limit}",
        outer.join(" AND ")
    )
}

/// A job from a row of [`list_sql`].
fn decode_job<DB: Dialect>(row: &Row<DB>, now: Timestamp) -> Result<JobInfo> {
    let source: String = row.get("source")?;
    let attempts = row.get::<i32>("attempts")? as u32;
    let visible_at: Option<i64> = row.get("visible_at")?;
    let held: Option<String> = row.get("held")?;
    let held_visible_at: Option<i64> = row.get("held_visible_at")?;
    let finished_at: Option<i64> = row.get("finished_at")?;
    let state = match source.as_str() {
        "live" => live_state(
            held.as_deref(),
            row.get("leased")?,
            visible_at.unwrap_or_default(),
            attempts,
            row.get("cancel_requested")?,
            now,
        ),
        other => other.parse().map_err(Error::Invalid)?,
    };
    let run_at = match (state.is_finished(), held_visible_at, visible_at) {
        (true, _, _) => None,
        (false, Some(at), _) => Some(at),
        (false, None, at) => at,
    };
    let progress_at: Option<i64> = row.get("progress_at")?;
    Ok(JobInfo {
        id: row.get("id")?,
        queue: row.get("queue")?,
        state,
        priority: row.get("priority")?,
        attempts,
        created_at: Timestamp::from_micros(row.get("created_at")?),
        run_at: run_at.map(Timestamp::from_micros),
        finished_at: finished_at.map(Timestamp::from_micros),
        error: row.get("error")?,
        concurrency_key: row.get("concurrency_key")?,
        progress: match progress_at {
            Some(at) => Some(Progress {
                percent: row.get("percent")?,
                message: row.get("message")?,
                checkpoint: row.get("checkpoint")?,
                updated_at: Timestamp::from_micros(at),
            }),
            None => None,
        },
        payload: row.get("payload")?,
    })
}

/// A job (live, finished or dead), with its last progress report.
pub(crate) async fn job<S: SqlStore>(store: &S, id: i64) -> Result<Option<JobInfo>> {
    let now = store.settings().clock.now();
    let sql = list_sql(&JobFilter::default(), now, true);
    Stmt::<S::Db>::new(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *store.reader().acquire().await?)
        .await?
        .map(|row| decode_job(&row, now))
        .transpose()
}

/// Jobs matching `filter`, newest first.
pub(crate) async fn list_jobs<S: SqlStore>(store: &S, filter: JobFilter) -> Result<Vec<JobInfo>> {
    let now = store.settings().clock.now();
    let sql = list_sql(&filter, now, false);
    let mut stmt = Stmt::<S::Db>::new(sqlx::AssertSqlSafe(sql));
    if let Some(queue) = filter.queue {
        stmt = stmt.bind(queue);
    }
    stmt.fetch_all(&mut *store.reader().acquire().await?)
        .await?
        .iter()
        .map(|row| decode_job(row, now))
        .collect()
}
