//! Recovery of two-phase transactions: every worker with participants finishes, at a steady
//! pace, the branches that coordinators which crashed or lost their lease left prepared, by the
//! decision log (see `quark_history::two_phase`). Passes on several workers at once are safe:
//! finishing a branch twice finds it gone, and decisions are made once.

use std::sync::Arc;
use std::time::Duration;

use quark_history::two_phase::Coordinator;

use crate::shared::Shared;

/// How often a worker looks for prepared branches to finish.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(5);

/// How long a prepared branch with no decision is left to its coordinator before recovery gives
/// it up. A coordinator decides within its attempt, under its lease; a retried attempt gives up
/// its earlier attempts' branches at once, so this only bounds what a worker that died and was
/// never retried leaves behind.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(60);

/// Runs recovery passes until the worker stops.
pub(crate) async fn run(shared: Arc<Shared>, coordinator: Coordinator) {
    let mut tick = tokio::time::interval(RECOVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => return,
        }
        match coordinator.recover(RECOVERY_GRACE).await {
            Ok(pass) => {
                if pass.committed + pass.rolled_back > 0 {
                    tracing::info!(
                        committed = pass.committed,
                        rolled_back = pass.rolled_back,
                        given_up = pass.given_up,
                        "finished prepared branches of two-phase transactions"
                    );
                }
                metrics::counter!("quark_2pc_recovered_total", "outcome" => "commit")
                    .increment(pass.committed as u64);
                metrics::counter!("quark_2pc_recovered_total", "outcome" => "rollback")
                    .increment(pass.rolled_back as u64);
                for (participant, error) in pass.unreachable {
                    tracing::warn!(
                        participant,
                        error,
                        "two-phase recovery could not reach a participant"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "two-phase recovery pass failed"),
        }
    }
}
