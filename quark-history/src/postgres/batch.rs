//! Many commits in one transaction, with set-based statements: the group commit behind a busy
//! worker's throughput.
//!
//! The batch locks what its commits touch (tasks, then instances, each in id order, so that
//! concurrent batches cannot deadlock each other), [plans](crate::plan::plan) the commits against
//! those rows as if they ran one after another, and writes the plan with a handful of `UNNEST`
//! statements whatever the number of commits. A commit that would fail (a lost lease, a conflict,
//! a closed instance) is left out and gets its error.

use std::collections::{BTreeSet, HashMap};

use super::PostgresStore;
use super::commit::{write_blocks, write_drop, write_settles};
use super::heads::Head;
use super::queue::woken_instances;
use crate::commit::{Commit, Committed};
use crate::error::{Error, Result};
use crate::event::SCHEMA_VERSION;
use crate::plan::{self, Locked, WritePlan};
use crate::queue::TaskKind;
use crate::rows::check_tasks;
use crate::sql::Row;
use crate::sql::enqueue::enqueue;
use crate::sql::locked::{HEAD_COLUMNS, TASK_COLUMNS, instance_head, task_row};

impl PostgresStore {
    pub(super) async fn commit_many_impl(&self, commits: Vec<Commit>) -> Vec<Result<Committed>> {
        // A commit that records inbox ids can fail on a duplicate that only the database sees;
        // such batches (rare: relayed signals commit on their own) go one by one.
        if commits.len() <= 1 || commits.iter().any(|c| !c.receive.is_empty()) {
            let mut out = Vec::new();
            for c in commits {
                out.push(self.commit_impl(c).await);
            }
            return out;
        }
        match self.batch(&commits).await {
            Ok(results) => results,
            Err(e) => {
                // The batch as a whole failed (a deadlock with a single commit, a dropped
                // connection): nothing of it was written, so commit one by one.
                tracing::debug!(error = %e, size = commits.len(), "batch commit failed; committing one by one");
                let mut out = Vec::with_capacity(commits.len());
                for c in commits {
                    out.push(self.commit_impl(c).await);
                }
                out
            }
        }
    }

