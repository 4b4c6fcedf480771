//! Durable jobs on the shared queue: what the store keeps about them besides the task row.
//!
//! A job is a task of kind [`TaskKind::Job`](crate::TaskKind::Job). While it is pending, scheduled,
//! running or waiting for a retry, it is a row of the narrow hot `tasks` table. Holding it back
//! (paused, or waiting for a concurrency slot) parks it without moving it. When it finishes it
//! leaves the hot table: a completed or cancelled job is kept in `finished_jobs` for the store's
//! [`finished_job_retention`](crate::StoreConfig::finished_job_retention) and purged in batches
//! ([`JobStore::purge_finished`](crate::JobStore::purge_finished)); a dead one is in the dead-letter list.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// What happens when a job is enqueued with a unique key that another job holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UniquePolicy {
    /// The enqueue fails with [`Error::Duplicate`](crate::Error::Duplicate), naming the holder.
    Reject,
    /// The holder is kept and its id returned; the new job is dropped.
    Keep,
    /// If the holder has not started yet (pending, scheduled, paused or waiting for a slot), its
    /// payload, priority and run time become the new job's, and its id is returned. A holder that
    /// started or finished is kept, as with [`Keep`](UniquePolicy::Keep).
    Replace,
}

/// A unique key on a job: while the key is taken, another job with the same key is not enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UniqueKey {
    /// The key (any text; namespace it yourself, e.g. `"resize:photo-17"`).
    pub key: String,
    /// What a duplicate does.
    pub policy: UniquePolicy,
    /// How long the key stays taken from the first job's enqueue, whether or not that job has
    /// finished. `None`: for as long as the first job has not finished.
    pub window: Option<Duration>,
}

impl UniqueKey {
    /// A key taken while its job is unfinished, rejecting duplicates.
    pub fn new(key: impl Into<String>) -> Self {
        UniqueKey {
            key: key.into(),
            policy: UniquePolicy::Reject,
            window: None,
        }
    }

    /// Sets the policy.
    pub fn policy(mut self, policy: UniquePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the key taken for `window` from the enqueue, finished or not.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }
}

/// What an enqueue did with each task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enqueued {
    /// A new task was inserted.
    New,
    /// A job with the same unique key was kept; its id is returned.
    Existing,
    /// A not-yet-started job with the same unique key was replaced in place; its id is returned.
    Replaced,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobState {
    /// Claimable now.
    Pending,
    /// Waiting for its run time (first attempt).
    Scheduled,
    /// Waiting for its next attempt after a failure.
    Retrying,
    /// Held by an operator.
    Paused,
    /// Waiting for a slot of its concurrency key.
    Waiting,
    /// Held by a worker now.
    Running,
    /// Running, and asked to stop.
    Cancelling,
    /// Finished successfully.
    Completed,
    /// Cancelled before it finished.
    Cancelled,
    /// Failed for good; in the dead-letter list, where it can be re-driven.
    Dead,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 10] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Retrying,
        JobState::Paused,
        JobState::Waiting,
        JobState::Running,
        JobState::Cancelling,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Retrying => "retrying",
            JobState::Paused => "paused",
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// Whether the job is over (completed, cancelled or dead).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Dead
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// What a job reported about its progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// Done so far, 0 to 100.
    pub percent: Option<f32>,
    /// A short human-readable note.
    pub message: Option<String>,
    /// Where a retried attempt resumes from (small, e.g. JSON): kept until the job finishes.
    /// `None` in a report keeps the previous checkpoint.
    pub checkpoint: Option<Vec<u8>>,
    /// When it was reported.
    pub updated_at: Timestamp,
}

/// A job as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// The job (its task id).
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Where it is in its life.
    pub state: JobState,
    /// Its priority.
    pub priority: i32,
    /// How many attempts have started.
    pub attempts: u32,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When it runs next (pending, scheduled, retrying, or held with its own time), or when its
    /// lease expires (running).
    pub run_at: Option<Timestamp>,
    /// When it finished, if it has.
    pub finished_at: Option<Timestamp>,
    /// The last error (a failed attempt, or why it died or was cancelled).
    pub error: Option<String>,
    /// Its concurrency key, if any.
    pub concurrency_key: Option<String>,
    /// Its last progress report, if any.
    pub progress: Option<Progress>,
    /// The task payload (the job's activity and input).
    pub payload: Vec<u8>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only queues whose name starts with this (a namespace's: `acme::`).
    pub queue_prefix: Option<String>,
    /// Only these states (empty: all).
    pub states: Vec<JobState>,
    /// Only ids below this one (paging backwards from the newest).
    pub before_id: Option<i64>,
    /// At most this many (0: 100).
    pub limit: u32,
}

/// A per-queue rate limit shared by every worker: at most `limit` claims per `interval`, refilled
/// continuously (a token bucket of `limit` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// How many.
    pub limit: u32,
    /// Per how long.
    pub interval: Duration,
}

