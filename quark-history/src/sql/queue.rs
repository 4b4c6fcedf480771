//! The shared queue, for both databases: claims under a lease (with the queues' rate limits),
//! lease extensions, statistics, dead letters and workers. What differs is the claim statement
//! itself ([`SqlStore::claim_stmt`]: `FOR UPDATE SKIP LOCKED` on PostgreSQL, SQLite's one writer)
//! and how a worker's list of queues is stored ([`Dialect::bind_texts`]).

use std::time::Duration;

use super::{Dialect, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::RateLimit;
use crate::queue::{ClaimRequest, ClaimedTask, DeadTask, Lease, QueueStats, TaskKind};

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// Claims up to `request.limit` tasks: the queues without a rate limit in one statement (which
/// leaves out paused and limited queues, so a pause or a new limit holds at once on every worker),
/// then each rate-limited queue in a transaction of its own that takes its grant from the shared
/// bucket first.
pub(crate) async fn claim<S: SqlStore>(
    store: &S,
    request: ClaimRequest,
) -> Result<Vec<ClaimedTask>> {
    let now = store.settings().clock.now();
    let expires = now + request.lease;
    let limited = rate_limited_among(store, &request.queues).await?;
    let stmt = S::claim_stmt(&request, &request.queues, request.limit, now, true);
    let rows = super::claim(store, stmt).await?;
    let mut tasks = super::claim::claimed_tasks(rows, &request.worker, expires)?;
    for queue in limited {
        let want = request.limit.saturating_sub(tasks.len() as u32);
        if want == 0 {
            break;
        }
        let mut tx = store.begin_write().await?;
        let Some(grant) = take_tokens::<S::Db>(&mut tx, &queue, want, now).await? else {
            continue;
        };
        let claimed = if grant > 0 {
            let queues = std::slice::from_ref(&queue);
            let rows = S::claim_stmt(&request, queues, grant, now, false)
                .fetch_all(&mut tx)
                .await?;
            super::claim::claimed_tasks(rows, &request.worker, expires)?
        } else {
            Vec::new()
        };
        return_tokens::<S::Db>(&mut tx, &queue, grant - claimed.len() as u32).await?;
        tx.commit().await?;
        tasks.extend(claimed);
    }
    tasks.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.lease.task_id.cmp(&b.lease.task_id))
    });
    Ok(tasks)
}

/// The rate-limited queues among `queues`, from a snapshot at most a second old.
async fn rate_limited_among<S: SqlStore>(store: &S, queues: &[String]) -> Result<Vec<String>> {
    let now = store.settings().clock.now();
    let limited = match store.limited_queues().get(now) {
        Some(limited) => limited,
        None => {
            let limited =
                Stmt::<S::Db>::new("SELECT queue FROM queue_settings WHERE rate_limit IS NOT NULL")
                    .fetch_all(&mut *store.reader().acquire().await?)
                    .await?
                    .iter()
                    .map(|row| row.get("queue"))
                    .collect::<Result<Vec<String>>>()?;
            store.limited_queues().set(now, limited.clone());
            limited
        }
    };
    Ok(queues
        .iter()
        .filter(|q| limited.contains(*q))
        .cloned()
        .collect())
}

/// Takes up to `want` tokens from `queue`'s bucket inside a write transaction (on PostgreSQL the
/// row stays locked until it commits, so claimers of one limited queue take turns). Returns the
/// grant, or `None` if the queue is paused or no longer limited.
async fn take_tokens<DB: Dialect>(
    conn: &mut DB::Connection,
    queue: &str,
    want: u32,
    now: Timestamp,
) -> Result<Option<u32>> {
    // The limit is INTEGER (32 bits) on PostgreSQL and 64 on SQLite: read as 64 on both.
    let row = Stmt::<DB>::new(sql(format!(
        "SELECT paused, CAST(rate_limit AS BIGINT) AS rate_limit, rate_interval, tokens, \
         refilled_at FROM queue_settings WHERE queue = $1{}",
        DB::FOR_UPDATE
    )))
    .bind(queue)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let paused: bool = row.get("paused")?;
    let (Some(limit), Some(interval)) = (
        row.get::<Option<i64>>("rate_limit")?,
        row.get::<Option<i64>>("rate_interval")?,
    ) else {
        return Ok(None);
    };
    if paused {
        return Ok(None);
    }
    let limit = RateLimit {
        limit: limit as u32,
        interval: Duration::from_micros(interval as u64),
    };
    let refilled_at = Timestamp::from_micros(row.get("refilled_at")?);
    let (grant, left) = crate::jobs::take_tokens(limit, row.get("tokens")?, refilled_at, now, want);
    Stmt::<DB>::new("UPDATE queue_settings SET tokens = $2, refilled_at = $3 WHERE queue = $1")
        .bind(queue)
        .bind(left)
        .bind(now.as_micros())
        .execute(conn)
        .await?;
    Ok(Some(grant))
}

