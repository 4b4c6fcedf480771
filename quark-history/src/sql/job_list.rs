//! Jobs read back, for both databases: one statement over the live rows of `tasks`, the record of
//! finished jobs and the dead letters, with each job's last progress report.

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{JobFilter, JobInfo, JobState, Progress, live_state};

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
        let mut n = 0;
        if filter.queue.is_some() {
            n += 1;
            outer.push(format!("j.queue = ${n}"));
        }
        if filter.queue_prefix.is_some() {
            n += 1;
            outer.push(format!("substr(j.queue, 1, length(${n})) = ${n}"));
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
    if let Some(prefix) = filter.queue_prefix {
        stmt = stmt.bind(prefix);
    }
    stmt.fetch_all(&mut *store.reader().acquire().await?)
        .await?
        .iter()
        .map(|row| decode_job(row, now))
        .collect()
}