    /// Locks what `commits` touch: the settled tasks, the orchestration tasks they merge into and
    /// the activities and timers of the instances they end, then the instances they append to.
    async fn lock(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
        refused: &[Option<Error>],
    ) -> Result<Locked> {
        let mut locked = Locked::default();
        let settled: Vec<i64> = commits
            .iter()
            .filter_map(|c| c.settle.as_ref().map(|s| s.lease().task_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let woken: Vec<&str> = commits
            .iter()
            .flat_map(|c| woken_instances(&c.tasks))
            .collect();
        let ending: Vec<&str> = commits.iter().flat_map(|c| c.ending_instances()).collect();
        if !settled.is_empty() || !woken.is_empty() || !ending.is_empty() {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks \
                 WHERE id = ANY($1) OR (kind = 'orchestration' AND instance_id = ANY($2)) \
                 OR (instance_id = ANY($3) AND kind IN ('activity', 'timer')) \
                 ORDER BY id FOR UPDATE"
            )))
            .bind(&settled)
            .bind(&woken)
            .bind(&ending)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let task = task_row(&Row::<sqlx::Postgres>::new(row))?;
                locked.tasks.insert(task.id, task);
            }
        }
        let instances: Vec<&str> = commits
            .iter()
            .zip(refused)
            .filter(|(_, r)| r.is_none())
            .flat_map(|(c, _)| c.appends.iter().map(|a| a.instance_id.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !instances.is_empty() {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {HEAD_COLUMNS} FROM instances WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            )))
            .bind(&instances)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let (id, head) = instance_head(&Row::<sqlx::Postgres>::new(row))?;
                locked.instances.insert(id, head);
            }
        }
        Ok(locked)
    }

    async fn batch(&self, commits: &[Commit]) -> Result<Vec<Result<Committed>>> {
        let now = self.config.clock.now();
        let mut refused: Vec<Option<Error>> = Vec::with_capacity(commits.len());
        let mut messages: Vec<Vec<crate::outbox::MessageRow>> = Vec::with_capacity(commits.len());
        for c in commits {
            let checked = check_tasks(&self.config, &c.tasks);
            match crate::outbox::prepare(&self.config, &c.outbox) {
                Ok(rows) => {
                    messages.push(rows);
                    refused.push(checked.err());
                }
                Err(e) => {
                    messages.push(Vec::new());
                    refused.push(Some(checked.err().unwrap_or(e)));
                }
            }
        }
        let mut tx = self.begin().await?;
        let locked = self.lock(&mut tx, commits, &refused).await?;
        let plan = plan::plan(&self.config, now, commits, refused, &locked);
        self.write_plan(&mut tx, &plan, now).await?;
        let inserted = enqueue::<PostgresStore>(&mut tx, &plan.tasks, now).await?;
        let (delete, cancel) = plan.dropped.ids(&inserted.ids);
        write_drop(&mut tx, &delete, &cancel).await?;
        // Outbox messages, in commit order. A taken idempotency key fails the whole batch, which
        // is then committed one by one, so that only its own commit fails.
        let rows: Vec<crate::outbox::MessageRow> = plan
            .live()
            .flat_map(|i| messages[i].iter().cloned())
            .collect();
        super::outbox::insert_messages(&mut tx, &rows, now).await?;
        tx.commit().await?;

        // Every instance read here was locked until the commit, so its state is its head now.
        self.heads.learn(plan.heads.iter().map(|(id, h)| {
            let head = (!h.status.is_closed()).then_some(Head {
                next_seq: h.next_seq,
                last_hash: h.last_hash,
                stream: h.status == crate::InstanceStatus::Stream,
            });
            (id.clone(), head)
        }));
        let mut announce = plan.announce;
        if !rows.is_empty() {
            announce.insert((crate::OUTBOX_WAKE_QUEUE.to_string(), TaskKind::Outbox));
        }
        self.announce(announce);
        let mut ids = inserted.ids.into_iter();
        let mut deduplicated = inserted.deduplicated.into_iter().peekable();
        let mut offset = 0;
        Ok(plan
            .results
            .into_iter()
            .zip(commits)
            .map(|(result, c)| {
                let appended = result?;
                let n = c.tasks.len();
                let mut mine = Vec::new();
                while let Some((i, e)) = deduplicated.next_if(|(i, _)| *i < offset + n) {
                    mine.push((i - offset, e));
                }
                offset += n;
                Ok(Committed {
                    appended,
                    task_ids: ids.by_ref().take(n).collect(),
                    deduplicated: mine,
                })
            })
            .collect())
    }

    /// Writes the histories, the instances and the settled tasks of a plan.
    async fn write_plan(
        &self,
        tx: &mut sqlx::PgConnection,
        plan: &WritePlan,
        now: crate::Timestamp,
    ) -> Result<()> {
        // The worker that ran a turn keeps its instance warm: it becomes the instance's affinity,
        // written with the instance's new head where the turn appended events (and a blocked
        // instance whose turn completed runs again).
        let mut affinity: HashMap<&str, &str> = plan
            .affinity
            .iter()
            .map(|(i, w)| (i.as_str(), w.as_str()))
            .collect();
        let events = &plan.events;
        if !events.is_empty() {
            sqlx::query(
                "INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
                 SELECT instance_id, seq, kind, $1, codec, payload, recorded_at, hash FROM UNNEST(\
                 $2::text[], $3::bigint[], $4::text[], $5::smallint[], $6::bytea[], $7::bigint[], $8::bytea[]) \
                 AS e(instance_id, seq, kind, codec, payload, recorded_at, hash)",
            )
            .bind(SCHEMA_VERSION)
            .bind(events.iter().map(|e| e.instance_id.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.seq as i64).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.kind).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.codec).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.bytes.as_slice()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.at.as_micros()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.hash.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            let updates = &plan.instances;
            sqlx::query(
                "UPDATE instances AS i SET next_seq = u.next_seq, last_hash = u.last_hash, \
                 status = CASE WHEN u.status IS NOT NULL THEN u.status \
                   WHEN u.affinity IS NOT NULL AND i.status = 'blocked' THEN 'running' ELSE i.status END, \
                 history_bytes = i.history_bytes + u.added, updated_at = u.updated_at, \
                 output_codec = COALESCE(u.output_codec, i.output_codec), output = COALESCE(u.output, i.output), \
                 affinity = COALESCE(u.affinity, i.affinity) \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::bigint[], $6::bigint[], \
                 $7::smallint[], $8::bytea[], $9::text[]) \
                 AS u(id, next_seq, last_hash, status, added, updated_at, output_codec, output, affinity) \
                 WHERE i.id = u.id",
            )
            .bind(updates.iter().map(|u| u.id.as_str()).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.head.next_seq as i64).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.head.last_hash.as_slice()).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.head.written_status()).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.added_bytes).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.updated_at.as_micros()).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.output.as_ref().map(|o| o.codec().as_i16())).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| u.output.as_ref().map(|o| o.as_bytes())).collect::<Vec<_>>())
            .bind(updates.iter().map(|u| affinity.remove(u.id.as_str())).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        write_settles(tx, self, &plan.settles, now).await?;
        // Turns that appended nothing: their instances' affinity alone, if it changes.
        if !affinity.is_empty() {
            let affinity: Vec<(&str, &str)> = affinity.into_iter().collect();
            sqlx::query(
                "UPDATE instances AS i SET affinity = u.worker, \
                 status = CASE WHEN i.status = 'blocked' THEN 'running' ELSE i.status END \
                 FROM UNNEST($1::text[], $2::text[]) AS u(id, worker) \
                 WHERE i.id = u.id AND (i.affinity IS DISTINCT FROM u.worker OR i.status = 'blocked')",
            )
            .bind(affinity.iter().map(|(i, _)| *i).collect::<Vec<_>>())
            .bind(affinity.iter().map(|(_, w)| *w).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        write_blocks(tx, &plan.blocked, now).await?;
        Ok(())
    }
}
