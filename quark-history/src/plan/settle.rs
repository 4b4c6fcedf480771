//! How a commit settles the task it was done under: completed, released to run again, retried
//! later, cancelled, or dead-lettered, fenced by its lease.
//!
//! A turn also moves its instance between running and blocked: a dead-lettered turn blocks it (its
//! code cannot go on until it is fixed and the turn re-driven), and a completed one unblocks it
//! (fixed code ran a turn that new events had enqueued). Both are conditional writes (`running`
//! to `blocked`, `blocked` to `running`) that leave an ended instance alone, so they hold in
//! whatever order a batch writes them and its appends.

use crate::clock::Timestamp;
use crate::commit::Settle;
use crate::error::{Error, Result};
use crate::queue::{FailAction, Lease, TaskKind};

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
    pub(super) fn held_under(&self, lease: &Lease) -> bool {
        self.attempt == lease.attempt && self.owner.as_deref() == Some(lease.worker.as_str())
    }

    /// Leased, and the lease has not expired: someone is working on it.
    pub(super) fn running(&self, now: Timestamp) -> bool {
        self.owner.is_some() && self.visible_at > now
    }
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
    /// The instance is unblocked if it was blocked.
    pub(crate) affinity: Option<(String, String)>,
    /// A dead-lettered turn's instance, which it blocks.
    pub(crate) blocks: Option<String>,
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
        blocks: None,
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
                blocks: None,
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
                blocks: None,
                announce: (at <= now).then(queue),
            }
        }
        Settle::Fail(_, FailAction::Dead { error }) => Settled {
            write: TaskWrite::Dead {
                task_id,
                error: error.clone(),
            },
            affinity: None,
            blocks: (kind == TaskKind::Orchestration)
                .then(|| task.instance_id.clone())
                .flatten(),
            announce: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::settle as settle_task;
    use super::*;
    use crate::plan::fixtures::{NOW, lease, running};

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
                blocks: None,
                announce: None,
            }
        );
    }

    #[test]
    fn a_dead_lettered_turn_blocks_its_instance_and_a_dead_activity_does_not() {
        let dead = Settle::Fail(
            lease(7, 1),
            FailAction::Dead {
                error: "nondeterminism".into(),
            },
        );
        let turn = running(7, TaskKind::Orchestration, "i");
        let settled = settle_task(&dead, Some(&turn), false, NOW).unwrap();
        assert_eq!(settled.blocks.as_deref(), Some("i"));
        assert_eq!(settled.affinity, None);
        let activity = running(7, TaskKind::Activity, "i");
        let settled = settle_task(&dead, Some(&activity), false, NOW).unwrap();
        assert_eq!(settled.blocks, None);
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
}
