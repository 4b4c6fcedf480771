//! Affinity follows the state: a worker drops the warm runs of instances whose affinity moved to
//! another worker (another worker ran a later turn: this one handed its affinity away under
//! memory pressure, or was slow to claim, or a placement moved the instance). Their state lives
//! on the other worker now; the copy here is stale and only holds memory. Dropping it is what
//! makes a hand-over free memory on the source, and not only on the next eviction.
//!
//! It is a cache decision, never a correctness one: a stale run could not be used anyway (a turn
//! feeds a run only the events right after what it has seen, and replays otherwise).
//!
//! Live entities follow their stream's home the same way: a worker drops the entities whose
//! home is another worker (the coordinator moved them, or another worker's activity appended
//! to them last). A stream with no home yet is kept: nothing says it lives elsewhere.

use std::sync::Arc;
use std::time::Duration;

use quark_workflow::runner::Runner;

use crate::shared::Shared;

/// How often the warm runs are checked.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Runs until the worker stops.
pub(crate) async fn run(shared: Arc<Shared>, runners: Arc<Vec<Runner>>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => return,
        }
        for runner in runners.iter() {
            let warm: Vec<String> = runner
                .live_instances()
                .into_iter()
                .map(|l| l.instance_id)
                .collect();
            let live: Vec<String> = runner
                .live_entities()
                .into_iter()
                .map(|e| e.stream_id)
                .collect();
            if !live.is_empty() {
                drop_entities_served_elsewhere(&shared, runner, &live).await;
            }
            if warm.is_empty() {
                continue;
            }
            match shared.store.moved_away(&shared.settings.id, &warm).await {
                Ok(gone) if !gone.is_empty() => {
                    let freed = runner.evict(gone).await;
                    shared.metrics.moved_away(freed);
                    tracing::debug!(
                        runs = freed.count,
                        bytes = freed.bytes,
                        "dropped the warm runs of instances another worker serves now"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not check where warm instances went"),
            }
        }
    }
}

/// Drops `runner`'s live entities among `live` whose stream has its home on another worker.
async fn drop_entities_served_elsewhere(shared: &Shared, runner: &Runner, live: &[String]) {
    let me: &str = &shared.settings.id;
    match shared.store.affinities(live).await {
        Ok(placed) => {
            let gone: Vec<String> = placed
                .into_iter()
                .filter(|p| p.worker != me)
                .map(|p| p.instance)
                .collect();
            if gone.is_empty() {
                return;
            }
            let freed = runner.drop_entities(&gone);
            shared.metrics.entities_moved_away(freed);
            tracing::debug!(
                entities = freed.count,
                bytes = freed.bytes,
                "dropped the live entities another worker serves now"
            );
        }
        Err(e) => tracing::debug!(error = %e, "could not check where live entities went"),
    }
}
