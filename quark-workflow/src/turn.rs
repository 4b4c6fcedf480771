//! The shared turn-processing code: one claimed orchestration task in, one [`Commit`] out.
//!
//! Both the test environment and the worker call [`process_turn`]; it does no I/O. The caller
//! reads the history, calls it, creates [`Turn::instances`] (idempotently, with
//! `IdReusePolicy::ReturnExisting`: their ids are deterministic, so a retried turn finds them)
//! and then commits [`Turn::commit`].

use quark_history::{
    ClaimedTask, Commit, Expected, FailAction, HistoryEvent, NewInstance, NewTask, RecordedEvent,
};

use std::sync::Arc;

use crate::executor::{Executor, Outcome};
use crate::registry::{ErasedOrchestration, Registry};

/// What one turn decided.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Appends the new events at `Expected::Seq(next)`, enqueues activity and timer tasks (and
    /// the parent's next turn when the instance ends as a child), and settles the task: completes
    /// it, or dead-letters it on nondeterminism or an unknown orchestration type.
    pub commit: Commit,
    /// Instances to create before committing: new children and the next run of
    /// `continue_as_new`.
    pub instances: Vec<NewInstance>,
    /// Where the code stands.
    pub outcome: Outcome,
    /// Signals to other instances, as the event each receiver's history gets. They are not in
    /// [`commit`](Self::commit): the caller looks up where each receiver runs (its queue), and
    /// whether it still runs, before adding them.
    pub signals: Vec<(String, HistoryEvent)>,
    /// The entity commands among the commit's tasks: (index in `commit.tasks`, the entity's
    /// stream). The caller runs such a command where its entity is live.
    pub homes: Vec<(usize, String)>,
}

/// Runs one orchestration turn for `task` over `history` (the instance's whole history).
pub fn process_turn(registry: &Registry, task: &ClaimedTask, history: &[RecordedEvent]) -> Turn {
    match start_executor(registry, task, history) {
        Ok((mut executor, orchestration)) => {
            executor.feed(orchestration.as_ref(), history);
            turn_of(&mut executor, task)
        }
        Err(turn) => *turn,
    }
}

/// A fresh executor for the instance whose history starts with `history[0]`, and its
/// orchestration; or the turn that dead-letters `task` when there is none to run.
pub(crate) fn start_executor(
    registry: &Registry,
    task: &ClaimedTask,
    history: &[RecordedEvent],
) -> Result<(Executor, Arc<dyn ErasedOrchestration>), Box<Turn>> {
    let dead = |error: String| Box::new(dead_turn(task, error, Outcome::Waiting));
    let Some(first) = history.first() else {
        return Err(dead("the instance has no history".into()));
    };
    let instance_id = task
        .instance_id
        .clone()
        .unwrap_or_else(|| first.instance_id.clone());
    let HistoryEvent::WorkflowStarted { instance_type, .. } = &first.event else {
        return Err(dead(format!(
            "event 1 of `{instance_id}` is {}, not WorkflowStarted",
            first.event.kind()
        )));
    };
    let Some(orchestration) = registry.orchestration(instance_type) else {
        return Err(dead(format!(
            "no orchestration `{instance_type}` is registered on this worker"
        )));
    };
    Ok((
        Executor::new(&instance_id, &task.queue),
        Arc::clone(orchestration),
    ))
}

/// The turn that dead-letters `task` with `error`.
fn dead_turn(task: &ClaimedTask, error: String, outcome: Outcome) -> Turn {
    Turn {
        commit: Commit::new().fail(task.lease.clone(), FailAction::Dead { error }),
        instances: Vec::new(),
        outcome,
        signals: Vec::new(),
        homes: Vec::new(),
    }
}

