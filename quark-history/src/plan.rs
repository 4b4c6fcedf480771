//! The write plan: what commits write, decided from the rows they locked, without I/O.
//!
//! A backend reads the rows a batch of commits touches under its lock (the settled tasks, the
//! instances appended to, the activities and timers of the instances that end: `SELECT ... FOR
//! UPDATE` on PostgreSQL, plain reads inside `BEGIN IMMEDIATE` on SQLite), hands them to [`plan`]
//! with the commits, and executes the [`WritePlan`] it gets back in its own dialect. The outcome
//! is as if the commits ran one after another in order; each is all or nothing, and one that
//! would fail (a lost lease, a conflict, a closed instance) is left out with its error. SQLite
//! plans each commit alone, PostgreSQL's batch plans them together; PostgreSQL's single commit
//! keeps its fast paths (a known head appended to without a read, a completed task deleted in one
//! statement) and runs the same rules around them: [`settle()`], [`append()`] and
//! [`drop_outstanding`].
//!
//! # Ending an instance
//!
//! A commit that ends an instance drops its outstanding activities and timers: exactly those it
//! read under its lock, plus those it enqueues itself. Not "every row of the instance at the time
//! of the write": on PostgreSQL that would delete rows the commit never locked, inserted by a
//! transaction that committed while this one waited for the instance row. Taking their locks
//! after the instance row breaks the order every write path follows (tasks, then instances), so
//! two commits could deadlock, and waiting for them makes an ending commit slow under load. The
//! rows it did not read are harmless: such an activity runs once and its result is refused like
//! any result for an ended instance. On SQLite there is one writer, so a commit reads every row of
//! the instance under its lock and the two readings coincide; what matters is that both backends
//! run this one rule, and they do, through [`drop_outstanding`].

mod append;
#[cfg(test)]
mod fixtures;
mod outstanding;
mod settle;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::commit::Commit;
use crate::error::{Error, Result};
use crate::queue::{NewTask, TaskKind};
use crate::rows::{EncodedEvent, visible_queues};
use crate::store::StoreConfig;

pub(crate) use append::{Appended, InstanceHead, append};
pub(crate) use outstanding::{Dropped, drop_outstanding};
pub(crate) use settle::{Settled, TaskRow, TaskWrite, settle};

/// The rows a write read under its lock.
#[derive(Debug, Default)]
pub(crate) struct Locked {
    /// The settled tasks, the activities and timers of the ending instances (and whatever else the
    /// backend locked), by id.
    pub(crate) tasks: HashMap<i64, TaskRow>,
    /// The instances appended to, by id.
    pub(crate) instances: HashMap<String, InstanceHead>,
}

/// One event row to insert.
pub(crate) struct EventRow {
    pub(crate) instance_id: String,
    pub(crate) at: Timestamp,
    pub(crate) encoded: EncodedEvent,
}

/// An instance's new head, for an instance the write appended to.
pub(crate) struct InstanceWrite {
    pub(crate) id: String,
    pub(crate) head: InstanceHead,
    /// Bytes to add to its history's size.
    pub(crate) added_bytes: i64,
    /// The output of a completed instance.
    pub(crate) output: Option<Payload>,
    pub(crate) updated_at: Timestamp,
}

/// What to write, in this order: events and instances, settles and affinities, the live commits'
/// tasks (concatenated in commit order), then the drop.
pub(crate) struct WritePlan {
    /// For each commit: its appends' sequence ranges, or why nothing of it is written.
    pub(crate) results: Vec<Result<Vec<(u64, u64)>>>,
    pub(crate) events: Vec<EventRow>,
    pub(crate) instances: Vec<InstanceWrite>,
    /// Every instance read, as the write leaves it (PostgreSQL's store keeps the heads).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) heads: Vec<(String, InstanceHead)>,
    pub(crate) settles: Vec<TaskWrite>,
    /// (instance, worker): completed turns make their worker the instance's affinity, and
    /// unblock the instance if it was blocked; completed activities make theirs the affinity of
    /// the entities they appended to ([`entity_homes`]).
    pub(crate) affinity: Vec<(String, String)>,
    /// The instances whose turn was dead-lettered: blocked, if still running.
    pub(crate) blocked: Vec<String>,
    /// The tasks of the live commits, in order.
    pub(crate) tasks: Vec<NewTask>,
    /// The outstanding work of the instances that end; its `*_new` indices point into `tasks`.
    pub(crate) dropped: Dropped,
    /// The queues the write makes claimable at once.
    pub(crate) announce: BTreeSet<(String, TaskKind)>,
}

