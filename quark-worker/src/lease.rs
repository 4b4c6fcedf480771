//! Keeping leases alive, and handing tasks back.

use std::sync::Arc;

use quark_history::{Commit, Error, FailAction, Lease, WorkerInfo};

use crate::shared::Shared;

/// Every heartbeat: renews the worker's registration and extends the lease of every in-flight
/// task. A task whose lease was lost is cancelled: another worker has it now.
pub(crate) async fn keep(shared: Arc<Shared>, mut info: WorkerInfo) {
    let mut tick = tokio::time::interval(shared.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        info.heartbeat_at = shared.store.config().clock.now();
        if let Err(e) = shared.store.heartbeat_worker(info.clone()).await {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
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
                    // The task may simply have finished since the snapshot above.
                    let in_flight = shared.in_flight();
                    if let Some(f) = in_flight.get(&lease.task_id).filter(|f| f.lease == lease) {
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
