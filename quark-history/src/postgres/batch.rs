//! Many commits in one transaction, with set-based statements: the group commit behind a busy
//! worker's throughput.
//!
//! The commits are validated in order against row-locked state (leases, then instances, each
//! locked in id order so that concurrent batches cannot deadlock each other), exactly as if they
//! ran one after another; a commit that would fail (a lost lease, a conflict, a closed instance)
//! is left out and gets its error, the others are written with a handful of `UNNEST` statements
//! whatever their number. The instances the batch ends lose their outstanding activities and
//! timers in the same transaction, as with a single commit.

use std::collections::{BTreeSet, HashMap};

use sqlx::Row;

use super::PostgresStore;
use super::heads::Head;
use super::jobs::{Finish, finish_tasks};
use super::queue::{drop_outstanding, enqueue_in_tx, enqueued_for, outstanding, woken_instances};
use crate::codec::Payload;
use crate::commit::{Commit, Committed, Expected, Settle};
use crate::error::{Error, Result};
use crate::event::{HistoryEvent, SCHEMA_VERSION};
use crate::instance::InstanceStatus;
use crate::queue::{FailAction, TaskKind};
use crate::rows::{EncodedEvent, check_tasks, encode_events, hash32, visible_queues};

#[derive(Clone)]
struct InstanceState {
    next_seq: u64,
    last_hash: [u8; 32],
    status: InstanceStatus,
    history_bytes: i64,
    output: Option<Payload>,
}

struct LockedTask {
    attempt: u32,
    owner: Option<String>,
    kind: TaskKind,
    rerun: bool,
    instance_id: Option<String>,
    queue: String,
    cancel_requested: bool,
}