/// A queue's controls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSettings {
    /// No task is claimed from it while paused.
    pub paused: bool,
    /// Its rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

/// What [`JobStore::purge_finished`](crate::JobStore::purge_finished) removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Finished jobs past their retention.
    pub jobs: u64,
    /// Expired unique keys.
    pub keys: u64,
    /// Progress rows of jobs that are gone.
    pub progress: u64,
    /// Cancelled running jobs whose worker died before it settled them, now recorded as
    /// cancelled.
    pub cancelled: u64,
}

/// A snapshot of which queues have a rate limit, refreshed at most every second, so that a claim
/// on unlimited queues costs no extra round trip. A limit set elsewhere takes effect within a
/// second; the claim statement itself never takes from a limited queue outside its bucket.
#[derive(Debug, Default)]
pub(crate) struct LimitedQueues(std::sync::Mutex<Option<(Timestamp, Vec<String>)>>);

impl LimitedQueues {
    const FRESH: Duration = Duration::from_secs(1);

    pub(crate) fn get(&self, now: Timestamp) -> Option<Vec<String>> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Some((at, queues)) if *at <= now && now < *at + Self::FRESH => Some(queues.clone()),
            _ => None,
        }
    }

    pub(crate) fn set(&self, now: Timestamp, queues: Vec<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, queues));
    }

    pub(crate) fn invalidate(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The far-future `visible_at` of a held task.
pub(crate) const HELD: i64 = i64::MAX;

/// The state of a job row in the hot table.
pub(crate) fn live_state(
    held: Option<&str>,
    leased: bool,
    visible_at: i64,
    attempts: u32,
    cancel_requested: bool,
    now: Timestamp,
) -> JobState {
    match held {
        Some("paused") => JobState::Paused,
        Some(_) => JobState::Waiting,
        None if leased && visible_at > now.as_micros() => {
            if cancel_requested {
                JobState::Cancelling
            } else {
                JobState::Running
            }
        }
        None if visible_at <= now.as_micros() => JobState::Pending,
        None if attempts > 0 => JobState::Retrying,
        None => JobState::Scheduled,
    }
}

/// Whether a token bucket of `limit` tokens refilled over `interval` grants `want` claims after
/// holding `tokens` at `refilled_at`: returns the grant and the bucket after it.
pub(crate) fn take_tokens(
    limit: RateLimit,
    tokens: f64,
    refilled_at: Timestamp,
    now: Timestamp,
    want: u32,
) -> (u32, f64) {
    let elapsed = now
        .as_micros()
        .saturating_sub(refilled_at.as_micros())
        .max(0) as f64;
    let per_micro = f64::from(limit.limit) / (limit.interval.as_micros().max(1) as f64);
    let available = (tokens + elapsed * per_micro).min(f64::from(limit.limit));
    let grant = (available.floor().max(0.0) as u32).min(want);
    (grant, available - f64::from(grant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_bucket_grants_its_limit_per_interval_and_refills_smoothly() {
        let limit = RateLimit {
            limit: 10,
            interval: Duration::from_secs(1),
        };
        let t0 = Timestamp::from_millis(1_000_000);
        // A new bucket (refilled long ago) is full: 10 of the 25 asked for.
        let (grant, left) = take_tokens(limit, 0.0, Timestamp::EPOCH, t0, 25);
        assert_eq!((grant, left), (10, 0.0));
        // Nothing more at once; a tenth of the interval later, one more.
        assert_eq!(take_tokens(limit, left, t0, t0, 5).0, 0);
        let (grant, left) = take_tokens(limit, left, t0, t0 + Duration::from_millis(100), 5);
        assert_eq!(grant, 1);
        assert!(left.abs() < 1e-9, "{left}");
        // Never more than the bucket holds, however long it was idle.
        assert_eq!(
            take_tokens(limit, 0.0, t0, t0 + Duration::from_secs(3600), 100).0,
            10
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("finished".parse::<JobState>().is_err());
    }

    #[test]
    fn a_live_row_has_the_state_its_columns_say() {
        let now = Timestamp::from_micros(1_000);
        assert_eq!(
            live_state(None, false, 1_000, 0, false, now),
            JobState::Pending
        );
        assert_eq!(
            live_state(None, false, 2_000, 0, false, now),
            JobState::Scheduled
        );
        assert_eq!(
            live_state(None, false, 2_000, 1, false, now),
            JobState::Retrying
        );
        assert_eq!(
            live_state(None, true, 2_000, 1, false, now),
            JobState::Running
        );
        assert_eq!(
            live_state(None, true, 2_000, 1, true, now),
            JobState::Cancelling
        );
        // A lease that expired is claimable again.
        assert_eq!(
            live_state(None, true, 500, 1, false, now),
            JobState::Pending
        );
        assert_eq!(
            live_state(Some("paused"), false, HELD, 0, false, now),
            JobState::Paused
        );
        assert_eq!(
            live_state(Some("concurrency"), false, HELD, 0, false, now),
            JobState::Waiting
        );
    }
}
