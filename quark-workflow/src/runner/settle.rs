//! From a handler's outcome to a settled task: commit it, and deal with a commit the store
//! refuses. Both drivers end every task here, so a refusal means the same thing under the worker
//! and under the test environment.

use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{ClaimedTask, Commit, Error, FailAction, TaskKind};

use super::{Handled, HandlerError, HostRef, RunEvent};

/// How many times a turn is redone at once when its history moved on while it ran; past that,
/// the task is released and redone after a backoff.
pub const MAX_CONFLICT_RETRIES: u32 = 8;

/// How a task ended up, as far as its runner is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Its outcome was committed (completed, failed, or released by its own retry policy).
    Committed,
    /// It was dead-lettered: its handler rejected it, or the store refused its commit for good.
    Dead(String),
    /// It was released to run again after a backoff (an error of the store or of the handler).
    Released(String),
    /// Its instance ended while it ran: it was completed and its result dropped.
    Dropped,
    /// Its lease was lost: another holder has it, and nothing of this run was written.
    LeaseLost,
    /// Nothing could be written (the store is unreachable): its lease will expire and it will run
    /// again.
    Abandoned(String),
}

/// The delay before a task that failed for a reason outside its own code (a store error, a
/// handler error) runs again: from half a second, doubling per attempt, jittered, up to a minute,
/// or up to [`MAX_TURN_RELEASE_DELAY`] for an orchestration turn.
///
/// A turn's attempts count its wake-ups as well as its failures: a turn woken while it runs is
/// released to run again on the same row, and every claim counts. A busy instance's turn can
/// therefore stand at its eighth attempt on its first failure, and a minute's wait would hold the
/// whole instance up for a store hiccup. A turn is redone from the journal and costs little, so
/// it waits a few seconds at most.
pub fn release_delay(task: &ClaimedTask) -> Duration {
    let max = if task.kind == TaskKind::Orchestration {
        MAX_TURN_RELEASE_DELAY
    } else {
        Duration::from_secs(60)
    };
    let salt = task.lease.task_id as u64 ^ task.visible_at.as_micros() as u64;
    crate::backoff::delay(task.lease.attempt, Duration::from_millis(500), max, salt)
}

/// The longest an orchestration turn that failed waits before it runs again.
pub const MAX_TURN_RELEASE_DELAY: Duration = Duration::from_secs(2);

/// Handles `task` with `handle` and commits the outcome through `host`.
///
/// - A handler that rejects the task dead-letters it; any other handler error releases it after
///   [`release_delay`]; a lost lease writes nothing.
/// - A conflict (new events arrived while a turn ran) runs the handler again at once, up to
///   [`MAX_CONFLICT_RETRIES`] times.
/// - If another instance the commit tells has ended (a parent told of its child's end after it was
///   terminated, a signal's receiver that ended) or is gone, the news is dropped and the rest
///   committed.
/// - If the task's own instance has ended, the task is completed and its result dropped.
/// - A retryable store error releases the task; any other refusal dead-letters it.
pub async fn settle<F>(task: &ClaimedTask, host: &HostRef, mut handle: F) -> Settled
where
    F: FnMut() -> BoxFuture<'static, Result<Handled, HandlerError>>,
{
    let own = task.instance_id.as_deref();
    let mut conflicts = 0;
    'handle: loop {
        let mut commit = match handle().await {
            Ok(Handled::Commit(commit)) => commit,
            Ok(Handled::Settled) => return Settled::Committed,
            Err(HandlerError::Rejected(why)) => {
                tracing::error!(error = %why, "task rejected; dead-lettering it");
                return dead(task, host, why).await;
            }
            Err(HandlerError::LeaseLost) => {
                tracing::info!("lease lost while the task ran; another worker has it");
                return Settled::LeaseLost;
            }
            Err(e) => {
                tracing::warn!(error = %e, "task failed; retrying after a backoff");
                return release(task, host, e.to_string()).await;
            }
        };
        if commit.settle.is_none() {
            tracing::error!("handler returned a commit that does not settle its task");
            return release(task, host, "the handler did not settle the task".into()).await;
        }
        loop {
            // Kept only when the commit tells another instance, the one case that commits again
            // with less (cloning every commit would copy each outcome for a rare failure).
            let mut fallback = commit
                .appends
                .iter()
                .any(|a| own != Some(a.instance_id.as_str()))
                .then(|| commit.clone());
            match host.commit(commit).await {
                Ok(_) => return Settled::Committed,
                Err(Error::LeaseLost { .. }) => {
                    tracing::info!("lease lost; another worker has the task");
                    host.note(RunEvent::LeaseLost);
                    return Settled::LeaseLost;
                }
                Err(Error::Conflict { .. }) if conflicts < MAX_CONFLICT_RETRIES => {
                    host.note(RunEvent::Conflict);
                    conflicts += 1;
                    continue 'handle;
                }
                Err(Error::InstanceClosed { id, status })
                    if own != Some(id.as_str())
                        && fallback
                            .as_ref()
                            .is_some_and(|f| f.appends.iter().any(|a| a.instance_id == id)) =>
                {
                    tracing::info!(instance = %id, %status, "dropping news for an ended instance");
                    commit = match fallback.take() {
                        Some(f) => f.without_instance(&id),
                        None => unreachable!("the guard saw it"),
                    };
                }
                // A signal's receiver removed (by retention) since the turn looked it up.
                Err(Error::InstanceNotFound { id })
                    if own != Some(id.as_str())
                        && fallback
                            .as_ref()
                            .is_some_and(|f| f.appends.iter().any(|a| a.instance_id == id)) =>
                {
                    tracing::warn!(instance = %id, "dropping news for an instance that is gone");
                    commit = match fallback.take() {
                        Some(f) => f.without_instance(&id),
                        None => unreachable!("the guard saw it"),
                    };
                }
                Err(Error::InstanceClosed { id, status }) => {
                    tracing::info!(instance = %id, %status, "instance ended meanwhile; dropping the result");
                    return match settle_alone(host, Commit::new().complete(task.lease.clone()))
                        .await
                    {
                        Ok(()) => Settled::Dropped,
                        Err(settled) => settled,
                    };
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "commit failed; retrying after a backoff");
                    return release(task, host, e.to_string()).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit refused; dead-lettering the task");
                    return dead(task, host, e.to_string()).await;
                }
            }
        }
    }
}