/// One event row to insert.
struct EventRow {
    instance_id: String,
    at: i64,
    encoded: EncodedEvent,
}

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

    async fn batch(&self, commits: &[Commit]) -> Result<Vec<Result<Committed>>> {
        let now = self.config.clock.now();
        let n = commits.len();
        let mut failed: Vec<Option<Error>> = (0..n).map(|_| None).collect();
        let mut messages: Vec<Vec<crate::outbox::MessageRow>> = Vec::with_capacity(n);
        for (i, c) in commits.iter().enumerate() {
            if let Err(e) = check_tasks(&self.config, &c.tasks) {
                failed[i] = Some(e);
            }
            match crate::outbox::prepare(&self.config, &c.outbox) {
                Ok(rows) => messages.push(rows),
                Err(e) => {
                    messages.push(Vec::new());
                    failed[i].get_or_insert(e);
                }
            }
        }
        let mut tx = self.begin().await?;

        // Leases.
        let task_ids: Vec<i64> = commits
            .iter()
            .filter_map(|c| c.settle.as_ref().map(|s| s.lease().task_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // The orchestration task rows this batch merges into are locked here too, with the settled
        // ones, in id order and before any instance: every write path takes tasks, then instances.
        let woken: Vec<&str> = commits
            .iter()
            .flat_map(|c| woken_instances(&c.tasks))
            .collect();
        // So are the activities and timers of the instances the batch ends, which it drops.
        let ending: Vec<&str> = commits.iter().flat_map(|c| c.ending_instances()).collect();
        let mut locked: HashMap<i64, LockedTask> = HashMap::new();
        if !task_ids.is_empty() || !woken.is_empty() || !ending.is_empty() {
            let rows = sqlx::query(
                "SELECT id, attempts, lease_owner, kind, rerun, instance_id, queue, cancel_requested FROM tasks \
                 WHERE id = ANY($1) OR (kind = 'orchestration' AND instance_id = ANY($2)) \
                 OR (instance_id = ANY($3) AND kind IN ('activity', 'timer')) \
                 ORDER BY id FOR UPDATE",
            )
            .bind(&task_ids)
            .bind(&woken)
            .bind(&ending)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let kind: String = row.try_get("kind")?;
                locked.insert(
                    row.try_get("id")?,
                    LockedTask {
                        attempt: row.try_get::<i32, _>("attempts")? as u32,
                        owner: row.try_get("lease_owner")?,
                        kind: kind.parse().map_err(Error::Invalid)?,
                        rerun: row.try_get("rerun")?,
                        instance_id: row.try_get("instance_id")?,
                        queue: row.try_get("queue")?,
                        cancel_requested: row.try_get("cancel_requested")?,
                    },
                );
            }
        }
        for (i, c) in commits.iter().enumerate() {
            let Some(settle) = &c.settle else { continue };
            let lease = settle.lease();
            let held = locked.get(&lease.task_id).is_some_and(|t| {
                t.attempt == lease.attempt && t.owner.as_deref() == Some(lease.worker.as_str())
            });
            if failed[i].is_none() && !held {
                failed[i] = Some(Error::LeaseLost {
                    task_id: lease.task_id,
                    attempt: lease.attempt,
                });
            }
        }
        // A task settles once: the first commit of the batch that settles it and succeeds.
        let mut settled_tasks = BTreeSet::new();

        // Instances, and the appends simulated in commit order.
        let instance_ids: Vec<&str> = commits
            .iter()
            .enumerate()
            .filter(|(i, _)| failed[*i].is_none())
            .flat_map(|(_, c)| c.appends.iter().map(|a| a.instance_id.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut state: HashMap<String, InstanceState> = HashMap::new();
        if !instance_ids.is_empty() {
            let rows = sqlx::query(
                "SELECT id, next_seq, last_hash, status, history_bytes FROM instances \
                 WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(&instance_ids)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let status: String = row.try_get("status")?;
                let hash: Vec<u8> = row.try_get("last_hash")?;
                state.insert(
                    row.try_get("id")?,
                    InstanceState {
                        next_seq: row.try_get::<i64, _>("next_seq")? as u64,
                        last_hash: hash32(&hash),
                        status: status.parse().map_err(Error::Invalid)?,
                        history_bytes: row.try_get("history_bytes")?,
                        output: None,
                    },
                );
            }
        }
        let mut touched = BTreeSet::new();
        let mut events: Vec<EventRow> = Vec::new();
        let mut appended: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        for (i, c) in commits.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let mut scratch: HashMap<String, InstanceState> = HashMap::new();
            let mut rows = Vec::new();
            let simulated = (|| -> Result<()> {
                for append in &c.appends {
                    let id = append.instance_id.as_str();
                    if !scratch.contains_key(id) {
                        let current = state
                            .get(id)
                            .cloned()
                            .ok_or_else(|| Error::InstanceNotFound { id: id.to_string() })?;
                        scratch.insert(id.to_string(), current);
                    }
                    let st = scratch.get_mut(id).expect("inserted above");
                    if let Expected::Seq(expected) = append.expected
                        && expected != st.next_seq
                    {
                        return Err(Error::Conflict {
                            id: id.to_string(),
                            expected,
                            actual: st.next_seq,
                        });
                    }
                    if append.events.is_empty() {
                        appended[i].push((st.next_seq, st.next_seq - 1));
                        continue;
                    }
                    let encoded =
                        encode_events(&self.config, st.last_hash, st.next_seq, &append.events)?;
                    for event in &append.events {
                        if st.status.is_closed() {
                            return Err(Error::InstanceClosed {
                                id: id.to_string(),
                                status: st.status,
                            });
                        }
                        if let Some(closing) = event.closing_status() {
                            st.status = closing;
                            if let HistoryEvent::WorkflowCompleted { output } = event {
                                st.output = Some(output.clone());
                            }
                        }
                    }
                    let first = st.next_seq;
                    let last = encoded.last().expect("events are not empty");
                    st.next_seq = last.seq + 1;
                    st.last_hash = last.hash;
                    st.history_bytes += encoded.iter().map(|e| e.bytes.len() as i64).sum::<i64>();
                    appended[i].push((first, last.seq));
                    let at = append.at.unwrap_or(now).as_micros();
                    rows.extend(encoded.into_iter().map(|encoded| EventRow {
                        instance_id: id.to_string(),
                        at,
                        encoded,
                    }));
                }
                Ok(())
            })();
            let simulated = simulated.and_then(|()| match &c.settle {
                Some(settle) if !settled_tasks.insert(settle.lease().task_id) => {
                    let lease = settle.lease();
                    Err(Error::LeaseLost {
                        task_id: lease.task_id,
                        attempt: lease.attempt,
                    })
                }
                _ => Ok(()),
            });
            match simulated {
                Ok(()) => {
                    for (id, st) in scratch {
                        touched.insert(id.clone());
                        state.insert(id, st);
                    }
                    events.extend(rows);
                }
                Err(e) => {
                    appended[i].clear();
                    failed[i] = Some(e);
                }
            }
        }

        // Settle the leases.
        let mut delete: Vec<i64> = Vec::new();
        let mut finish: Vec<(i64, Finish, Option<String>)> = Vec::new();
        let mut release: Vec<(i64, i64, Option<String>, Option<String>)> = Vec::new();
        let mut dead: Vec<(i64, String)> = Vec::new();
        let mut affinity: Vec<(String, String)> = Vec::new();
        let mut announce: BTreeSet<(String, TaskKind)> = BTreeSet::new();
        // The first commit of the batch that ends each instance: a running activity of it that a
        // later commit fails is cancelled, as if the commits ran one after another.
        let mut ended_by: HashMap<&str, usize> = HashMap::new();
        for (i, c) in commits.iter().enumerate() {
            if failed[i].is_none() {
                for id in c.ending_instances() {
                    ended_by.entry(id).or_insert(i);
                }
            }
        }
        for (i, c) in commits.iter().enumerate() {
            let (None, Some(settle)) = (&failed[i], &c.settle) else {
                continue;
            };
            let lease = settle.lease();
            let task = &locked[&lease.task_id];
            let cancelled = task.cancel_requested
                || (task.kind == TaskKind::Activity
                    && task
                        .instance_id
                        .as_deref()
                        .and_then(|id| ended_by.get(id))
                        .is_some_and(|j| *j < i));
            match settle {
                Settle::Complete(_) => {
                    if task.kind == TaskKind::Orchestration
                        && let Some(instance) = &task.instance_id
                    {
                        affinity.push((instance.clone(), lease.worker.clone()));
                    }
                    if task.rerun {
                        release.push((
                            lease.task_id,
                            now.as_micros(),
                            Some(lease.worker.clone()),
                            None,
                        ));
                        announce.insert((task.queue.clone(), task.kind));
                    } else {
                        finish.push((lease.task_id, Finish::Completed, None));
                    }
                }
                // A cancelled job, or an activity of an ended instance, ends here, however its
                // attempt failed.
                Settle::Fail(_, action) if cancelled => {
                    let error = match action {
                        FailAction::Retry { error, .. } => error.clone(),
                        FailAction::Dead { error } => Some(error.clone()),
                    };
                    finish.push((
                        lease.task_id,
                        Finish::Cancelled,
                        Some(format!(
                            "cancelled while running{}",
                            error.map(|e| format!(": {e}")).unwrap_or_default()
                        )),
                    ));
                }
                Settle::Fail(_, FailAction::Retry { at, error }) => {
                    let at = if task.rerun { (*at).min(now) } else { *at };
                    if at <= now {
                        announce.insert((task.queue.clone(), task.kind));
                    }
                    release.push((lease.task_id, at.as_micros(), None, error.clone()));
                }
                Settle::Fail(_, FailAction::Dead { error }) => {
                    dead.push((lease.task_id, error.clone()))
                }
            }
        }
        // The worker that ran a turn keeps its instance warm: it becomes the instance's affinity,
        // written with the instance's new head where the turn appended events.
        let mut affinity: HashMap<String, String> = affinity.into_iter().collect();

        // Write the histories and the instances.
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
            .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.encoded.hash.as_slice()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            let updates: Vec<(&String, &InstanceState)> = touched
                .iter()
                .filter_map(|id| state.get(id).map(|s| (id, s)))
                .collect();
            sqlx::query(
                "UPDATE instances AS i SET next_seq = u.next_seq, last_hash = u.last_hash, status = u.status, \
                 history_bytes = u.history_bytes, updated_at = $1, \
                 output_codec = COALESCE(u.output_codec, i.output_codec), output = COALESCE(u.output, i.output), \
                 affinity = COALESCE(u.affinity, i.affinity) \
                 FROM UNNEST($2::text[], $3::bigint[], $4::bytea[], $5::text[], $6::bigint[], $7::smallint[], $8::bytea[], \
                 $9::text[]) AS u(id, next_seq, last_hash, status, history_bytes, output_codec, output, affinity) \
                 WHERE i.id = u.id",
            )
            .bind(now.as_micros())
            .bind(updates.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.next_seq as i64).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.last_hash.as_slice()).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.status.as_str()).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.history_bytes).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.output.as_ref().map(|o| o.codec().as_i16())).collect::<Vec<_>>())
            .bind(updates.iter().map(|(_, s)| s.output.as_ref().map(|o| o.as_bytes())).collect::<Vec<_>>())
            .bind(updates.iter().map(|(id, _)| affinity.remove(id.as_str())).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        if !dead.is_empty() {
            sqlx::query(
                "INSERT INTO dead_tasks (id, kind, queue, instance_id, priority, attempts, error, created_at, died_at, payload, \
                 concurrency_key, concurrency_limit) \
                 SELECT t.id, t.kind, t.queue, t.instance_id, t.priority, t.attempts, u.error, t.created_at, $1, t.payload, \
                 t.concurrency_key, t.concurrency_limit \
                 FROM tasks t JOIN UNNEST($2::bigint[], $3::text[]) AS u(id, error) ON t.id = u.id",
            )
            .bind(now.as_micros())
            .bind(dead.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(dead.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            delete.extend(dead.iter().map(|(id, _)| *id));
        }
        if !delete.is_empty() {
            sqlx::query("DELETE FROM tasks WHERE id = ANY($1)")
                .bind(&delete)
                .execute(&mut *tx)
                .await?;
        }
        finish_tasks(&mut tx, self, &finish, now).await?;
        if !release.is_empty() {
            sqlx::query(
                "UPDATE tasks AS t SET lease_owner = NULL, rerun = false, visible_at = u.at, \
                 affinity = COALESCE(u.affinity, t.affinity), last_error = COALESCE(u.error, t.last_error) \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS u(id, at, affinity, error) \
                 WHERE t.id = u.id",
            )
            .bind(release.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(release.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(release.iter().map(|r| r.2.as_deref()).collect::<Vec<_>>())
            .bind(release.iter().map(|r| r.3.as_deref()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        // Turns that appended nothing: their instances' affinity alone, if it changes.
        if !affinity.is_empty() {
            let affinity: Vec<(String, String)> = affinity.into_iter().collect();
            sqlx::query(
                "UPDATE instances AS i SET affinity = u.worker FROM UNNEST($1::text[], $2::text[]) AS u(id, worker) \
                 WHERE i.id = u.id AND i.affinity IS DISTINCT FROM u.worker",
            )
            .bind(affinity.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>())
            .bind(affinity.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        // Enqueue, in commit order.
        let live: Vec<usize> = (0..n).filter(|i| failed[*i].is_none()).collect();
        let tasks: Vec<_> = live
            .iter()
            .flat_map(|i| commits[*i].tasks.iter().cloned())
            .collect();
        let inserted = enqueue_in_tx(&mut tx, &tasks, now).await?;
        let ended: Vec<&str> = ended_by.keys().copied().collect();
        let completed: BTreeSet<i64> = live
            .iter()
            .filter_map(|i| match &commits[*i].settle {
                Some(Settle::Complete(lease)) => Some(lease.task_id),
                _ => None,
            })
            .collect();
        let mut dropped = outstanding(
            &ended,
            locked
                .iter()
                .map(|(id, t)| (*id, t.kind, t.instance_id.as_deref())),
            &completed,
        );
        dropped.extend(enqueued_for(&ended, &tasks, &inserted.ids));
        drop_outstanding(&mut tx, &dropped, now).await?;
        // Outbox messages, in commit order. A taken idempotency key fails the whole batch, which
        // is then committed one by one, so that only its own commit fails.
        let rows: Vec<crate::outbox::MessageRow> = live
            .iter()
            .flat_map(|i| messages[*i].iter().cloned())
            .collect();
        super::outbox::insert_messages(&mut tx, &rows, now).await?;
        tx.commit().await?;

        // Every instance read here was locked until the commit, so its state is its head now.
        self.heads.learn(state.into_iter().map(|(id, st)| {
            let head = (!st.status.is_closed()).then_some(Head {
                next_seq: st.next_seq,
                last_hash: st.last_hash,
            });
            (id, head)
        }));
        announce.extend(visible_queues(&tasks, now));
        if !rows.is_empty() {
            announce.insert((crate::OUTBOX_WAKE_QUEUE.to_string(), TaskKind::Outbox));
        }
        self.announce(announce);
        let mut ids = inserted.ids.into_iter();
        let mut deduplicated = inserted.deduplicated.into_iter().peekable();
        let mut offset = 0;
        let mut appended = appended.into_iter();
        Ok(failed
            .into_iter()
            .zip(commits)
            .map(|(failure, c)| {
                let appended = appended.next().unwrap_or_default();
                match failure {
                    Some(e) => Err(e),
                    None => {
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
                    }
                }
            })
            .collect())
    }
}
