//! What users define: orchestrations, activities and their options.
//!
//! `#[orchestration]` and `#[activity]` implement these traits for a generated unit type named
//! like the function; implementing them by hand is equally supported.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::activity::ActivityContext;
use crate::context::OrchestrationContext;
use crate::error::{ActivityError, OrchestrationError};

/// A durable function: deterministic code that calls activities, timers and children through its
/// [`OrchestrationContext`] and is replayed from its history after every interruption.
pub trait Orchestration: Send + Sync + 'static {
    /// The registered type name; stored in every instance row. Never change it for running code.
    const NAME: &'static str;
    /// The code version, recorded at start (bump it with incompatible changes).
    const VERSION: u32 = 1;
    /// The input.
    type Input: Serialize + DeserializeOwned + 'static;
    /// The output.
    type Output: Serialize + DeserializeOwned + 'static;

    /// The queue its orchestration tasks go to unless the start request names one.
    fn queue() -> &'static str {
        "default"
    }

    /// The body. Runs on a deterministic single-threaded executor, so the future need not be `Send`.
    fn run(
        ctx: OrchestrationContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, OrchestrationError>> + 'static;
}

/// A step with side effects, run at least once by any worker serving its queue.
pub trait Activity: Send + Sync + 'static {
    /// The registered name; recorded in `ActivityScheduled` events.
    const NAME: &'static str;
    /// The input.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The output.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Queue, retries and timeouts.
    fn options() -> ActivityOptions {
        ActivityOptions::default()
    }

    /// The body.
    fn run(
        ctx: ActivityContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, ActivityError>> + Send + 'static;
}

/// Where and how an activity runs. Serialized into its task (see [`ActivityTask`](crate::runner::ActivityTask)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActivityOptions {
    /// The queue its tasks go to (`None`: the orchestration's queue).
    pub queue: Option<String>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Limit on one attempt, from its start.
    #[serde(with = "crate::task::opt_millis", rename = "start_to_close_ms")]
    pub start_to_close: Option<Duration>,
    /// Limit on all attempts, from scheduling.
    #[serde(with = "crate::task::opt_millis", rename = "schedule_to_close_ms")]
    pub schedule_to_close: Option<Duration>,
    /// An attempt that does not heartbeat within this is considered lost.
    #[serde(with = "crate::task::opt_millis", rename = "heartbeat_ms")]
    pub heartbeat: Option<Duration>,
    /// Run in the same database transaction as its completion event (exactly-once effects).
    pub transactional: bool,
}

impl ActivityOptions {
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn start_to_close(mut self, d: Duration) -> Self {
        self.start_to_close = Some(d);
        self
    }

    /// Sets the overall timeout.
    pub fn schedule_to_close(mut self, d: Duration) -> Self {
        self.schedule_to_close = Some(d);
        self
    }

    /// Sets the heartbeat timeout.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = Some(d);
        self
    }

    /// Marks the activity transactional.
    pub fn transactional(mut self, yes: bool) -> Self {
        self.transactional = yes;
        self
    }
}

/// Exponential backoff: `initial`, doubled per attempt, capped at `max`, for `max_attempts` tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retries).
    pub max_attempts: u32,
    /// The delay before the second attempt.
    #[serde(with = "crate::task::millis", rename = "initial_ms")]
    pub initial: Duration,
    /// The longest delay.
    #[serde(with = "crate::task::millis", rename = "max_ms")]
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, from 1 s up to 60 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy.
    pub fn new(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            initial,
            max,
        }
    }

    /// Sets the number of attempts (1: no retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the first delay.
    pub fn initial(mut self, d: Duration) -> Self {
        self.initial = d;
        self
    }

    /// Sets the longest delay.
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }

    /// The delay after failed attempt `attempt` (1-based), or `None` when no attempts are left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        Some(crate::backoff::exponential(attempt, self.initial, self.max))
    }

    /// [`delay_after`](Self::delay_after) with jitter: shortened by up to a fifth, by an amount
    /// drawn from `salt` (the task, the attempt, the time), so that many tasks that failed together
    /// do not all come back at the same instant. Never longer than the policy's delay.
    pub fn jittered_delay_after(&self, attempt: u32, salt: u64) -> Option<Duration> {
        self.delay_after(attempt)?;
        Some(crate::backoff::delay(attempt, self.initial, self.max, salt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_the_last_attempt() {
        let p = RetryPolicy::new(4, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(p.delay_after(1), Some(Duration::from_secs(1)));
        assert_eq!(p.delay_after(2), Some(Duration::from_secs(2)));
        assert_eq!(p.delay_after(3), Some(Duration::from_secs(3)));
        assert_eq!(p.delay_after(4), None);
    }

    #[test]
    fn jitter_spreads_retries_within_a_fifth_below_the_delay() {
        let p = RetryPolicy::new(4, Duration::from_secs(10), Duration::from_secs(60));
        let delays: std::collections::BTreeSet<Duration> = (0..100u64)
            .map(|task| p.jittered_delay_after(1, task).unwrap())
            .collect();
        assert!(
            delays.len() > 50,
            "spread: {} distinct delays",
            delays.len()
        );
        assert!(
            delays
                .iter()
                .all(|d| *d <= Duration::from_secs(10) && *d >= Duration::from_secs(8)),
            "{delays:?}"
        );
        assert_eq!(p.jittered_delay_after(4, 7), None);
        assert_eq!(
            p.jittered_delay_after(2, 7),
            p.jittered_delay_after(2, 7),
            "the same salt, the same delay"
        );
    }
}