impl WritePlan {
    /// The commits that are written.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.results.len()).filter(|i| self.results[*i].is_ok())
    }
}

/// Plans `commits` against the rows `locked`, as if they ran one after another. `refused` holds,
/// per commit, an error found before the write began (a check on its size, its inbox ids): such a
/// commit writes nothing.
pub(crate) fn plan(
    config: &StoreConfig,
    now: Timestamp,
    commits: &[Commit],
    refused: Vec<Option<Error>>,
    locked: &Locked,
) -> WritePlan {
    let mut failed = refused;
    let mut heads: BTreeMap<String, InstanceHead> = locked
        .instances
        .iter()
        .map(|(id, h)| (id.clone(), *h))
        .collect();
    let mut written: BTreeMap<String, InstanceWrite> = BTreeMap::new();
    let mut events = Vec::new();
    let mut appended: Vec<Vec<(u64, u64)>> = vec![Vec::new(); commits.len()];
    // The first commit that ends each instance: a running activity of it that a later commit
    // fails is cancelled, as it was asked to be.
    let mut ended_by: BTreeMap<&str, usize> = BTreeMap::new();
    // A task settles once: by the first commit that settles it and is written.
    let mut settled: Vec<Settled> = Vec::new();
    let mut settled_ids = BTreeSet::new();
    let mut homes: Vec<(String, String)> = Vec::new();
    for (i, commit) in commits.iter().enumerate() {
        if failed[i].is_some() {
            continue;
        }
        let seen = Seen {
            heads: &heads,
            settled: &settled_ids,
            ended_by: &ended_by,
        };
        match plan_commit(config, now, commit, locked, seen) {
            Err(e) => failed[i] = Some(e),
            Ok(planned) => {
                appended[i] = planned.ranges;
                events.extend(planned.events);
                for (id, done) in planned.instances {
                    heads.insert(id.to_string(), done.head);
                    let entry = written
                        .entry(id.to_string())
                        .or_insert_with(|| InstanceWrite {
                            id: id.to_string(),
                            head: done.head,
                            added_bytes: 0,
                            output: None,
                            updated_at: done.at,
                        });
                    entry.head = done.head;
                    entry.added_bytes += done.added_bytes;
                    entry.output = done.output.or(entry.output.take());
                    entry.updated_at = done.at;
                }
                for id in commit.ending_instances() {
                    ended_by.entry(id).or_insert(i);
                }
                if let Some(s) = planned.settled {
                    settled_ids.insert(s.write.task_id());
                    homes.extend(entity_homes(commit, &s.write));
                    settled.push(s);
                }
            }
        }
    }

    let results: Vec<Result<Vec<(u64, u64)>>> = failed
        .into_iter()
        .zip(appended)
        .map(|(f, a)| match f {
            Some(e) => Err(e),
            None => Ok(a),
        })
        .collect();
    let tasks: Vec<NewTask> = (0..commits.len())
        .filter(|i| results[*i].is_ok())
        .flat_map(|i| commits[i].tasks.iter().cloned())
        .collect();
    let mut announce = visible_queues(&tasks, now);
    let (mut affinity, mut blocked) = (Vec::new(), Vec::new());
    let (mut gone, mut released) = (BTreeSet::new(), BTreeSet::new());
    for s in &settled {
        announce.extend(s.announce.clone());
        affinity.extend(s.affinity.clone());
        blocked.extend(s.blocks.clone());
        match s.write {
            TaskWrite::Release { task_id, .. } => released.insert(task_id),
            _ => gone.insert(s.write.task_id()),
        };
    }
    affinity.extend(homes);
    let ending: BTreeSet<&str> = ended_by.keys().copied().collect();
    let dropped = drop_outstanding(
        &ending,
        locked.tasks.values(),
        &gone,
        &released,
        &tasks,
        now,
    );
    WritePlan {
        results,
        events,
        instances: written.into_values().collect(),
        heads: heads.into_iter().collect(),
        settles: settled.into_iter().map(|s| s.write).collect(),
        affinity,
        blocked,
        tasks,
        dropped,
        announce,
    }
}

/// What the commits planned before one see of the state it starts from.
struct Seen<'p, 'c> {
    heads: &'p BTreeMap<String, InstanceHead>,
    settled: &'p BTreeSet<i64>,
    ended_by: &'p BTreeMap<&'c str, usize>,
}

/// One commit, planned after those before it.
struct CommitPlan<'c> {
    settled: Option<Settled>,
    ranges: Vec<(u64, u64)>,
    events: Vec<EventRow>,
    /// Where its appends leave each instance, their bytes and output summed.
    instances: BTreeMap<&'c str, Appended>,
}

