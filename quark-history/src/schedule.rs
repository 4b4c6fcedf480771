//! Cron schedules: rows that enqueue a durable job at every tick of a cron expression.
//!
//! The store keeps each schedule's expression and time zone as text, the job it enqueues as a task
//! template (queue, priority, payload), its missed-tick policy, and `next_at`, the next tick to
//! fire. It knows nothing of cron: the caller computes ticks (the SDK does, with `croner`) and
//! hands them to [`ScheduleStore::fire_schedule`](crate::ScheduleStore::fire_schedule), which moves `next_at` from
//! the value the caller read to the next one and enqueues the ticks' jobs in one transaction, only
//! if `next_at` still held the value read. Any number of workers can race to fire a schedule; one
//! wins each tick, the others change nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::queue::{NewTask, TaskKind};

/// What happens to the ticks that passed while no worker could fire them (downtime, or a
/// schedule whose workers were all busy for longer than the grace period).
///
/// A tick is *on time* when it is the most recent tick that is due and it is at most the grace
/// period old (a minute, see `quark_workflow::LATE_TICK_GRACE`): it fires under either policy.
/// Every other due tick is *missed*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Missed {
    /// Drop missed ticks; the schedule goes on with the next tick to come.
    #[default]
    Skip,
    /// Enqueue the job of each of the (at most) `n` most recent missed ticks, oldest first, each
    /// as its own job visible at its tick, then go on with the next tick to come.
    Backfill(u32),
}

impl Missed {
    /// How many missed ticks get a job: 0 for [`Missed::Skip`], `n` for [`Missed::Backfill`].
    pub fn backfill(self) -> u32 {
        match self {
            Missed::Skip => 0,
            Missed::Backfill(n) => n,
        }
    }
}

impl fmt::Display for Missed {
    /// `skip` or `backfill:N`, as stored and as the CLI takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missed::Skip => f.write_str("skip"),
            Missed::Backfill(n) => write!(f, "backfill:{n}"),
        }
    }
}

impl FromStr for Missed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("unknown missed-tick policy `{s}`: expected `skip` or `backfill:N`");
        match s.trim() {
            "skip" => Ok(Missed::Skip),
            other => {
                let n = other.strip_prefix("backfill:").ok_or_else(bad)?;
                n.parse().map(Missed::Backfill).map_err(|_| bad())
            }
        }
    }
}

/// A schedule as registered: when it fires and what it enqueues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Its unique name.
    pub name: String,
    /// The cron expression (five fields, or six with seconds first; see the SDK's `Schedule`).
    pub cron: String,
    /// The IANA time zone the expression is read in (`UTC`, `Europe/Berlin`, ...).
    pub timezone: String,
    /// What happens to missed ticks.
    pub missed: Missed,
    /// The queue of its jobs.
    pub queue: String,
    /// The priority of its jobs.
    pub priority: i32,
    /// The payload of every job it enqueues (a `TaskPayload::Job`, as JSON, from the SDK).
    pub payload: Vec<u8>,
}

impl ScheduleSpec {
    /// Whether `other` fires at the same times (then a re-registration keeps `next_at`).
    pub fn same_timing(&self, other: &ScheduleSpec) -> bool {
        self.cron == other.cron && self.timezone == other.timezone
    }

    /// The job task of one tick: visible at the tick.
    pub fn job_at(&self, tick: Timestamp) -> NewTask {
        NewTask::new(TaskKind::Job, self.queue.clone())
            .priority(self.priority)
            .payload(self.payload.clone())
            .visible_at(tick)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "a schedule needs a name without control characters, got {:?}",
                self.name
            )));
        }
        if self.queue.is_empty() {
            return Err(Error::Invalid(format!(
                "schedule `{}` needs a queue name",
                self.name
            )));
        }
        if self.cron.trim().is_empty() || self.timezone.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "schedule `{}` needs a cron expression and a time zone",
                self.name
            )));
        }
        Ok(())
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// What was registered.
    pub spec: ScheduleSpec,
    /// The next tick to fire. [`Timestamp::MAX`] for an expression with no tick left.
    pub next_at: Timestamp,
    /// The most recent tick whose job was enqueued, if any.
    pub last_fired_at: Option<Timestamp>,
    /// When it was first registered.
    pub created_at: Timestamp,
    /// When its spec last changed.
    pub updated_at: Timestamp,
}

/// What [`ScheduleStore::upsert_schedule`](crate::ScheduleStore::upsert_schedule) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upserted {
    /// No schedule had the name; it was created with the given `next_at`.
    Created,
    /// The schedule existed with another spec; it was changed. `next_at` was reset to the given
    /// one only if the expression or the time zone changed.
    Updated,
    /// The schedule existed with this very spec; nothing was written.
    Unchanged,
}

/// A compare-and-set fire: see [`ScheduleStore::fire_schedule`](crate::ScheduleStore::fire_schedule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The schedule.
    pub name: String,
    /// The `next_at` the caller read: the fire happens only if it still holds.
    pub expected_next_at: Timestamp,
    /// The new `next_at`: the first tick after now.
    pub next_at: Timestamp,
    /// The ticks to enqueue a job for, oldest first (empty: only move on, dropping the missed).
    pub ticks: Vec<Timestamp>,
}

impl Fire {
    pub(crate) fn check(&self) -> Result<()> {
        if self.next_at <= self.expected_next_at {
            return Err(Error::Invalid(format!(
                "firing schedule `{}` must move next_at forward ({} to {})",
                self.name, self.expected_next_at, self.next_at
            )));
        }
        if self.ticks.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Invalid(format!(
                "the ticks of schedule `{}` must be in increasing order",
                self.name
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_tick_policies_round_trip_through_text() {
        for policy in [Missed::Skip, Missed::Backfill(0), Missed::Backfill(12)] {
            assert_eq!(policy.to_string().parse::<Missed>(), Ok(policy));
        }
        assert_eq!("backfill:3".parse::<Missed>(), Ok(Missed::Backfill(3)));
        for bad in ["", "backfill", "backfill:", "backfill:-1", "all", "Skip"] {
            let err = bad.parse::<Missed>().unwrap_err();
            assert!(err.contains("expected `skip` or `backfill:N`"), "{err}");
        }
    }
}
