//! The atomic commit on SQLite: read the rows a commit touches, plan, write the plan.
//!
//! Every write transaction is `BEGIN IMMEDIATE` on the one writer connection, so the plain reads
//! here are as good as locks: nobody else writes until the transaction ends.

use std::collections::BTreeSet;

use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::SCHEMA_VERSION;
use crate::plan::{self, EventRow, InstanceWrite, Locked, TaskWrite};
use crate::queue::TaskKind;
use crate::rows::check_tasks;
use crate::sql::enqueue::enqueue;
use crate::sql::jobs::{Finish, Finished};
use crate::sql::locked::{HEAD_COLUMNS, TASK_COLUMNS, instance_head, task_row};
use crate::sql::{Row, SqlStore};
use crate::wakeup::Wake;

/// What one commit wrote, and what to announce once its transaction has committed.
struct Written {
    committed: Committed,
    announce: BTreeSet<(String, TaskKind)>,
    outbox: bool,
}

/// Reads the rows `commit` touches: its settled task, the instances it appends to, and the
/// activities and timers of the instances it ends (through the `tasks_by_instance` index).
async fn read_locked(tx: &mut SqliteConnection, commit: &Commit) -> Result<Locked> {
    let mut locked = Locked::default();
    let mut rows = Vec::new();
    if let Some(settle) = &commit.settle {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        rows.extend(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(settle.lease().task_id)
                .fetch_optional(&mut *tx)
                .await?,
        );
    }
    let ending: BTreeSet<&str> = commit.ending_instances().into_iter().collect();
    for instance in ending {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE instance_id = ?1 AND kind IN ('activity', 'timer')"
        );
        rows.extend(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(instance)
                .fetch_all(&mut *tx)
                .await?,
        );
    }
    for row in rows {
        let task = task_row(&Row::<sqlx::Sqlite>::new(row))?;
        locked.tasks.insert(task.id, task);
    }
    let appended: BTreeSet<&str> = commit
        .appends
        .iter()
        .map(|a| a.instance_id.as_str())
        .collect();
    for id in appended {
        let sql = format!("SELECT {HEAD_COLUMNS} FROM instances WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let (id, head) = instance_head(&Row::<sqlx::Sqlite>::new(row))?;
            locked.instances.insert(id, head);
        }
    }
    Ok(locked)
}

