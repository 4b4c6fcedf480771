//! What a runner keeps live, and what it reports of it.

use crate::executor::Executor;

/// When a run's history is long enough to warn about: past either bound, the worker logs a
/// warning and counts it, once per run. Temporal warns at 10,240 events and 10 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWarning {
    /// Events.
    pub events: u64,
    /// Approximate encoded bytes.
    pub bytes: u64,
}

impl Default for HistoryWarning {
    fn default() -> Self {
        HistoryWarning {
            events: 10_240,
            bytes: 10 * 1024 * 1024,
        }
    }
}

/// How much a runner keeps live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmLimits {
    /// At most this many live instances.
    pub instances: usize,
    /// At most this many bytes of live instances (by their footprint estimates).
    pub bytes: usize,
}

impl Default for WarmLimits {
    fn default() -> Self {
        WarmLimits {
            instances: 10_000,
            bytes: 256 * 1024 * 1024,
        }
    }
}

/// A live instance's figures, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveInstance {
    /// The instance.
    pub instance_id: String,
    /// The estimated memory its run holds, in bytes.
    pub footprint: usize,
    /// The events of its history the run has seen.
    pub events: u64,
}

/// Logs that `instance`'s run passed the history warning bounds.
pub(super) fn warn_long(instance: &str, executor: &Executor) {
    let (events, bytes) = executor.history_size();
    tracing::warn!(
        instance = %instance,
        events,
        bytes,
        "long history: end the run with `ctx.continue_as_new` and carry its state over"
    );
}
