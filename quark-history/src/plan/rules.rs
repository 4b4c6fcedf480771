//! The rules one commit obeys, row by row: how a settled task ends, where an append lands, and
//! which outstanding work of an ending instance goes. [`plan`](super::plan) composes them for a
//! batch; PostgreSQL's single commit calls them directly around its fast paths.

use std::collections::BTreeSet;

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::commit::{Append, Expected, Settle};
use crate::error::{Error, Result};
use crate::event::HistoryEvent;
use crate::instance::InstanceStatus;
use crate::queue::{FailAction, Lease, NewTask, TaskKind};
use crate::rows::{EncodedEvent, encode_events};
use crate::store::StoreConfig;

/// A task row as a commit read it under its lock.
#[derive(Debug, Clone)]
pub(crate) struct TaskRow {
    pub(crate) id: i64,
    pub(crate) kind: TaskKind,
    pub(crate) attempt: u32,
    pub(crate) owner: Option<String>,
    /// While leased: the lease expiry.
    pub(crate) visible_at: Timestamp,
    pub(crate) rerun: bool,
    pub(crate) instance_id: Option<String>,
    pub(crate) queue: String,
    pub(crate) cancel_requested: bool,
}

impl TaskRow {
    fn held_under(&self, lease: &Lease) -> bool {
        self.attempt == lease.attempt && self.owner.as_deref() == Some(lease.worker.as_str())
    }

    /// Leased, and the lease has not expired: someone is working on it.
    fn running(&self, now: Timestamp) -> bool {
        self.owner.is_some() && self.visible_at > now
    }
}

/// An instance's head as a commit read it under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstanceHead {
    pub(crate) next_seq: u64,
    pub(crate) last_hash: [u8; 32],
    pub(crate) status: InstanceStatus,
}

/// What happens to a settled task's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskWrite {
    /// It leaves the queue as done (a job leaves its record).
    Complete { task_id: i64, kind: TaskKind },
    /// It leaves the queue as cancelled, with this error.
    Cancel {
        task_id: i64,
        kind: TaskKind,
        error: String,
    },
    /// Its lease is given up: visible again at `at`.
    Release {
        task_id: i64,
        at: Timestamp,
        affinity: Option<String>,
        error: Option<String>,
    },
    /// It moves to the dead-letter list.
    Dead { task_id: i64, error: String },
}

impl TaskWrite {
    pub(crate) fn task_id(&self) -> i64 {
        match self {
            TaskWrite::Complete { task_id, .. }
            | TaskWrite::Cancel { task_id, .. }
            | TaskWrite::Release { task_id, .. }
            | TaskWrite::Dead { task_id, .. } => *task_id,
        }
    }
}

/// How a commit settles its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) write: TaskWrite,
    /// A completed turn's instance and the worker that ran it, which keeps it warm: its affinity.
    pub(crate) affinity: Option<(String, String)>,
    /// The queue to announce, when the task is visible again at once.
    pub(crate) announce: Option<(String, TaskKind)>,
}