/// Inserts planned events and moves their instances' heads.
pub(super) async fn write_appends(
    tx: &mut SqliteConnection,
    events: &[EventRow],
    instances: &[InstanceWrite],
) -> Result<()> {
    for e in events {
        sqlx::query(
            "INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&e.instance_id)
        .bind(e.encoded.seq as i64)
        .bind(e.encoded.kind)
        .bind(SCHEMA_VERSION)
        .bind(e.encoded.codec)
        .bind(&e.encoded.bytes)
        .bind(e.at.as_micros())
        .bind(e.encoded.hash.as_slice())
        .execute(&mut *tx)
        .await?;
    }
    for i in instances {
        sqlx::query(
            "UPDATE instances SET next_seq = ?2, last_hash = ?3, status = COALESCE(?4, status), \
             history_bytes = history_bytes + ?5, updated_at = ?6, output_codec = COALESCE(?7, output_codec), \
             output = COALESCE(?8, output) WHERE id = ?1",
        )
        .bind(&i.id)
        .bind(i.head.next_seq as i64)
        .bind(i.head.last_hash.as_slice())
        .bind(i.head.written_status())
        .bind(i.added_bytes)
        .bind(i.updated_at.as_micros())
        .bind(i.output.as_ref().map(|o| o.codec().as_i16()))
        .bind(i.output.as_ref().map(|o| o.as_bytes()))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Settles tasks as planned.
async fn write_settles(
    tx: &mut SqliteConnection,
    store: &SqliteStore,
    settles: &[TaskWrite],
    now: Timestamp,
) -> Result<()> {
    for write in settles {
        match write {
            TaskWrite::Complete { task_id, kind } => {
                let finished = Finished {
                    id: *task_id,
                    kind: *kind,
                    how: Finish::Completed,
                    error: None,
                };
                store.finish_tasks(tx, &[finished], now).await?
            }
            TaskWrite::Cancel {
                task_id,
                kind,
                error,
            } => {
                let finished = Finished {
                    id: *task_id,
                    kind: *kind,
                    how: Finish::Cancelled,
                    error: Some(error.clone()),
                };
                store.finish_tasks(tx, &[finished], now).await?
            }
            TaskWrite::Release {
                task_id,
                at,
                affinity,
                error,
            } => {
                sqlx::query(
                    "UPDATE tasks SET lease_owner = NULL, rerun = 0, visible_at = ?2, \
                     affinity = COALESCE(?3, affinity), last_error = COALESCE(?4, last_error) WHERE id = ?1",
                )
                .bind(task_id)
                .bind(at.as_micros())
                .bind(affinity.as_deref())
                .bind(error.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            TaskWrite::Dead { task_id, error } => {
                sqlx::query(
                    "INSERT INTO dead_tasks (id, kind, queue, instance_id, priority, attempts, error, created_at, died_at, payload, \
                     concurrency_key, concurrency_limit, traceparent) \
                     SELECT id, kind, queue, instance_id, priority, attempts, ?2, created_at, ?3, payload, concurrency_key, \
                     concurrency_limit, traceparent \
                     FROM tasks WHERE id = ?1",
                )
                .bind(task_id)
                .bind(error)
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM tasks WHERE id = ?1")
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Deletes and cancels the outstanding work the plan drops.
async fn write_drop(tx: &mut SqliteConnection, delete: &[i64], cancel: &[i64]) -> Result<()> {
    for (ids, sql) in [
        (delete, "DELETE FROM tasks WHERE id = ?1"),
        (
            cancel,
            "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1",
        ),
    ] {
        for id in ids {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
    }
    Ok(())
}

impl SqliteStore {
    pub(super) async fn commit_impl(&self, commit: Commit) -> Result<Committed> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let written = self.write(&mut tx, &commit, now).await?;
        tx.commit().await?;
        Ok(self.after_commit(written))
    }

    /// Writes `commit` inside the caller's transaction `tx` (begun with `Store::begin_tx`) and
    /// commits it.
    pub(super) async fn commit_tx_impl(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        commit: Commit,
    ) -> Result<Committed> {
        let now = self.config.clock.now();
        let written = self.write(&mut tx, &commit, now).await?;
        tx.commit().await?;
        Ok(self.after_commit(written))
    }

    /// Many commits in one write transaction, each inside a savepoint of its own: one that fails
    /// is rolled back alone and gets its error; the others are written by one `COMMIT`, the
    /// outcome being as if they had been committed one after another in this order.
    pub(super) async fn commit_many_impl(&self, commits: Vec<Commit>) -> Vec<Result<Committed>> {
        if commits.len() <= 1 {
            let mut out = Vec::new();
            for c in commits {
                out.push(self.commit_impl(c).await);
            }
            return out;
        }
        match self.write_many(&commits).await {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map(|w| self.after_commit(w)))
                .collect(),
            Err(e) => {
                // The transaction as a whole failed: nothing of it was written.
                tracing::debug!(error = %e, size = commits.len(), "batch commit failed; committing one by one");
                let mut out = Vec::with_capacity(commits.len());
                for c in commits {
                    out.push(self.commit_impl(c).await);
                }
                out
            }
        }
    }

    async fn write_many(&self, commits: &[Commit]) -> Result<Vec<Result<Written>>> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let mut results = Vec::with_capacity(commits.len());
        for commit in commits {
            let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
            match self.write(&mut savepoint, commit, now).await {
                Ok(written) => {
                    savepoint.commit().await?;
                    results.push(Ok(written));
                }
                Err(e) => {
                    savepoint.rollback().await?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Writes one commit inside an open write transaction.
    async fn write(
        &self,
        tx: &mut SqliteConnection,
        commit: &Commit,
        now: Timestamp,
    ) -> Result<Written> {
        check_tasks(&self.config, &commit.tasks)?;
        let messages = crate::outbox::prepare(&self.config, &commit.outbox)?;
        crate::sql::receive::<sqlx::Sqlite>(tx, &commit.receive, now).await?;
        let locked = read_locked(tx, commit).await?;
        let mut plan = plan::plan(
            &self.config,
            now,
            std::slice::from_ref(commit),
            vec![None],
            &locked,
        );
        let appended = plan.results.remove(0)?;
        write_settles(tx, self, &plan.settles, now).await?;
        for (instance, worker) in &plan.affinity {
            sqlx::query(
                "UPDATE instances SET affinity = ?2, \
                 status = CASE WHEN status = 'blocked' THEN 'running' ELSE status END WHERE id = ?1",
            )
            .bind(instance)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        }
        for instance in &plan.blocked {
            sqlx::query(
                "UPDATE instances SET status = 'blocked', updated_at = ?2 \
                 WHERE id = ?1 AND status = 'running'",
            )
            .bind(instance)
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        write_appends(tx, &plan.events, &plan.instances).await?;
        let inserted = enqueue::<SqliteStore>(tx, &plan.tasks, now).await?;
        let (task_ids, deduplicated) = (inserted.ids, inserted.deduplicated);
        let (delete, cancel) = plan.dropped.ids(&task_ids);
        write_drop(tx, &delete, &cancel).await?;
        super::outbox::insert_messages(tx, &messages, now).await?;
        Ok(Written {
            committed: Committed {
                appended,
                task_ids,
                deduplicated,
            },
            announce: plan.announce,
            outbox: !messages.is_empty(),
        })
    }

    /// Tells idle workers and relays what a committed write made claimable.
    fn after_commit(&self, written: Written) -> Committed {
        for (queue, kind) in written.announce {
            self.hub.announce(Wake::Queue { queue, kind });
        }
        if written.outbox {
            self.announce_outbox();
        }
        written.committed
    }
}