/// The turn `executor` decided since its last one, as the commit that records it (at the
/// history's next sequence number, which is the executor's).
pub(crate) fn turn_of(executor: &mut Executor, task: &ClaimedTask) -> Turn {
    let instance_id = executor.instance_id();
    let parent = executor.parent();
    let next = executor.next_seq();
    let replay = executor.turn(&task.queue);
    match &replay.outcome {
        Outcome::Nondeterminism(n) => {
            tracing::error!(instance = %instance_id, "{n}");
            return dead_turn(task, format!("{instance_id}: {n}"), replay.outcome);
        }
        Outcome::Panicked(message) => {
            tracing::error!(instance = %instance_id, "orchestration panicked: {message}");
            let error = format!("{instance_id}: the orchestration panicked: {message}");
            return dead_turn(task, error, replay.outcome);
        }
        Outcome::Stuck(why) => {
            tracing::error!(instance = %instance_id, "orchestration stuck: {why}");
            let error = format!("{instance_id}: {why}");
            return dead_turn(task, error, replay.outcome);
        }
        _ => {}
    }

    let mut commit = Commit::new();
    if !replay.new_events.is_empty() {
        commit = commit.append(instance_id.as_str(), Expected::Seq(next), replay.new_events);
    }
    // The replay's tasks come first, in order: its `homes` index them in `commit.tasks` too.
    for t in replay.tasks {
        commit = commit.enqueue(t);
    }
    // Children share the parent's queue (they start on it).
    for (child, event) in replay.notices {
        commit = commit
            .append(child.as_str(), Expected::Any, [event])
            .enqueue(NewTask::orchestration(&task.queue, &child));
    }
    if let Some(parent) = parent {
        let notice = match &replay.outcome {
            Outcome::Completed(output) => Some(HistoryEvent::ChildCompleted {
                command: parent.command,
                output: output.clone(),
            }),
            Outcome::Failed(failure) => Some(HistoryEvent::ChildFailed {
                command: parent.command,
                failure: failure.clone(),
            }),
            Outcome::Cancelled(reason) => Some(HistoryEvent::ChildFailed {
                command: parent.command,
                failure: quark_history::Failure::terminal(format!("cancelled: {reason}")),
            }),
            _ => None,
        };
        if let Some(notice) = notice {
            // The parent's tasks share the child's queue: children start on their parent's.
            commit = commit
                .append(parent.instance_id.as_str(), Expected::Any, [notice])
                .enqueue(NewTask::orchestration(&task.queue, &parent.instance_id));
        }
    }
    Turn {
        commit: commit.complete(task.lease.clone()),
        instances: replay.children,
        outcome: replay.outcome,
        signals: replay.signals,
        homes: replay.homes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor_tests::{ChargeCard, OrderV1, Reordered};
    use crate::sim::recorded;
    use quark_history::{Settle, TaskKind, Timestamp};

    fn claimed() -> ClaimedTask {
        crate::sim::claimed("orders")
    }

    fn started() -> RecordedEvent {
        crate::sim::order_started(Timestamp::from_millis(5))
    }

    fn registry<O: crate::Orchestration>() -> Registry {
        let mut r = Registry::new();
        r.add_orchestration::<O>();
        r
    }

    #[test]
    fn a_first_turn_appends_at_the_next_sequence_number_and_enqueues_the_activity() {
        let turn = process_turn(&registry::<OrderV1>(), &claimed(), &[started()]);
        assert_eq!(turn.outcome, Outcome::Waiting);
        assert_eq!(turn.commit.appends.len(), 1);
        assert_eq!(turn.commit.appends[0].expected, Expected::Seq(2));
        let task = &turn.commit.tasks[0];
        assert_eq!(
            (task.kind, task.queue.as_str()),
            (TaskKind::Activity, "orders")
        );
        let crate::task::TaskPayload::Activity(a) =
            crate::task::TaskPayload::from_bytes(&task.payload).unwrap()
        else {
            panic!("not an activity task");
        };
        assert_eq!(a.activity, <ChargeCard as crate::Activity>::NAME);
        assert!(matches!(turn.commit.settle, Some(Settle::Complete(_))));
    }

    #[test]
    fn nondeterminism_dead_letters_the_task_and_appends_nothing() {
        let first = process_turn(&registry::<OrderV1>(), &claimed(), &[started()]);
        let mut history = vec![started()];
        for (i, e) in first.commit.appends[0].events.iter().enumerate() {
            history.push(recorded(2 + i as u64, Timestamp::from_millis(6), e.clone()));
        }
        let turn = process_turn(&registry::<Reordered>(), &claimed(), &history);
        assert!(matches!(turn.outcome, Outcome::Nondeterminism(_)));
        assert!(turn.commit.appends.is_empty() && turn.commit.tasks.is_empty());
        assert!(matches!(
            turn.commit.settle,
            Some(Settle::Fail(_, FailAction::Dead { ref error })) if error.contains("nondeterminism")
        ));
    }

    struct Panics;
    impl crate::Orchestration for Panics {
        const NAME: &'static str = "order";
        type Input = u32;
        type Output = u32;
        async fn run(
            _ctx: crate::OrchestrationContext,
            n: u32,
        ) -> Result<u32, crate::OrchestrationError> {
            if n > 0 {
                panic!("bug in the orchestration: {n}");
            }
            Ok(n)
        }
    }

    #[test]
    fn a_panicking_orchestration_dead_letters_its_task_and_the_worker_goes_on() {
        let turn = process_turn(&registry::<Panics>(), &claimed(), &[started()]);
        assert_eq!(
            turn.outcome,
            Outcome::Panicked("bug in the orchestration: 500".into())
        );
        assert!(turn.commit.appends.is_empty());
        assert!(matches!(
            turn.commit.settle,
            Some(Settle::Fail(_, FailAction::Dead { ref error })) if error.contains("panicked")
        ));
    }

    #[test]
    fn an_unknown_orchestration_type_is_dead_lettered_with_its_name() {
        let turn = process_turn(&Registry::new(), &claimed(), &[started()]);
        assert!(matches!(
            turn.commit.settle,
            Some(Settle::Fail(_, FailAction::Dead { ref error })) if error.contains("`order`")
        ));
    }
}
