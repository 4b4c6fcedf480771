//! Claiming and running: one poller per task kind, with a bounded pool of task runners.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{
    ClaimRequest, ClaimedTask, Commit, Error, FailAction, TaskKind, Wake, Wakeups,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::handler::{Handler, HandlerError, TaskContext};
use crate::metrics::Metrics;
use crate::worker::{InFlight, Shared};

/// How many times a turn is redone at once when its history moved on while it ran.
const MAX_CONFLICT_RETRIES: u32 = 8;

/// The poller of one task kind: claims as many tasks as it has free slots, runs each on its own
/// tokio task, and when the queue is empty sleeps until a wake-up or the polling interval.
pub(crate) async fn run(shared: Arc<Shared>, kind: TaskKind) {
    let settings = &shared.settings;
    let slots = Arc::clone(&shared.routes[&kind].slots);
    let mut wakeups = subscribe(&shared).await;
    let mut backoff = Duration::from_millis(20);
    // Whether the last claim may have left claimable tasks behind (it came back full).
    let mut backlog = true;
    while !shared.is_stopping() {
        let free = slots.available_permits();
        if free == 0 {
            // Every slot is busy: wait for one to free up.
            tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                () = shared.stopped() => return,
            }
            if !backlog {
                // The slots were busy with tasks this worker started itself (`run_here`), not
                // with a queue it could not drain: claim again only when there is news (a
                // wake-up that came in meanwhile is still waiting) or at the polling interval,
                // not every time a slot frees.
                tokio::select! {
                    () = idle_wait(&shared, kind, &mut wakeups) => {}
                    () = shared.stopped() => return,
                }
            }
            continue;
        }
        let limit = (free as u32).min(settings.claim_batch);
        let request = ClaimRequest {
            worker: settings.id.to_string(),
            queues: settings.queues.clone(),
            kinds: vec![kind],
            limit,
            lease: settings.lease,
            affinity_delay: settings.affinity_delay,
            worker_ttl: settings.heartbeat * 3,
        };
        match shared.store.claim(request).await {
            Ok(tasks) => {
                backoff = Duration::from_millis(20);
                let full = tasks.len() as u32 == limit;
                backlog = full;
                if !tasks.is_empty() {
                    let handler = &shared.routes[&kind].handler;
                    handler.prefetch(&tasks, Arc::clone(&shared.store)).await;
                }
                for task in tasks {
                    Metrics::inc(&shared.metrics.claimed);
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        // Cannot happen: we claimed no more than the free slots, and only this
                        // poller takes them. Hand the task back rather than overrun the pool.
                        crate::lease::hand_back(&shared, task.lease).await;
                        continue;
                    };
                    spawn_task(&shared, task, permit);
                }
                if full {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %kind, "claim failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shared.stopped() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        tokio::select! {
            () = idle_wait(&shared, kind, &mut wakeups) => {}
            () = shared.stopped() => return,
        }
    }
}

async fn subscribe(shared: &Shared) -> Option<Wakeups> {
    match shared.store.subscribe().await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no wake-ups; polling only");
            None
        }
    }
}

/// Waits until a wake-up for our kind on one of our queues, or the polling interval. Notices that
/// piled up meanwhile are drained: one claim answers them all.
async fn idle_wait(shared: &Shared, kind: TaskKind, wakeups: &mut Option<Wakeups>) {
    let deadline = tokio::time::Instant::now() + shared.settings.poll_interval;
    let Some(w) = wakeups else {
        tokio::time::sleep_until(deadline).await;
        return;
    };
    let ours = |wake: &Wake| match wake {
        Wake::Queue { queue, kind: k } => *k == kind && shared.settings.queues.contains(queue),
        _ => true,
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.wait(left).await {
            None => return,
            Some(wake) if ours(&wake) => {
                while w.try_recv().is_some() {}
                return;
            }
            Some(_) => {}
        }
    }
}

/// Runs `task` on its own tokio task, holding `permit` (a slot of its kind's pool) until it is done
/// or hands the slot on to a task that continues its work (see [`TaskContext::run_here`]).
pub(crate) fn spawn_task(
    shared: &Arc<Shared>,
    task: ClaimedTask,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Some(route) = shared.routes.get(&task.kind) else {
        tracing::error!(kind = %task.kind, "no handler for a task this worker holds");
        return;
    };
    let handler = Arc::clone(&route.handler);
    let (cancel, cancelled) = watch::channel(false);
    let (stop, stop_requested) = watch::channel(false);
    let task_id = task.lease.task_id;
    shared.in_flight().insert(
        task_id,
        InFlight {
            lease: task.lease.clone(),
            cancel,
            stop,
            abort: None,
        },
    );
    let span = tracing::info_span!(
        "task",
        kind = %task.kind,
        task_id,
        instance = task.instance_id.as_deref().unwrap_or(""),
        attempt = task.lease.attempt,
    );
    let cx = TaskContext::new(
        Arc::clone(shared),
        task.lease.clone(),
        cancelled,
        stop_requested,
        Some((task.kind, permit)),
    );
    let shared2 = Arc::clone(shared);
    let join = tokio::spawn(
        async move {
            execute(&shared2, &*handler, &task, &cx).await;
            cx.release_slot();
            if shared2.in_flight().remove(&task_id).is_some() {
                shared2.idle.notify_waiters();
            }
        }
        .instrument(span),
    );
    if let Some(entry) = shared.in_flight().get_mut(&task_id) {
        entry.abort = Some(join.abort_handle());
    }
}

