//! The cron scheduler: every worker fires the store's due schedules.
//!
//! Each round reads the due schedules, plans each one's fire with the SDK's
//! [`Schedule::fire`](quark_workflow::Schedule::fire) (which ticks get a job under the schedule's
//! missed-tick policy, and the next tick) and hands it to
//! [`ScheduleStore::fire_schedule`](quark_history::ScheduleStore::fire_schedule), a compare-and-set on the
//! schedule's `next_at`. Every worker runs this loop, so a schedule keeps firing while any worker
//! lives; when several find the same tick due, one fire moves `next_at` and enqueues the jobs, and
//! the others find it moved and write nothing.
//!
//! Between rounds the loop sleeps until the earliest `next_at`, by the store's clock, but never
//! longer than the worker's polling interval: schedules added or changed by another process, and a
//! clock that jumps (a test's manual clock, a corrected system clock), are noticed within it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quark_history::{ScheduleRecord, Timestamp};
use quark_workflow::Schedule;

use crate::shared::Shared;

/// How many due schedules one round reads.
const BATCH: u32 = 100;

/// Fires due schedules until the worker stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let store = &shared.store;
    let max_wait = shared.settings.poll_interval;
    // Schedules whose stored expression this build cannot read, reported once per tick.
    let mut reported = BTreeSet::new();
    while !shared.is_stopping() {
        let now = store.config().clock.now();
        let mut stuck = false;
        match store.due_schedules(now, BATCH).await {
            Ok(due) => {
                let full = due.len() == BATCH as usize;
                for record in &due {
                    stuck |= !fire(&shared, record, now, &mut reported).await;
                }
                if full && !stuck {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the due schedules failed; trying again later");
                stuck = true;
            }
        }
        let wait = match store.next_schedule_at().await {
            Ok(Some(next)) => {
                let now = store.config().clock.now();
                match next.since(now) {
                    // Due again already: a tick came while this round fired, or (stuck) a
                    // schedule could not be fired and waits for the next try.
                    Duration::ZERO if stuck => max_wait,
                    Duration::ZERO => continue,
                    until => until.min(max_wait),
                }
            }
            Ok(None) => max_wait,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next schedule failed; trying again later");
                max_wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stopped() => return,
        }
    }
}

/// Tries to fire one due schedule; `false` if it could not (it stays due for the next round).
async fn fire(
    shared: &Shared,
    record: &ScheduleRecord,
    now: Timestamp,
    reported: &mut BTreeSet<(String, Timestamp)>,
) -> bool {
    let name = &record.spec.name;
    let schedule = match Schedule::from_spec(&record.spec) {
        Ok(schedule) => schedule,
        Err(e) => {
            // Written by another program or a newer Quark: leave it for a worker that reads it.
            if reported.insert((name.clone(), record.next_at)) {
                tracing::error!(schedule = %name, error = %e, "cannot read a stored schedule; not firing it");
            }
            return false;
        }
    };
    let fire = schedule.fire(name, record.next_at, now);
    if fire.ticks.first() != Some(&record.next_at) {
        tracing::warn!(
            schedule = %name,
            missed_since = %record.next_at,
            policy = %record.spec.missed,
            enqueued = fire.ticks.len(),
            "schedule missed ticks while no worker could fire them"
        );
    }
    let ticks = fire.ticks.clone();
    let next_at = fire.next_at;
    match shared.store.fire_schedule(fire).await {
        Ok(Some(task_ids)) => {
            tracing::info!(schedule = %name, ?ticks, ?task_ids, %next_at, "schedule fired");
            true
        }
        Ok(None) => {
            tracing::debug!(schedule = %name, "another worker fired this tick first");
            true
        }
        Err(e) => {
            tracing::warn!(schedule = %name, error = %e, "firing a schedule failed; trying again later");
            false
        }
    }
}