/// Settles the task of `settle`, read as `row` (`None`: not found). `ended`: its instance was
/// ended by an earlier commit of the same batch, which asked a running activity to cancel.
pub(crate) fn settle(
    settle: &Settle,
    row: Option<&TaskRow>,
    ended: bool,
    now: Timestamp,
) -> Result<Settled> {
    let lease = settle.lease();
    let Some(task) = row.filter(|t| t.held_under(lease)) else {
        return Err(Error::LeaseLost {
            task_id: lease.task_id,
            attempt: lease.attempt,
        });
    };
    let (task_id, kind) = (task.id, task.kind);
    let queue = || (task.queue.clone(), kind);
    let cancelled = task.cancel_requested || (ended && kind == TaskKind::Activity);
    let settled = |write| Settled {
        write,
        affinity: None,
        announce: None,
    };
    Ok(match settle {
        Settle::Complete(_) => {
            let affinity = (kind == TaskKind::Orchestration)
                .then(|| task.instance_id.clone())
                .flatten()
                .map(|id| (id, lease.worker.clone()));
            // New events arrived during the turn: it runs again at once, here first.
            let (write, announce) = if task.rerun {
                let write = TaskWrite::Release {
                    task_id,
                    at: now,
                    affinity: Some(lease.worker.clone()),
                    error: None,
                };
                (write, Some(queue()))
            } else {
                (TaskWrite::Complete { task_id, kind }, None)
            };
            Settled {
                write,
                affinity,
                announce,
            }
        }
        // A cancelled job, or an activity of an ended instance, ends here however it failed.
        Settle::Fail(_, action) if cancelled => {
            let error = match action {
                FailAction::Retry { error, .. } => error.clone(),
                FailAction::Dead { error } => Some(error.clone()),
            };
            let error = format!(
                "cancelled while running{}",
                error.map(|e| format!(": {e}")).unwrap_or_default()
            );
            settled(TaskWrite::Cancel {
                task_id,
                kind,
                error,
            })
        }
        Settle::Fail(_, FailAction::Retry { at, error }) => {
            let at = if task.rerun { (*at).min(now) } else { *at };
            Settled {
                write: TaskWrite::Release {
                    task_id,
                    at,
                    affinity: None,
                    error: error.clone(),
                },
                affinity: None,
                announce: (at <= now).then(queue),
            }
        }
        Settle::Fail(_, FailAction::Dead { error }) => settled(TaskWrite::Dead {
            task_id,
            error: error.clone(),
        }),
    })
}

/// What one append writes.
pub(crate) struct Appended {
    /// The sequence numbers of its first and last event (`(next, next - 1)` when empty).
    pub(crate) range: (u64, u64),
    pub(crate) events: Vec<EncodedEvent>,
    /// The time its events are recorded at.
    pub(crate) at: Timestamp,
    /// The instance's head after it.
    pub(crate) head: InstanceHead,
    pub(crate) added_bytes: i64,
    /// The output of a completed instance.
    pub(crate) output: Option<Payload>,
}

/// Places `append` after the instance's head `from` (`None`: no such instance).
pub(crate) fn append(
    config: &StoreConfig,
    append: &Append,
    from: Option<&InstanceHead>,
    now: Timestamp,
) -> Result<Appended> {
    let id = &append.instance_id;
    let Some(from) = from else {
        return Err(Error::InstanceNotFound { id: id.clone() });
    };
    if let Expected::Seq(expected) = append.expected
        && expected != from.next_seq
    {
        return Err(Error::Conflict {
            id: id.clone(),
            expected,
            actual: from.next_seq,
        });
    }
    let at = append.at.unwrap_or(now);
    let encoded = encode_events(config, from.last_hash, from.next_seq, &append.events)?;
    let mut head = *from;
    let mut output = None;
    for event in &append.events {
        if head.status.is_closed() {
            return Err(Error::InstanceClosed {
                id: id.clone(),
                status: head.status,
            });
        }
        if let Some(closing) = event.closing_status() {
            head.status = closing;
            if let HistoryEvent::WorkflowCompleted { output: out } = event {
                output = Some(out.clone());
            }
        }
    }
    if let Some(last) = encoded.last() {
        head.next_seq = last.seq + 1;
        head.last_hash = last.hash;
    }
    Ok(Appended {
        range: (from.next_seq, head.next_seq - 1),
        added_bytes: encoded.iter().map(|e| e.bytes.len() as i64).sum(),
        events: encoded,
        at,
        head,
        output,
    })
}

/// The outstanding work that ending instances drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Rows to delete: not running.
    pub(crate) delete: Vec<i64>,
    /// Running activities to ask to cancel.
    pub(crate) cancel: Vec<i64>,
    /// New tasks (by index) to delete once inserted.
    pub(crate) delete_new: Vec<usize>,
    /// New tasks (by index), enqueued already leased, to ask to cancel once inserted.
    pub(crate) cancel_new: Vec<usize>,
}