/// Gives back tokens taken but not used (fewer tasks were visible than granted).
async fn return_tokens<DB: Dialect>(
    conn: &mut DB::Connection,
    queue: &str,
    unused: u32,
) -> Result<()> {
    if unused > 0 {
        Stmt::<DB>::new(sql(format!(
            "UPDATE queue_settings SET tokens = {}(tokens + $2, rate_limit) WHERE queue = $1",
            DB::LEAST
        )))
        .bind(queue)
        .bind(f64::from(unused))
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Extends a lease; `LeaseLost` if it is no longer held, `CancelRequested` for a job cancelled
/// while running.
pub(crate) async fn extend_lease<S: SqlStore>(
    store: &S,
    lease: &Lease,
    lease_for: Duration,
) -> Result<Timestamp> {
    let expires = store.settings().clock.now() + lease_for;
    let row = Stmt::<S::Db>::new(
        "UPDATE tasks SET visible_at = $4 WHERE id = $1 AND attempts = $2 AND lease_owner = $3 \
         RETURNING cancel_requested",
    )
    .bind(lease.task_id)
    .bind(lease.attempt as i32)
    .bind(lease.worker.as_str())
    .bind(expires.as_micros())
    .fetch_optional(&mut *store.writer().acquire().await?)
    .await?;
    match row.map(|r| r.get::<bool>("cancel_requested")).transpose()? {
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

/// Counts of tasks on a queue.
pub(crate) async fn queue_stats<S: SqlStore>(store: &S, queue: &str) -> Result<QueueStats> {
    let now = store.settings().clock.now().as_micros();
    let row = Stmt::<S::Db>::new(
        "SELECT \
           (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NULL \
             AND (lease_owner IS NULL OR visible_at <= $2)) AS pending, \
           (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NULL \
             AND lease_owner IS NOT NULL AND visible_at > $2) AS leased, \
           (SELECT COUNT(*) FROM dead_tasks WHERE queue = $1) AS dead, \
           (SELECT COUNT(*) FROM tasks WHERE queue = $1 AND held IS NOT NULL) AS held, \
           COALESCE((SELECT paused FROM queue_settings WHERE queue = $1), false) AS paused",
    )
    .bind(queue)
    .bind(now)
    .fetch_one(&mut *store.reader().acquire().await?)
    .await?;
    Ok(QueueStats {
        pending: row.get::<i64>("pending")? as u64,
        leased: row.get::<i64>("leased")? as u64,
        dead: row.get::<i64>("dead")? as u64,
        held: row.get::<i64>("held")? as u64,
        paused: row.get("paused")?,
    })
}

fn kind_of(text: &str) -> Result<TaskKind> {
    text.parse().map_err(Error::Invalid)
}

/// Tasks in the dead-letter list, oldest first.
pub(crate) async fn list_dead<S: SqlStore>(
    store: &S,
    queue: Option<&str>,
    limit: u32,
) -> Result<Vec<DeadTask>> {
    let rows = Stmt::<S::Db>::new(
        "SELECT id, kind, queue, instance_id, attempts, error, died_at, payload FROM dead_tasks \
         WHERE $1 IS NULL OR queue = $1 ORDER BY died_at, id LIMIT $2",
    )
    .bind(queue.map(str::to_string))
    .bind(i64::from(limit))
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeadTask {
                task_id: row.get("id")?,
                kind: kind_of(&row.get::<String>("kind")?)?,
                queue: row.get("queue")?,
                instance_id: row.get("instance_id")?,
                attempts: row.get::<i32>("attempts")? as u32,
                error: row.get("error")?,
                died_at: Timestamp::from_micros(row.get("died_at")?),
                payload: row.get("payload")?,
            })
        })
        .collect()
}

/// Puts a dead task back on its queue, visible now, with its attempts reset and its own id. A
/// dead turn unblocks its instance in the same transaction; if the instance has an orchestration
/// task already (new events woke it since), the turn merges into that one, as any wake-up does.
pub(crate) async fn redrive<S: SqlStore>(store: &S, task_id: i64) -> Result<()> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "INSERT INTO tasks (id, kind, queue, instance_id, priority, visible_at, created_at, \
         attempts, payload, concurrency_key, concurrency_limit, traceparent){} \
         SELECT id, kind, queue, instance_id, priority, $2, created_at, 0, payload, \
         concurrency_key, concurrency_limit, traceparent FROM dead_tasks WHERE id = $1 \
         ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO UPDATE SET \
         rerun = tasks.rerun OR tasks.lease_owner IS NOT NULL, \
         visible_at = CASE WHEN tasks.lease_owner IS NULL \
           THEN {least}(tasks.visible_at, excluded.visible_at) ELSE tasks.visible_at END \
         RETURNING queue, kind, instance_id",
        S::Db::OVERRIDING_ID,
        least = S::Db::LEAST,
    )))
    .bind(task_id)
    .bind(now.as_micros())
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::TaskNotFound { task_id });
    };
    let queue: String = row.get("queue")?;
    let kind = kind_of(&row.get::<String>("kind")?)?;
    Stmt::<S::Db>::new("DELETE FROM dead_tasks WHERE id = $1")
        .bind(task_id)
        .execute(&mut tx)
        .await?;
    if kind == TaskKind::Orchestration
        && let Some(instance) = row.get::<Option<String>>("instance_id")?
    {
        Stmt::<S::Db>::new(
            "UPDATE instances SET status = 'running', updated_at = $2 \
             WHERE id = $1 AND status = 'blocked'",
        )
        .bind(instance)
        .bind(now.as_micros())
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    store.announce([(queue, kind)]);
    Ok(())
}
