//! Housekeeping that any worker may do: purging finished jobs past their retention, expired unique
//! keys and abandoned cancellations, in short batches that never hold the hot table for long.

use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;

/// Rows per batch: small enough that one batch is a short transaction.
const BATCH: u32 = 1_000;

/// Every `every`, purges until a batch comes back short; stops with the worker.
pub(crate) async fn run(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => return,
        }
        loop {
            match shared.store.purge_finished(BATCH).await {
                Ok(p) => {
                    if p.jobs + p.keys + p.progress + p.cancelled > 0 {
                        tracing::debug!(
                            jobs = p.jobs,
                            keys = p.keys,
                            progress = p.progress,
                            cancelled = p.cancelled,
                            "purged"
                        );
                    }
                    if p.jobs < u64::from(BATCH)
                        && p.keys < u64::from(BATCH)
                        && p.progress < u64::from(BATCH)
                        && p.cancelled < u64::from(BATCH)
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging finished jobs failed; trying again later");
                    break;
                }
            }
            if shared.is_stopping() {
                return;
            }
        }
    }
}