/// Runs a task's handler and commits its outcome.
async fn execute(shared: &Shared, handler: &dyn Handler, task: &ClaimedTask, cx: &TaskContext) {
    let metrics = &shared.metrics;
    let mut conflicts = 0;
    loop {
        let commit = match handler.handle(task.clone(), cx.clone()).await {
            Ok(commit) => commit,
            Err(HandlerError::Rejected(why)) => {
                tracing::error!(error = %why, "task rejected; dead-lettering it");
                let dead = Commit::new().fail(task.lease.clone(), FailAction::Dead { error: why });
                settle_alone(shared, dead, &metrics.failed).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "task failed; retrying after a backoff");
                release(shared, task, Some(e.to_string())).await;
                return;
            }
        };
        if commit.settle.is_none() {
            if commit.appends.is_empty() && commit.tasks.is_empty() {
                // The handler settled the task itself, through `TaskContext::commit`.
                return;
            }
            tracing::error!("handler returned a commit that does not settle its task");
            release(shared, task, Some("handler did not settle the task".into())).await;
            return;
        }
        let mut commit = commit;
        // Inner loop: the same outcome, committed again with less when an instance it would tell
        // has ended meanwhile.
        loop {
            // Kept only when the commit tells another instance, the one case that commits again
            // with less (cloning every commit would copy each outcome for a rare failure).
            let mut fallback = commit
                .appends
                .iter()
                .any(|a| task.instance_id.as_deref() != Some(a.instance_id.as_str()))
                .then(|| commit.clone());
            match cx.commit(commit).await {
                Ok(_) => return,
                Err(Error::LeaseLost { .. }) => {
                    tracing::info!("lease lost; another worker has the task");
                    Metrics::inc(&metrics.lease_lost);
                    return;
                }
                Err(Error::Conflict { .. }) if conflicts < MAX_CONFLICT_RETRIES => {
                    // New events arrived while the turn ran: decide again on the longer history.
                    Metrics::inc(&metrics.conflicts);
                    conflicts += 1;
                    break;
                }
                Err(Error::InstanceClosed { id, status })
                    if task.instance_id.as_deref() != Some(id.as_str())
                        && fallback
                            .as_ref()
                            .is_some_and(|f| f.appends.iter().any(|a| a.instance_id == id)) =>
                {
                    // Another instance ended (a parent told of its child's end after it was
                    // terminated): the news has nobody to go to, but the rest must land.
                    tracing::info!(instance = %id, %status, "dropping news for an ended instance");
                    commit = fallback
                        .take()
                        .expect("the guard saw it")
                        .without_instance(&id);
                }
                Err(Error::InstanceClosed { id, status }) => {
                    tracing::info!(instance = %id, %status, "instance ended meanwhile; dropping the result");
                    let done = Commit::new().complete(task.lease.clone());
                    settle_alone(shared, done, &metrics.completed).await;
                    return;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "commit failed; retrying after a backoff");
                    release(shared, task, Some(e.to_string())).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit refused; dead-lettering the task");
                    let dead = Commit::new().fail(
                        task.lease.clone(),
                        FailAction::Dead {
                            error: e.to_string(),
                        },
                    );
                    settle_alone(shared, dead, &metrics.failed).await;
                    return;
                }
            }
        }
    }
}

async fn settle_alone(shared: &Shared, commit: Commit, counter: &std::sync::atomic::AtomicU64) {
    match shared.store.commit(commit).await {
        Ok(_) => Metrics::inc(counter),
        Err(Error::LeaseLost { .. }) => Metrics::inc(&shared.metrics.lease_lost),
        // The lease will expire and the task come back.
        Err(e) => tracing::warn!(error = %e, "could not settle the task; its lease will expire"),
    }
}

/// Releases a task to run again after a backoff that grows with its attempts.
async fn release(shared: &Shared, task: &ClaimedTask, error: Option<String>) {
    let at = shared.store.config().clock.now()
        + crate::backoff::delay(
            task.lease.attempt,
            Duration::from_millis(500),
            Duration::from_secs(60),
        );
    let commit = Commit::new().fail(task.lease.clone(), FailAction::Retry { at, error });
    settle_alone(shared, commit, &shared.metrics.retried).await;
}
