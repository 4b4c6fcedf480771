//! Keeping leases alive, and handing tasks back.

use std::sync::Arc;

use quark_history::{Commit, Error, FailAction, Lease, WorkerInfo};

use crate::shared::Shared;

/// Every heartbeat: renews the worker's registration and extends the lease of every in-flight
/// task. A task whose lease was lost is cancelled: another worker has it now.
///
/// A change of memory pressure heartbeats at once (only the registration: leases are extended
/// on the regular ticks), so that other workers learn of it without waiting.
pub(crate) async fn keep(
    shared: Arc<Shared>,
    mut info: WorkerInfo,
    load: Box<dyn Fn() -> quark_history::WorkerLoad + Send + Sync>,
    warm: Box<dyn Fn() -> Vec<quark_workflow::runner::LiveInstance> + Send + Sync>,
) {
    let mut tick = tokio::time::interval(shared.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let regular = tokio::select! {
            _ = tick.tick() => true,
            () = shared.memory.beat.notified() => false,
        };
        info.heartbeat_at = shared.store.config().clock.now();
        info.load = load();
        match shared
            .store
            .heartbeat_run(info.clone(), &shared.identity.run)
            .await
        {
            Ok(()) => {}
            Err(Error::Superseded { worker_id }) => {
                step_down(&shared, &worker_id);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
        }
        if !regular {
            continue;
        }
        crate::placement::sketch::publish(&shared, warm()).await;
        let leases: Vec<Lease> = shared
            .in_flight()
            .values()
            .map(|f| f.lease.clone())
            .collect();
        for lease in leases {
            match shared
                .store
                .extend_lease(&lease, shared.settings.lease)
                .await
            {
                Ok(_) => {}
                Err(Error::LeaseLost { .. }) => {
                    // The task may simply have finished since the snapshot above, or be writing
                    // the commit that settles it (fenced by its lease: if the lease is lost, the
                    // commit fails on its own).
                    let in_flight = shared.in_flight();
                    if let Some(f) = in_flight
                        .get(&lease.task_id)
                        .filter(|f| f.lease == lease && !f.settling)
                    {
                        tracing::warn!(task_id = lease.task_id, "lease lost; cancelling the task");
                        shared.metrics.lease_lost(&f.labels);
                        let _ = f.cancel.send(true);
                    }
                }
                Err(Error::CancelRequested { .. }) => {
                    let in_flight = shared.in_flight();
                    if let Some(f) = in_flight.get(&lease.task_id).filter(|f| f.lease == lease) {
                        // A cancelled job, or an activity of an instance that ended.
                        tracing::info!(
                            task_id = lease.task_id,
                            "the task was cancelled; stopping it"
                        );
                        let _ = f.stop.send(true);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, task_id = lease.task_id, "lease extension failed")
                }
            }
        }
    }
}

/// Stops a worker whose id another process registered: that process took the leases back, so
/// whatever this one still does is refused at commit. It stops claiming and cancels its tasks
/// rather than run them for nothing, and says so loudly.
fn step_down(shared: &Shared, worker_id: &str) {
    tracing::error!(
        worker = worker_id,
        "another process registered this worker id (a restart, while this one was thought dead); \
         stopping: this process's tasks were taken back"
    );
    shared
        .superseded
        .store(true, std::sync::atomic::Ordering::Release);
    for f in shared.in_flight().values() {
        let _ = f.cancel.send(true);
    }
    shared.stopping.send_replace(true);
}

/// Every half heartbeat: releases the leases of workers whose heartbeats stopped two of their
/// intervals ago, so that their tasks wait about that long rather than a whole lease. Every
/// worker does it; the store reaps each dead worker once.
pub(crate) async fn reap(shared: Arc<Shared>) {
    // At least a millisecond: an interval of zero panics.
    let every = (shared.settings.heartbeat / 2).max(std::time::Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.store.reap_workers(&shared.settings.id).await {
            Ok(reaped) => {
                for dead in reaped {
                    tracing::warn!(
                        worker = %dead.worker_id,
                        released = dead.released,
                        "a worker stopped heartbeating; its tasks are claimable again"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for dead workers"),
        }
    }
}

/// Releases a task so another worker can take it at once.
pub(crate) async fn hand_back(shared: &Shared, lease: Lease) {
    let at = shared.store.config().clock.now();
    let commit = Commit::new().fail(
        lease,
        FailAction::Retry {
            at,
            error: Some("handed back at shutdown".into()),
        },
    );
    if let Err(e) = shared.store.commit(commit).await {
        tracing::warn!(error = %e, "could not hand a task back; its lease will expire");
    }
}
