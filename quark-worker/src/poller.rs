//! Claiming and running: one poller per task kind, with a bounded pool of task runners.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{ClaimRequest, ClaimedTask, TaskKind, Wake, Wakeups};
use quark_workflow::runner::{HostRef, settle};
use tokio::sync::watch;
use tracing::Instrument;

use crate::handler::{Handler, TaskContext};
use crate::metrics::Metrics;
use crate::shared::{InFlight, Shared};

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
            execute(&*handler, &task, &cx).await;
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

/// Runs a task's handler and settles it: the settle step the test environment runs too.
async fn execute(handler: &dyn Handler, task: &ClaimedTask, cx: &TaskContext) {
    let host: HostRef = Arc::new(cx.clone());
    settle(task, &host, || handler.handle(task.clone(), cx.clone())).await;
}
