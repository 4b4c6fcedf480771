//! Counters a worker keeps, for operators, tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of one worker.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) claimed: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) outbox_sent: AtomicU64,
    pub(crate) outbox_retried: AtomicU64,
    pub(crate) outbox_dead: AtomicU64,
}

/// A snapshot of [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Tasks claimed.
    pub claimed: u64,
    /// Tasks whose commit completed them.
    pub completed: u64,
    /// Tasks whose commit moved them to the dead-letter list, or whose handler rejected them.
    pub failed: u64,
    /// Tasks released to run again later (by their handler's retry policy or after an error).
    pub retried: u64,
    /// Commits refused because the lease had been lost.
    pub lease_lost: u64,
    /// Turns redone because the history moved on while they ran.
    pub conflicts: u64,
    /// Outbox messages this worker delivered and marked sent.
    pub outbox_sent: u64,
    /// Outbox deliveries that failed and were scheduled to be tried again.
    pub outbox_retried: u64,
    /// Outbox messages this worker gave up on (dead).
    pub outbox_dead: u64,
}

impl Metrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counter a commit that settles its task this way adds to, if any.
    pub(crate) fn settled(&self, settle: Option<&quark_history::Settle>) -> Option<&AtomicU64> {
        use quark_history::{FailAction, Settle};
        match settle {
            Some(Settle::Complete(_)) => Some(&self.completed),
            Some(Settle::Fail(_, FailAction::Dead { .. })) => Some(&self.failed),
            Some(Settle::Fail(..)) => Some(&self.retried),
            _ => None,
        }
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            claimed: self.claimed.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            lease_lost: self.lease_lost.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            outbox_sent: self.outbox_sent.load(Ordering::Relaxed),
            outbox_retried: self.outbox_retried.load(Ordering::Relaxed),
            outbox_dead: self.outbox_dead.load(Ordering::Relaxed),
        }
    }
}