/// The entities a commit leaves live on a worker, as (stream, worker): a completed activity
/// whose commit appends an entity's events decided them against the entity's state loaded on
/// the worker that ran it, so that worker becomes the stream's affinity, its home. The entity's
/// next commands from orchestrations are routed there, and the placement coordinator may move it
/// like an instance.
pub(crate) fn entity_homes(commit: &Commit, write: &TaskWrite) -> Vec<(String, String)> {
    let (
        TaskWrite::Complete {
            kind: TaskKind::Activity,
            ..
        },
        Some(settle),
    ) = (write, &commit.settle)
    else {
        return Vec::new();
    };
    let worker = &settle.lease().worker;
    commit
        .appends
        .iter()
        .filter(|a| {
            a.events
                .iter()
                .any(|e| matches!(e, crate::event::HistoryEvent::EntityEvent { .. }))
        })
        .map(|a| (a.instance_id.clone(), worker.clone()))
        .collect()
}

fn plan_commit<'c>(
    config: &StoreConfig,
    now: Timestamp,
    commit: &'c Commit,
    locked: &Locked,
    seen: Seen<'_, '_>,
) -> Result<CommitPlan<'c>> {
    let settled = match &commit.settle {
        Some(s) => {
            let lease = s.lease();
            let row = locked
                .tasks
                .get(&lease.task_id)
                .filter(|_| !seen.settled.contains(&lease.task_id));
            let ended = row
                .and_then(|r| r.instance_id.as_deref())
                .is_some_and(|id| seen.ended_by.contains_key(id));
            Some(settle(s, row, ended, now)?)
        }
        None => None,
    };
    // Appends of one commit see each other; later commits see them only if all succeed.
    let mut instances: BTreeMap<&str, Appended> = BTreeMap::new();
    let mut ranges = Vec::with_capacity(commit.appends.len());
    let mut events = Vec::new();
    for a in &commit.appends {
        let id = a.instance_id.as_str();
        let from = instances
            .get(id)
            .map(|a| a.head)
            .or(seen.heads.get(id).copied());
        let mut done = append(config, a, from.as_ref(), now)?;
        ranges.push(done.range);
        let at = done.at;
        events.extend(
            std::mem::take(&mut done.events)
                .into_iter()
                .map(|encoded| EventRow {
                    instance_id: id.to_string(),
                    at,
                    encoded,
                }),
        );
        if done.range.1 >= done.range.0 {
            let merged = match instances.remove(id) {
                Some(prev) => Appended {
                    added_bytes: prev.added_bytes + done.added_bytes,
                    output: done.output.or(prev.output),
                    ..done
                },
                None => done,
            };
            instances.insert(id, merged);
        }
    }
    Ok(CommitPlan {
        settled,
        ranges,
        events,
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::fixtures::{NOW, fresh, lease, pending, running, signal, terminated};
    use super::*;
    use crate::commit::Expected;
    use crate::queue::FailAction;

    fn locked(tasks: Vec<TaskRow>) -> Locked {
        Locked {
            tasks: tasks.into_iter().map(|t| (t.id, t)).collect(),
            instances: [("i".to_string(), fresh())].into(),
        }
    }

    fn run(commits: &[Commit], locked: &Locked) -> WritePlan {
        let refused = commits.iter().map(|_| None).collect();
        plan(&StoreConfig::default(), NOW, commits, refused, locked)
    }

    fn activity(instance: &str) -> NewTask {
        NewTask::new(TaskKind::Activity, "q").instance(instance)
    }

    #[test]
    fn it_plans_commits_as_if_they_ran_one_after_another() {
        let turn = || Commit::new().append("i", Expected::Seq(1), [signal()]);
        let late = Commit::new().append("i", Expected::Any, [signal(), signal()]);
        let plan = run(&[turn(), turn(), late], &locked(vec![]));
        assert_eq!(plan.results[0].as_ref().unwrap(), &vec![(1, 1)]);
        assert!(matches!(
            plan.results[1],
            Err(Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        assert_eq!(plan.results[2].as_ref().unwrap(), &vec![(2, 3)]);
        let seqs: Vec<u64> = plan.events.iter().map(|e| e.encoded.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let [written] = &plan.instances[..] else {
            panic!("one instance: {}", plan.instances.len())
        };
        assert_eq!(written.head.next_seq, 4);
        assert_eq!(written.head.last_hash, plan.events[2].encoded.hash);
        let bytes: i64 = plan
            .events
            .iter()
            .map(|e| e.encoded.bytes.len() as i64)
            .sum();
        assert_eq!(written.added_bytes, bytes);
        assert_eq!(plan.heads, vec![("i".to_string(), written.head)]);
    }

    #[test]
    fn it_settles_a_task_once_in_a_batch() {
        let locked = locked(vec![running(7, TaskKind::Activity, "i")]);
        let done = || Commit::new().complete(lease(7, 1));
        let plan = run(&[done(), done()], &locked);
        assert!(plan.results[0].is_ok());
        assert!(matches!(
            plan.results[1],
            Err(Error::LeaseLost { task_id: 7, .. })
        ));
        assert_eq!(plan.settles.len(), 1);
    }

    #[test]
    fn it_cancels_an_activity_failed_after_the_commit_that_ended_its_instance() {
        let locked = locked(vec![running(7, TaskKind::Activity, "i")]);
        let end = || Commit::new().append("i", Expected::Any, [terminated()]);
        let fail = || {
            Commit::new().fail(
                lease(7, 1),
                FailAction::Dead {
                    error: "boom".into(),
                },
            )
        };
        let after = run(&[end(), fail()], &locked);
        assert!(matches!(
            after.settles[..],
            [TaskWrite::Cancel { task_id: 7, .. }]
        ));
        assert!(after.dropped.delete.is_empty() && after.dropped.cancel.is_empty());
        let before = run(&[fail(), end()], &locked);
        assert!(matches!(
            before.settles[..],
            [TaskWrite::Dead { task_id: 7, .. }]
        ));
        assert!(before.dropped.delete.is_empty() && before.dropped.cancel.is_empty());
    }

    #[test]
    fn it_drops_the_work_of_an_ending_instance_but_the_task_its_commit_completes() {
        let locked = locked(vec![
            running(7, TaskKind::Activity, "i"),
            pending(8, TaskKind::Activity, "i"),
            running(9, TaskKind::Activity, "i"),
        ]);
        let end = Commit::new()
            .append("i", Expected::Any, [terminated()])
            .complete(lease(7, 1))
            .enqueue(activity("i"));
        let plan = run(&[end], &locked);
        assert!(plan.results[0].is_ok());
        assert_eq!(plan.dropped.delete, [8]);
        assert_eq!(plan.dropped.cancel, [9]);
        assert_eq!(plan.dropped.delete_new, [0]);
        assert_eq!(plan.heads[0].1.status, crate::InstanceStatus::Terminated);
    }

    #[test]
    fn a_dead_lettered_turn_blocks_its_instance_and_a_completed_one_sets_its_affinity() {
        let locked = Locked {
            tasks: [
                running(7, TaskKind::Orchestration, "i"),
                running(8, TaskKind::Orchestration, "j"),
            ]
            .into_iter()
            .map(|t| (t.id, t))
            .collect(),
            instances: [("i".to_string(), fresh())].into(),
        };
        let dead = Commit::new().fail(
            lease(7, 1),
            FailAction::Dead {
                error: "nondeterminism".into(),
            },
        );
        // An activity result for the blocked instance in the same batch is still appended.
        let result = Commit::new().append("i", Expected::Any, [signal()]);
        let done = Commit::new().complete(lease(8, 1));
        let plan = run(&[dead, result, done], &locked);
        assert!(plan.results.iter().all(Result::is_ok), "{:?}", plan.results);
        assert_eq!(plan.blocked, ["i"]);
        assert_eq!(plan.affinity, [("j".to_string(), "w".to_string())]);
        assert_eq!(plan.instances.len(), 1);
        assert_eq!(
            plan.instances[0].head.written_status(),
            None,
            "a non-closing append leaves the status as the row has it"
        );
    }

    #[test]
    fn it_writes_nothing_of_a_refused_or_failed_commit() {
        let locked = locked(vec![pending(8, TaskKind::Activity, "i")]);
        let end = || {
            Commit::new()
                .append("i", Expected::Seq(1), [terminated()])
                .enqueue(activity("i"))
        };
        let refused = vec![Some(Error::Invalid("too big".into())), None];
        let conflicting = Commit::new().append("i", Expected::Seq(5), [terminated()]);
        let plan = plan(
            &StoreConfig::default(),
            NOW,
            &[end(), conflicting],
            refused,
            &locked,
        );
        assert!(
            plan.results.iter().all(Result::is_err),
            "{:?}",
            plan.results
        );
        assert!(plan.events.is_empty() && plan.instances.is_empty() && plan.tasks.is_empty());
        assert_eq!(plan.dropped, Dropped::default());
        assert_eq!(plan.live().count(), 0);
    }
}
