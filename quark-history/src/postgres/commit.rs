//! The atomic commit on PostgreSQL, one at a time, and the statements that write a plan's task
//! rows (shared with the batch in [`super::batch`]).
//!
//! A single commit keeps two fast paths that read nothing first: a known head is appended to with
//! one conditional statement (see [`super::heads`]), and a completed task that needs nothing else
//! is deleted in one statement. Everything else follows the [plan's rules](crate::plan).

use std::collections::BTreeSet;

use sqlx::{PgConnection, Postgres, Transaction};

use super::PostgresStore;
use super::heads::Head;
use super::journal::append_in_tx;
use super::queue::{insert_plain, woken_instances};
use crate::clock::Timestamp;
use crate::commit::{Commit, Committed, Settle};
use crate::error::{Error, Result};
use crate::plan::{self, Settled, TaskRow, TaskWrite};
use crate::queue::TaskKind;
use crate::rows::{check_tasks, visible_queues};
use crate::sql::enqueue::enqueue;
use crate::sql::jobs::{Finish, Finished};
use crate::sql::locked::{TASK_COLUMNS, task_row};
use crate::sql::{Row, SqlStore};

/// Writes settled tasks as planned, a statement per kind of write whatever their number.
pub(super) async fn write_settles(
    conn: &mut PgConnection,
    store: &PostgresStore,
    settles: &[TaskWrite],
    now: Timestamp,
) -> Result<()> {
    let mut finish = Vec::new();
    let mut release = Vec::new();
    let mut dead = Vec::new();
    for write in settles {
        match write {
            TaskWrite::Complete { task_id, kind } => finish.push(Finished {
                id: *task_id,
                kind: *kind,
                how: Finish::Completed,
                error: None,
            }),
            TaskWrite::Cancel {
                task_id,
                kind,
                error,
            } => finish.push(Finished {
                id: *task_id,
                kind: *kind,
                how: Finish::Cancelled,
                error: Some(error.clone()),
            }),
            TaskWrite::Release {
                task_id,
                at,
                affinity,
                error,
            } => release.push((
                *task_id,
                at.as_micros(),
                affinity.as_deref(),
                error.as_deref(),
            )),
            TaskWrite::Dead { task_id, error } => dead.push((*task_id, error.as_str())),
        }
    }
    if !dead.is_empty() {
        let ids: Vec<i64> = dead.iter().map(|(id, _)| *id).collect();
        sqlx::query(
            "WITH moved AS (INSERT INTO dead_tasks (id, kind, queue, instance_id, priority, attempts, error, created_at, \
               died_at, payload, concurrency_key, concurrency_limit, traceparent) \
             SELECT t.id, t.kind, t.queue, t.instance_id, t.priority, t.attempts, u.error, t.created_at, $1, t.payload, \
               t.concurrency_key, t.concurrency_limit, t.traceparent \
             FROM tasks t JOIN UNNEST($2::bigint[], $3::text[]) AS u(id, error) ON t.id = u.id RETURNING id) \
             DELETE FROM tasks WHERE id = ANY($2)",
        )
        .bind(now.as_micros())
        .bind(&ids)
        .bind(dead.iter().map(|(_, e)| *e).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    store.finish_tasks(conn, &finish, now).await?;
    if !release.is_empty() {
        sqlx::query(
            "UPDATE tasks AS t SET lease_owner = NULL, rerun = false, visible_at = u.at, \
             affinity = COALESCE(u.affinity, t.affinity), last_error = COALESCE(u.error, t.last_error) \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS u(id, at, affinity, error) \
             WHERE t.id = u.id",
        )
        .bind(release.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(release.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(release.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(release.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Blocks the instances whose turns were dead-lettered, those still running (one that ended
/// meanwhile stays ended).
pub(super) async fn write_blocks(
    conn: &mut PgConnection,
    instances: &[String],
    now: Timestamp,
) -> Result<()> {
    if instances.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE instances SET status = 'blocked', updated_at = $2 \
         WHERE id = ANY($1) AND status = 'running'",
    )
    .bind(instances)
    .bind(now.as_micros())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes and cancels the outstanding work a plan drops: rows this transaction locked or
/// inserted, so it waits for nobody.
pub(super) async fn write_drop(
    conn: &mut PgConnection,
    delete: &[i64],
    cancel: &[i64],
) -> Result<()> {
    if delete.is_empty() && cancel.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH dropped AS (DELETE FROM tasks WHERE id = ANY($1)) \
         UPDATE tasks SET cancel_requested = true WHERE id = ANY($2)",
    )
    .bind(delete)
    .bind(cancel)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a commit wrote, and whom to tell once it is committed.
struct Written {
    committed: Committed,
    announce: BTreeSet<(String, TaskKind)>,
    /// The heads the appends left, learnt once the transaction committed.
    heads: Vec<(String, Option<Head>)>,
}

/// How many times one commit is tried when the database rolls it back for a deadlock or a
/// serialization failure.
const TRANSIENT_ATTEMPTS: u32 = 3;

/// Every write path locks task rows before instance rows, each in id order, so that two commits
/// cannot deadlock. A commit that wakes an orchestration merges into its task row after appending
/// to the instance, and one that ends an instance drops its activities and timers after appending
/// the closing event; lock those rows (and the settled task) up front, in one statement, and
/// return them: the ending instances' activities and timers among them are what the commit drops.
async fn lock_tasks_first(
    tx: &mut Transaction<'static, Postgres>,
    commit: &Commit,
) -> Result<Vec<TaskRow>> {
    let woken = woken_instances(&commit.tasks);
    let ending = commit.ending_instances();
    if woken.is_empty() && ending.is_empty() {
        return Ok(Vec::new());
    }
    let settled = commit.settle.as_ref().map_or(-1, |s| s.lease().task_id);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 \
         OR (kind = 'orchestration' AND instance_id = ANY($2)) \
         OR (instance_id = ANY($3) AND kind IN ('activity', 'timer')) ORDER BY id FOR UPDATE"
    )))
    .bind(settled)
    .bind(&woken)
    .bind(&ending)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|r| task_row(&Row::<sqlx::Postgres>::new(r)))
        .collect()
}

/// Settles the task a commit was done under.
async fn settle_in_tx(
    tx: &mut Transaction<'static, Postgres>,
    store: &PostgresStore,
    settle: &Settle,
    now: Timestamp,
) -> Result<Settled> {
    let lease = settle.lease();
    if let Settle::Complete(_) = settle {
        // The common case in one round trip: a completed turn, activity or timer whose task is
        // simply deleted (and, for a turn, whose worker becomes the instance's affinity): what
        // the rules plan for such a row. Anything else (a lost lease, a rerun, a cancellation, a
        // job with its record) takes the path below.
        let done: Option<String> = sqlx::query_scalar(
            "WITH d AS (DELETE FROM tasks WHERE id = $1 AND attempts = $2 AND lease_owner = $3 \
               AND kind IN ('orchestration', 'activity', 'timer') AND NOT rerun AND NOT cancel_requested \
               RETURNING kind, instance_id), \
             a AS (UPDATE instances i SET affinity = $3, \
               status = CASE WHEN i.status = 'blocked' THEN 'running' ELSE i.status END FROM d \
               WHERE d.kind = 'orchestration' AND i.id = d.instance_id \
               AND (i.affinity IS DISTINCT FROM $3 OR i.status = 'blocked')) \
             SELECT kind FROM d",
        )
        .bind(lease.task_id)
        .bind(lease.attempt as i32)
        .bind(&lease.worker)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(kind) = done {
            return Ok(Settled {
                write: TaskWrite::Complete {
                    task_id: lease.task_id,
                    kind: kind.parse().map_err(Error::Invalid)?,
                },
                affinity: None,
                blocks: None,
                announce: None,
            });
        }
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND attempts = $2 AND lease_owner = $3 FOR UPDATE"
    )))
    .bind(lease.task_id)
    .bind(lease.attempt as i32)
    .bind(&lease.worker)
    .fetch_optional(&mut **tx)
    .await?;
    let row = row
        .map(|r| task_row(&Row::<sqlx::Postgres>::new(r)))
        .transpose()?;
    let settled = plan::settle(settle, row.as_ref(), false, now)?;
    if let Some((instance, worker)) = &settled.affinity {
        sqlx::query(
            "UPDATE instances SET affinity = $2, \
             status = CASE WHEN status = 'blocked' THEN 'running' ELSE status END \
             WHERE id = $1 AND (affinity IS DISTINCT FROM $2 OR status = 'blocked')",
        )
        .bind(instance)
        .bind(worker)
        .execute(&mut **tx)
        .await?;
    }
    write_settles(tx, store, std::slice::from_ref(&settled.write), now).await?;
    write_blocks(tx, settled.blocks.as_slice(), now).await?;
    Ok(settled)
}

impl PostgresStore {
    pub(super) async fn commit_impl(&self, commit: Commit) -> Result<Committed> {
        check_tasks(&self.config, &commit.tasks)?;
        let messages = crate::outbox::prepare(&self.config, &commit.outbox)?;
        let now = self.config.clock.now();
        if commit.appends.is_empty()
            && commit.settle.is_none()
            && messages.is_empty()
            && commit.receive.is_empty()
            && commit
                .tasks
                .iter()
                .all(|t| t.kind != TaskKind::Orchestration && t.is_plain())
        {
            // Plain tasks only: one INSERT statement, atomic by itself, one round trip.
            let mut conn = self.pool.acquire().await?;
            let task_ids = insert_plain(&mut conn, &commit.tasks, now).await?;
            self.announce(visible_queues(&commit.tasks, now));
            return Ok(Committed {
                appended: Vec::new(),
                task_ids,
                deduplicated: Vec::new(),
            });
        }
        // A deadlock or a serialization failure rolled the whole transaction back and wrote
        // nothing: run it again a few times before giving up. Giving up releases the task, and
        // an activity's task released after its code ran runs its code again.
        let mut attempt = 1;
        loop {
            let tried = async {
                let mut tx = self.begin().await?;
                let written = self.write(&mut tx, &commit, &messages, now).await?;
                tx.commit().await?;
                Ok::<_, Error>(written)
            }
            .await;
            match tried {
                Ok(written) => return Ok(self.after_commit(written)),
                Err(e @ Error::Transient(_)) if attempt < TRANSIENT_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "commit rolled back by the database; running it again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `commit` inside the caller's transaction `tx` (begun with `Store::begin_tx`) and
    /// commits it.
    pub(super) async fn commit_tx_impl(
        &self,
        mut tx: Transaction<'static, Postgres>,
        commit: Commit,
    ) -> Result<Committed> {
        check_tasks(&self.config, &commit.tasks)?;
        let messages = crate::outbox::prepare(&self.config, &commit.outbox)?;
        let now = self.config.clock.now();
        let written = self.write(&mut tx, &commit, &messages, now).await?;
        tx.commit().await?;
        Ok(self.after_commit(written))
    }

    /// Writes a checked commit inside `tx`; the caller commits.
    async fn write(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commit: &Commit,
        messages: &[crate::outbox::MessageRow],
        now: Timestamp,
    ) -> Result<Written> {
        let locked = lock_tasks_first(tx, commit).await?;
        crate::sql::receive::<sqlx::Postgres>(tx, &commit.receive, now).await?;
        let mut announce: BTreeSet<(String, TaskKind)> = visible_queues(&commit.tasks, now);
        let settled = match &commit.settle {
            Some(settle) => Some(settle_in_tx(tx, self, settle, now).await?),
            None => None,
        };
        announce.extend(settled.as_ref().and_then(|s| s.announce.clone()));
        let mut appended = Vec::with_capacity(commit.appends.len());
        let mut heads = Vec::with_capacity(commit.appends.len());
        for append in &commit.appends {
            let (range, head) = append_in_tx(tx, self, append, now).await?;
            appended.push(range);
            heads.push((append.instance_id.clone(), head));
        }
        if let Some(s) = &settled {
            for (stream, worker) in plan::entity_homes(commit, &s.write) {
                sqlx::query(
                    "UPDATE instances SET affinity = $2 WHERE id = $1 AND affinity IS DISTINCT FROM $2",
                )
                .bind(stream)
                .bind(worker)
                .execute(&mut **tx)
                .await?;
            }
        }
        let inserted = enqueue::<PostgresStore>(tx, &commit.tasks, now).await?;
        let ending: BTreeSet<&str> = commit.ending_instances().into_iter().collect();
        if !ending.is_empty() {
            let (mut gone, mut released) = (BTreeSet::new(), BTreeSet::new());
            match settled.as_ref().map(|s| &s.write) {
                Some(TaskWrite::Release { task_id, .. }) => released.insert(*task_id),
                Some(write) => gone.insert(write.task_id()),
                None => false,
            };
            let dropped =
                plan::drop_outstanding(&ending, &locked, &gone, &released, &commit.tasks, now);
            let (delete, cancel) = dropped.ids(&inserted.ids);
            write_drop(tx, &delete, &cancel).await?;
        }
        super::outbox::insert_messages(tx, messages, now).await?;
        if !messages.is_empty() {
            announce.insert((crate::OUTBOX_WAKE_QUEUE.to_string(), TaskKind::Outbox));
        }
        Ok(Written {
            committed: Committed {
                appended,
                task_ids: inserted.ids,
                deduplicated: inserted.deduplicated,
            },
            announce,
            heads,
        })
    }

    /// Tells this process's idle workers and relays, and other processes, what a committed write
    /// made claimable, and keeps the heads it left.
    fn after_commit(&self, written: Written) -> Committed {
        self.heads.learn(written.heads);
        self.announce(written.announce);
        written.committed
    }
}
