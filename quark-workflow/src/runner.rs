//! Running one claimed task of any workflow kind: the loop body every worker shares.
//!
//! [`run_task`] reads what the task needs, runs it (an orchestration turn through
//! [`process_turn`], an activity attempt through the registry, a timer) and commits the result
//! under the task's lease. The test environment calls it; so can `quark-worker`, around its own
//! claiming, leases, heartbeats and concurrency.

use std::time::Duration;

use quark_history::{
    ClaimedTask, Clock, Commit, Error, FailAction, HistoryRange, IdReusePolicy, Settle, Store,
    TaskKind, Timestamp,
};

use crate::activity::{
    ActivityContext, ActivityEffects, ActivityInfo, CancellationToken, HeartbeatSink,
};
use crate::registry::Registry;
use crate::task::{TaskPayload, activity_commit, timer_commit};
use crate::turn::process_turn;

/// Histories past this many events get a warning each turn (Temporal warns at 10,240).
pub const HISTORY_WARN_EVENTS: usize = 10_240;

/// What running a task left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ran {
    /// When tasks it enqueued or released for later (timers, retries) become visible.
    pub wake_at: Vec<Timestamp>,
}

/// Runs one claimed task and commits its result.
///
/// A lost lease or a conflicting append is not an error of the task: the commit is refused, and
/// for a conflict (new events arrived during a turn) the turn is released to run again at once.
/// A result for an instance that ended meanwhile completes the task and is dropped.
pub async fn run_task(
    store: &dyn Store,
    registry: &Registry,
    task: ClaimedTask,
    clock: &dyn Clock,
    heartbeat: Option<HeartbeatSink>,
) -> Result<Ran, Error> {
    let dead = |error: String| Commit::new().fail(task.lease.clone(), FailAction::Dead { error });
    // A transactional activity's transaction, which its result's commit finishes.
    let mut tx = None;
    let commit = match task.kind {
        TaskKind::Orchestration => {
            let id = task.instance_id.clone().unwrap_or_default();
            let history = store.read_history(&id, HistoryRange::All).await?;
            if history.len() > HISTORY_WARN_EVENTS {
                tracing::warn!(
                    instance = %id,
                    events = history.len(),
                    "long history: consider continue_as_new"
                );
            }
            let turn = process_turn(registry, &task, &history);
            // Created first and idempotently: their ids are deterministic, so a turn that has to
            // run again finds them.
            for instance in turn.instances {
                store
                    .create_instance(instance, IdReusePolicy::ReturnExisting)
                    .await?;
            }
            turn.commit
        }
        TaskKind::Activity | TaskKind::Timer | TaskKind::Job => {
            match TaskPayload::from_bytes(&task.payload) {
                Ok(TaskPayload::Timer(timer)) => timer_commit(&task, &timer),
                Ok(TaskPayload::Activity(a)) => {
                    let info = ActivityInfo::new(
                        &a.instance_id,
                        a.command,
                        &a.activity,
                        task.lease.attempt,
                    );
                    let effects = effects_for(store, &a.options).await?;
                    let ctx = ActivityContext::new(info, heartbeat, CancellationToken::new())
                        .with_effects(effects.clone());
                    match registry.run_activity(&a.activity, ctx, a.input.clone()) {
                        Some(run) => {
                            let result = attempt(run, a.options.start_to_close).await;
                            let ok = result.is_ok();
                            let (commit, in_tx) = effects
                                .finish(activity_commit(&task, &a, result, clock.now()), ok)
                                .await?;
                            tx = in_tx;
                            commit
                        }
                        None => dead(format!("no activity `{}` is registered here", a.activity)),
                    }
                }
                Ok(TaskPayload::Job(job)) => {
                    let info = ActivityInfo::new("", 0, &job.activity, task.lease.attempt);
                    let effects = effects_for(store, &job.options).await?;
                    let ctx = ActivityContext::new(info, heartbeat, CancellationToken::new())
                        .with_effects(effects.clone());
                    match registry.run_activity(&job.activity, ctx, job.input.clone()) {
                        Some(run) => {
                            let result = attempt(run, job.options.start_to_close).await;
                            let ok = result.is_ok();
                            let (commit, in_tx) = effects
                                .finish(crate::job_commit(&task, &job, result, clock.now()), ok)
                                .await?;
                            tx = in_tx;
                            commit
                        }
                        None => dead(format!("no activity `{}` is registered here", job.activity)),
                    }
                }
                Err(e) => dead(format!("unreadable task payload: {e}")),
            }
        }
        other => dead(format!("{other} tasks are not workflow tasks")),
    };

    let mut ran = Ran::default();
    ran.wake_at
        .extend(commit.tasks.iter().filter_map(|t| t.visible_at));
    if let Some(Settle::Fail(_, FailAction::Retry { at, .. })) = &commit.settle {
        ran.wake_at.push(*at);
    }
    let own = task.instance_id.clone().unwrap_or_default();
    let committed = match tx {
        Some(tx) => store.commit_tx(tx, commit.clone()).await,
        None => store.commit(commit.clone()).await,
    };
    match committed {
        Ok(_) => Ok(ran),
        // Another instance ended meanwhile (a parent told of its child's end): the news has
        // nobody to go to, but this instance's own events still must land.
        Err(Error::InstanceClosed { id, .. }) if id != own => {
            store.commit(commit.without_instance(&id)).await?;
            Ok(ran)
        }
        // This instance ended while the result was on its way: nothing waits for it.
        Err(Error::InstanceClosed { .. }) => {
            store.commit(Commit::new().complete(task.lease)).await?;
            Ok(Ran::default())
        }
        // New events arrived during the turn: run it again on the longer history.
        Err(Error::Conflict { .. }) => {
            let again = FailAction::Retry {
                at: clock.now(),
                error: None,
            };
            store.commit(Commit::new().fail(task.lease, again)).await?;
            Ok(Ran::default())
        }
        Err(e) => Err(e),
    }
}

/// The effects of an attempt of an activity with `options`: a transaction on the store for a
/// transactional one (see [`ActivityContext::transaction`]).
pub async fn effects_for(
    store: &dyn Store,
    options: &crate::ActivityOptions,
) -> Result<ActivityEffects, Error> {
    let tx = if options.transactional {
        Some(store.begin_tx().await?)
    } else {
        None
    };
    Ok(ActivityEffects::new(tx))
}

/// One activity attempt, under its `start_to_close` limit; a panic is a retryable failure.
async fn attempt(
    run: futures::future::BoxFuture<'static, Result<quark_history::Payload, crate::ActivityError>>,
    limit: Option<Duration>,
) -> Result<quark_history::Payload, crate::ActivityError> {
    use futures::FutureExt;
    let run = std::panic::AssertUnwindSafe(run).catch_unwind();
    let outcome = match limit {
        Some(limit) => match tokio::time::timeout(limit, run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(crate::ActivityError::message(format!(
                    "start_to_close timeout of {limit:?} exceeded"
                )));
            }
        },
        None => run.await,
    };
    outcome.unwrap_or_else(|panic| {
        let message = crate::executor::panic_message(panic.as_ref());
        Err(crate::ActivityError::message(format!(
            "the activity panicked: {message}"
        )))
    })
}
