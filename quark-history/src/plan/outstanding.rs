//! What an ending instance drops: its outstanding activities and timers, by the rule in
//! [the plan's docs](super#ending-an-instance).

use std::collections::BTreeSet;

use super::TaskRow;
use crate::clock::Timestamp;
use crate::queue::{NewTask, TaskKind};

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
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::fixtures::{NOW, pending, running};

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