async fn dead(task: &ClaimedTask, host: &HostRef, error: String) -> Settled {
    // A request's caller waits for an answer: it gets the reason, and the request is refused.
    if task.kind == TaskKind::Request
        && let Ok(crate::task::TaskPayload::Request(request)) =
            crate::task::TaskPayload::from_bytes(&task.payload)
    {
        let answer = quark_history::Answer::Rejected(format!("the request failed: {error}"));
        if let Err(e) = host
            .store()
            .answer_request(&request.instance_id, &request.id, answer)
            .await
        {
            tracing::warn!(error = %e, "could not answer a dead-lettered request; releasing it");
            return release(task, host, e.to_string()).await;
        }
    }
    let commit = Commit::new().fail(
        task.lease.clone(),
        FailAction::Dead {
            error: error.clone(),
        },
    );
    match settle_alone(host, commit).await {
        Ok(()) => Settled::Dead(error),
        Err(settled) => settled,
    }
}

async fn release(task: &ClaimedTask, host: &HostRef, error: String) -> Settled {
    let at = host.store().config().clock.now() + release_delay(task);
    let commit = Commit::new().fail(
        task.lease.clone(),
        FailAction::Retry {
            at,
            error: Some(error.clone()),
        },
    );
    match settle_alone(host, commit).await {
        Ok(()) => Settled::Released(error),
        Err(settled) => settled,
    }
}

/// Commits a commit that only settles the task.
async fn settle_alone(host: &HostRef, commit: Commit) -> Result<(), Settled> {
    match host.commit(commit).await {
        Ok(_) => Ok(()),
        Err(Error::LeaseLost { .. }) => {
            host.note(RunEvent::LeaseLost);
            Err(Settled::LeaseLost)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not settle the task; its lease will expire");
            Err(Settled::Abandoned(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::{Lease, Timestamp};

    fn claimed(kind: TaskKind, attempt: u32) -> ClaimedTask {
        ClaimedTask {
            lease: Lease {
                task_id: 1,
                attempt,
                worker: "w".into(),
            },
            kind,
            queue: "default".into(),
            instance_id: Some("i".into()),
            priority: 0,
            created_at: Timestamp::EPOCH,
            visible_at: Timestamp::EPOCH,
            lease_expires_at: Timestamp::EPOCH,
            payload: Vec::new(),
            traceparent: None,
        }
    }

    #[test]
    fn a_turn_claimed_many_times_waits_seconds_not_a_minute() {
        // The eighth claim of a busy instance's turn, failing for the first time.
        let turn = release_delay(&claimed(TaskKind::Orchestration, 8));
        assert!(turn <= MAX_TURN_RELEASE_DELAY, "{turn:?}");
        assert!(turn >= MAX_TURN_RELEASE_DELAY * 3 / 4, "{turn:?}");
        // An activity's attempts are its failures: it backs off to the minute.
        let activity = release_delay(&claimed(TaskKind::Activity, 8));
        assert!(activity >= Duration::from_secs(45), "{activity:?}");
        // A turn's first attempts back off as before.
        let first = release_delay(&claimed(TaskKind::Orchestration, 1));
        assert!(first <= Duration::from_millis(500), "{first:?}");
    }
}