impl Dropped {
    /// The rows to delete and to cancel, given the ids the new tasks got.
    pub(crate) fn ids(&self, new_ids: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let pick = |rows: &[i64], new: &[usize]| {
            let mut ids = rows.to_vec();
            ids.extend(new.iter().map(|i| new_ids[*i]));
            ids
        };
        (
            pick(&self.delete, &self.delete_new),
            pick(&self.cancel, &self.cancel_new),
        )
    }
}

/// Drops what the `ending` instances still had outstanding: of the `rows` read under the lock and
/// the `new` tasks the same write enqueues, their activities and timers. Those not running go;
/// running activities are asked to cancel (a running timer is about to fire and is left to). Rows
/// the write settles are `gone` (completed, cancelled, dead-lettered) or `released` (not running
/// any more). See [the rule](super#ending-an-instance) for why only these rows.
pub(crate) fn drop_outstanding<'r>(
    ending: &BTreeSet<&str>,
    rows: impl IntoIterator<Item = &'r TaskRow>,
    gone: &BTreeSet<i64>,
    released: &BTreeSet<i64>,
    new: &[NewTask],
    now: Timestamp,
) -> Dropped {
    let ends = |kind: TaskKind, instance: Option<&str>| {
        matches!(kind, TaskKind::Activity | TaskKind::Timer)
            && instance.is_some_and(|i| ending.contains(i))
    };
    let mut dropped = Dropped::default();
    let mut rows: Vec<&TaskRow> = rows
        .into_iter()
        .filter(|r| ends(r.kind, r.instance_id.as_deref()) && !gone.contains(&r.id))
        .collect();
    rows.sort_by_key(|r| r.id);
    rows.dedup_by_key(|r| r.id);
    for row in rows {
        if !row.running(now) || released.contains(&row.id) {
            dropped.delete.push(row.id);
        } else if row.kind == TaskKind::Activity && !row.cancel_requested {
            dropped.cancel.push(row.id);
        }
    }
    for (i, task) in new.iter().enumerate() {
        if !ends(task.kind, task.instance_id.as_deref()) {
            continue;
        }
        let running = task.lease_to.as_ref().is_some_and(|(_, d)| !d.is_zero());
        if !running {
            dropped.delete_new.push(i);
        } else if task.kind == TaskKind::Activity {
            dropped.cancel_new.push(i);
        }
    }
    dropped
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::settle as settle_task;
    use super::*;
    use crate::journal::GENESIS;

    pub(crate) const NOW: Timestamp = Timestamp::from_micros(1_000_000_000);

    pub(crate) fn lease(task_id: i64, attempt: u32) -> Lease {
        Lease {
            task_id,
            attempt,
            worker: "w".into(),
        }
    }

    /// A task of `instance`, leased to "w" at attempt 1 until a minute from now.
    pub(crate) fn running(id: i64, kind: TaskKind, instance: &str) -> TaskRow {
        TaskRow {
            id,
            kind,
            attempt: 1,
            owner: Some("w".into()),
            visible_at: NOW + Duration::from_secs(60),
            rerun: false,
            instance_id: Some(instance.into()),
            queue: "q".into(),
            cancel_requested: false,
        }
    }

    pub(crate) fn pending(id: i64, kind: TaskKind, instance: &str) -> TaskRow {
        TaskRow {
            attempt: 0,
            owner: None,
            visible_at: NOW,
            ..running(id, kind, instance)
        }
    }

    pub(crate) fn fresh() -> InstanceHead {
        InstanceHead {
            next_seq: 1,
            last_hash: GENESIS,
            status: InstanceStatus::Running,
        }
    }

    pub(crate) fn signal() -> HistoryEvent {
        HistoryEvent::SignalReceived {
            name: "ping".into(),
            payload: Payload::json(&1).unwrap(),
        }
    }

    pub(crate) fn terminated() -> HistoryEvent {
        HistoryEvent::WorkflowTerminated {
            reason: "enough".into(),
        }
    }

    fn append_to(expected: Expected, events: Vec<HistoryEvent>) -> Append {
        Append {
            instance_id: "i".into(),
            expected,
            events,
            at: None,
        }
    }

    fn retry(at: Timestamp) -> FailAction {
        FailAction::Retry {
            at,
            error: Some("flaky".into()),
        }
    }

    #[test]
    fn it_refuses_a_commit_whose_lease_was_lost() {
        let row = running(7, TaskKind::Activity, "i");
        let lost = |settle: &Settle, row| {
            matches!(
                settle_task(settle, row, false, NOW),
                Err(Error::LeaseLost { task_id: 7, .. })
            )
        };
        assert!(
            lost(&Settle::Complete(lease(7, 2)), Some(&row)),
            "a newer attempt holds it"
        );
        assert!(lost(&Settle::Complete(lease(7, 1)), None), "it is gone");
        let mut other = row.clone();
        other.owner = Some("other".into());
        assert!(lost(&Settle::Complete(lease(7, 1)), Some(&other)));
    }

    #[test]
    fn it_completes_a_turn_and_makes_its_worker_the_affinity() {
        let row = running(7, TaskKind::Orchestration, "i");
        let settled = settle_task(&Settle::Complete(lease(7, 1)), Some(&row), false, NOW).unwrap();
        assert_eq!(
            settled,
            Settled {
                write: TaskWrite::Complete {
                    task_id: 7,
                    kind: TaskKind::Orchestration
                },
                affinity: Some(("i".into(), "w".into())),
                announce: None,
            }
        );
    }

    #[test]
    fn it_releases_a_turn_marked_to_run_again_to_its_worker_at_once() {
        let mut row = running(7, TaskKind::Orchestration, "i");
        row.rerun = true;
        let settled = settle_task(&Settle::Complete(lease(7, 1)), Some(&row), false, NOW).unwrap();
        assert_eq!(
            settled.write,
            TaskWrite::Release {
                task_id: 7,
                at: NOW,
                affinity: Some("w".into()),
                error: None
            }
        );
        assert_eq!(
            settled.announce,
            Some(("q".into(), TaskKind::Orchestration))
        );
    }

    #[test]
    fn it_retries_a_failed_task_later_or_at_once_when_new_work_arrived() {
        let later = NOW + Duration::from_secs(30);
        let mut row = running(7, TaskKind::Activity, "i");
        let settle = Settle::Fail(lease(7, 1), retry(later));
        let settled = settle_task(&settle, Some(&row), false, NOW).unwrap();
        assert!(matches!(settled.write, TaskWrite::Release { at, .. } if at == later));
        assert_eq!(settled.announce, None, "nothing to claim yet");
        row.rerun = true;
        let settled = settle_task(&settle, Some(&row), false, NOW).unwrap();
        assert!(matches!(settled.write, TaskWrite::Release { at, .. } if at == NOW));
    }

    #[test]
    fn it_cancels_a_failed_attempt_that_was_asked_to_stop() {
        let mut row = running(7, TaskKind::Activity, "i");
        let dead = Settle::Fail(
            lease(7, 1),
            FailAction::Dead {
                error: "boom".into(),
            },
        );
        assert!(matches!(
            settle_task(&dead, Some(&row), false, NOW).unwrap().write,
            TaskWrite::Dead { .. }
        ));
        let cancelled = TaskWrite::Cancel {
            task_id: 7,
            kind: TaskKind::Activity,
            error: "cancelled while running: boom".into(),
        };
        assert_eq!(
            settle_task(&dead, Some(&row), true, NOW).unwrap().write,
            cancelled,
            "its instance ended earlier in the batch"
        );
        row.cancel_requested = true;
        assert_eq!(
            settle_task(&dead, Some(&row), false, NOW).unwrap().write,
            cancelled
        );
    }

    #[test]
    fn it_chains_appended_events_to_the_head_and_closes_the_instance() {
        let config = StoreConfig::default();
        let events = vec![signal(), terminated()];
        let done = append(
            &config,
            &append_to(Expected::Seq(1), events),
            Some(&fresh()),
            NOW,
        )
        .unwrap();
        assert_eq!(done.range, (1, 2));
        assert_eq!(done.head.next_seq, 3);
        assert_eq!(done.head.last_hash, done.events[1].hash);
        assert_eq!(done.head.status, InstanceStatus::Terminated);
        assert_eq!(
            done.added_bytes,
            done.events
                .iter()
                .map(|e| e.bytes.len() as i64)
                .sum::<i64>()
        );
        let empty = append(
            &config,
            &append_to(Expected::Any, vec![]),
            Some(&done.head),
            NOW,
        )
        .unwrap();
        assert_eq!(empty.range, (3, 2));
    }

    #[test]
    fn it_refuses_an_append_that_conflicts_or_follows_the_end() {
        let config = StoreConfig::default();
        let conflict = append(
            &config,
            &append_to(Expected::Seq(4), vec![signal()]),
            Some(&fresh()),
            NOW,
        );
        assert!(matches!(
            conflict,
            Err(Error::Conflict {
                expected: 4,
                actual: 1,
                ..
            })
        ));
        let closed = InstanceHead {
            status: InstanceStatus::Completed,
            ..fresh()
        };
        let after = append(
            &config,
            &append_to(Expected::Any, vec![signal()]),
            Some(&closed),
            NOW,
        );
        assert!(matches!(after, Err(Error::InstanceClosed { .. })));
        let twice = append(
            &config,
            &append_to(Expected::Any, vec![terminated(), signal()]),
            Some(&fresh()),
            NOW,
        );
        assert!(matches!(twice, Err(Error::InstanceClosed { .. })));
        let missing = append(
            &config,
            &append_to(Expected::Any, vec![signal()]),
            None,
            NOW,
        );
        assert!(matches!(missing, Err(Error::InstanceNotFound { .. })));
    }

    #[test]
    fn it_drops_waiting_work_and_cancels_running_activities_of_an_ending_instance() {
        let mut expired = running(3, TaskKind::Activity, "i");
        expired.visible_at = NOW;
        let mut asked = running(6, TaskKind::Activity, "i");
        asked.cancel_requested = true;
        let rows = [
            pending(1, TaskKind::Activity, "i"),
            running(2, TaskKind::Activity, "i"),
            expired,
            pending(4, TaskKind::Timer, "i"),
            running(5, TaskKind::Timer, "i"),
            asked,
            running(8, TaskKind::Activity, "i"),
            running(9, TaskKind::Activity, "i"),
            pending(10, TaskKind::Orchestration, "i"),
            pending(11, TaskKind::Activity, "other"),
        ];
        let new = [
            NewTask::new(TaskKind::Activity, "q").instance("i"),
            NewTask {
                lease_to: Some(("w".into(), Duration::from_secs(60))),
                ..NewTask::new(TaskKind::Activity, "q").instance("i")
            },
            NewTask::new(TaskKind::Activity, "q").instance("other"),
            NewTask::new(TaskKind::Timer, "q").instance("i"),
        ];
        let dropped = drop_outstanding(&["i"].into(), &rows, &[8].into(), &[9].into(), &new, NOW);
        assert_eq!(
            dropped,
            Dropped {
                // Pending, expired, a pending timer, and one the same write released.
                delete: vec![1, 3, 4, 9],
                // Running; a running timer fires, and 6 was asked already.
                cancel: vec![2],
                delete_new: vec![0, 3],
                cancel_new: vec![1],
            }
        );
        assert_eq!(
            dropped.ids(&[100, 101, 102, 103]),
            (vec![1, 3, 4, 9, 100, 103], vec![2, 101])
        );
    }
}
