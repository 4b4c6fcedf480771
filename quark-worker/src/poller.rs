//! Claiming and running: one poller per task kind, with a bounded pool of task runners.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{ClaimRequest, TaskKind, Wake, Wakeups};

use crate::handler::{Routes, spawn_task};
use crate::shared::Shared;

/// The poller of one task kind: claims as many tasks as it has free slots, runs each on its own
/// tokio task, and when the queue is empty sleeps until a wake-up or the polling interval.
pub(crate) async fn run(shared: Arc<Shared>, routes: Arc<Routes>, kind: TaskKind) {
    let settings = &shared.settings;
    let slots = Arc::clone(&routes[&kind].slots);
    let mut wakeups = subscribe(&shared).await;
    let mut backoff = Duration::from_millis(20);
    // Whether the last claim may have left claimable tasks behind (it came back full).
    let mut backlog = true;
    while !shared.is_stopping() {
        if shared.memory.breaker_open() {
            // Out of memory soon: claim nothing, leave the work to other workers, until the
            // governor closes the breaker.
            tokio::select! {
                () = shared.memory.breaker_closed() => {}
                () = shared.stopped() => return,
            }
            backlog = true;
            continue;
        }
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
                    let handler = &routes[&kind].handler;
                    handler.prefetch(&tasks, Arc::clone(&shared.store)).await;
                }
                let now = shared.store.config().clock.now();
                for task in tasks {
                    shared.metrics.claimed(&task, now);
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        // Cannot happen: we claimed no more than the free slots, and only this
                        // poller takes them. Hand the task back rather than overrun the pool.
                        crate::lease::hand_back(&shared, task.lease).await;
                        continue;
                    };
                    spawn_task(&shared, &routes, task, permit, false);
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
