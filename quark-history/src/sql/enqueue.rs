//! Enqueueing inside a write transaction, for both databases: an orchestration task merges into
//! its instance's pending one, a job with a unique key takes the key or meets its holder, and the
//! other tasks are inserted together ([`SqlStore::insert_tasks`]: one `UNNEST` statement on
//! PostgreSQL, a statement each on SQLite).

use super::{Dialect, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::jobs::{Enqueued, HELD, UniquePolicy};
use crate::queue::{NewTask, TaskKind};

type Conn<S> = <<S as crate::inbox::InboxStore>::Db as sqlx::Database>::Connection;

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// What an enqueue did.
pub(crate) struct Inserted {
    /// The task ids, in input order.
    pub(crate) ids: Vec<i64>,
    /// Tasks deduplicated by their unique key: their index in the input and what happened.
    pub(crate) deduplicated: Vec<(usize, Enqueued)>,
}

/// Inserts tasks inside a write transaction, merging orchestration tasks per instance and
/// deduplicating jobs by unique key.
pub(crate) async fn enqueue<S: SqlStore>(
    conn: &mut Conn<S>,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<Inserted> {
    let mut ids = vec![0i64; tasks.len()];
    let mut deduplicated = Vec::new();
    let mut plain: Vec<(usize, &NewTask)> = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        if task.kind == TaskKind::Orchestration {
            ids[i] = merge_orchestration::<S::Db>(conn, task, now).await?;
        } else if task.unique.is_some() {
            let (id, outcome) = enqueue_unique::<S>(conn, task, now).await?;
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
        let inserted = S::insert_tasks(conn, &tasks, now).await?;
        for ((i, _), id) in plain.iter().zip(inserted) {
            ids[*i] = id;
        }
    }
    Ok(Inserted { ids, deduplicated })
}

/// Inserts an orchestration task, one per instance: a pending one absorbs the new one; a leased
/// one is marked to run again when its holder settles it.
async fn merge_orchestration<DB: Dialect>(
    conn: &mut DB::Connection,
    task: &NewTask,
    now: Timestamp,
) -> Result<i64> {
    Stmt::<DB>::new(sql(format!(
        "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, payload, \
           traceparent) \
         VALUES ('orchestration', $1, $2, $3, $4, $5, \
           COALESCE($6, (SELECT affinity FROM instances WHERE id = $2)), $7, $8) \
         ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO UPDATE SET \
         rerun = tasks.rerun OR tasks.lease_owner IS NOT NULL, \
         traceparent = COALESCE(tasks.traceparent, excluded.traceparent), \
         visible_at = CASE WHEN tasks.lease_owner IS NULL \
           THEN {least}(tasks.visible_at, excluded.visible_at) ELSE tasks.visible_at END, \
         priority = {greatest}(tasks.priority, excluded.priority) \
         RETURNING id",
        least = DB::LEAST,
        greatest = DB::GREATEST,
    )))
    .bind(task.queue.as_str())
    .bind(task.instance_id.clone())
    .bind(task.priority)
    .bind(task.visible_at.unwrap_or(now).as_micros())
    .bind(now.as_micros())
    .bind(task.affinity.clone())
    .bind(task.payload.clone())
    .bind(task.traceparent.clone())
    .fetch_one(conn)
    .await?
    .get("id")
}

/// Inserts tasks that are neither orchestrations nor unique, a statement each; returns their ids
/// in order. The default of [`SqlStore::insert_tasks`].
pub(crate) async fn insert_one_by_one<DB: Dialect>(
    conn: &mut DB::Connection,
    tasks: &[NewTask],
    now: Timestamp,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (visible_at, lease_owner, attempts) = match &task.lease_to {
            Some((worker, lease)) => ((now + *lease).as_micros(), Some(worker.clone()), 1),
            None => (task.visible_at.unwrap_or(now).as_micros(), None, 0),
        };
        let id = Stmt::<DB>::new(
            "INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, affinity, \
             payload, lease_owner, attempts, concurrency_key, concurrency_limit, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(task.kind.as_str())
        .bind(task.queue.as_str())
        .bind(task.instance_id.clone())
        .bind(task.priority)
        .bind(visible_at)
        .bind(now.as_micros())
        .bind(task.affinity.clone())
        .bind(task.payload.clone())
        .bind(lease_owner)
        .bind(attempts)
        .bind(task.concurrency.as_ref().map(|c| c.0.clone()))
        .bind(task.concurrency.as_ref().map(|c| c.1 as i32))
        .bind(task.traceparent.clone())
        .fetch_one(&mut *conn)
        .await?
        .get("id")?;
        ids.push(id);
    }
    Ok(ids)
}

/// Enqueues one job with a unique key. The key's row is taken first (on PostgreSQL a concurrent
/// transaction taking it waits for this one to end), then the job inserted under it; a key whose
/// window passed, or whose job finished, is taken over.
async fn enqueue_unique<S: SqlStore>(
    conn: &mut Conn<S>,
    task: &NewTask,
    now: Timestamp,
) -> Result<(i64, Enqueued)> {
    let unique = task.unique.as_ref().expect("called for unique tasks");
    if task.kind != TaskKind::Job {
        return Err(Error::Invalid("only jobs take a unique key".into()));
    }
    let expires = unique.window.map_or(HELD, |w| (now + w).as_micros());
    let taken = Stmt::<S::Db>::new(
        "INSERT INTO job_keys (key, task_id, expires_at, until_finished) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(unique.key.as_str())
    .bind(expires)
    .bind(unique.window.is_none())
    .execute(&mut *conn)
    .await?
        == 1;
    let mut existing = 0;
    if !taken {
        // Lock the holder's key row (on PostgreSQL, its latest committed version), then look at
        // its job in a statement of its own: on PostgreSQL a fresh snapshot, which sees a job
        // that the transaction this one waited for inserted.
        let holder = Stmt::<S::Db>::new(sql(format!(
            "SELECT task_id, expires_at, until_finished FROM job_keys WHERE key = $1{}",
            S::Db::FOR_UPDATE
        )))
        .bind(unique.key.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let task_id: i64 = holder.get("task_id")?;
        let live = holder.get::<i64>("expires_at")? > now.as_micros()
            && (!holder.get::<bool>("until_finished")?
                || Stmt::<S::Db>::new("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1) AS live")
                    .bind(task_id)
                    .fetch_one(&mut *conn)
                    .await?
                    .get::<bool>("live")?);
        if live {
            existing = task_id;
        } else {
            Stmt::<S::Db>::new(
                "UPDATE job_keys SET task_id = 0, expires_at = $2, until_finished = $3 WHERE key = $1",
            )
            .bind(unique.key.as_str())
            .bind(expires)
            .bind(unique.window.is_none())
            .execute(&mut *conn)
            .await?;
        }
    }
    if existing == 0 {
        let id = S::insert_tasks(&mut *conn, std::slice::from_ref(task), now).await?[0];
        Stmt::<S::Db>::new("UPDATE job_keys SET task_id = $2 WHERE key = $1")
            .bind(unique.key.as_str())
            .bind(id)
            .execute(conn)
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
            let replaced = Stmt::<S::Db>::new(
                "UPDATE tasks SET payload = $2, priority = $3, \
                   visible_at = CASE WHEN held IS NULL THEN $4 ELSE visible_at END, \
                   held_visible_at = CASE WHEN held IS NULL THEN NULL ELSE $4 END, \
                   traceparent = $5 \
                 WHERE id = $1 AND lease_owner IS NULL AND attempts = 0",
            )
            .bind(existing)
            .bind(task.payload.clone())
            .bind(task.priority)
            .bind(task.visible_at.unwrap_or(now).as_micros())
            .bind(task.traceparent.clone())
            .execute(conn)
            .await?;
            match replaced {
                1 => Ok((existing, Enqueued::Replaced)),
                _ => Ok((existing, Enqueued::Existing)),
            }
        }
    }
}
