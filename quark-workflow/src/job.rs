//! Durable jobs: an activity run on its own, enqueued by a client rather than called by an
//! orchestration.
//!
//! Any `#[activity]` is also a job handler, so one function can be a step of a workflow and a
//! background job, with the same retry policy and timeouts. A job is a task of kind
//! [`TaskKind::Job`] on the shared queue; the worker that claims it runs the activity and settles
//! it with [`job_commit`]: success completes it, a retryable failure with attempts left releases it
//! after the policy's backoff, anything else moves it to the dead-letter list (`quark dlq`), where
//! it can be re-driven.
//!
//! ```no_run
//! # use quark_workflow::{ActivityContext, ActivityError, Client, JobOptions, activity};
//! #[activity(retry(max_attempts = 5, initial = "1s", max = "5m"), start_to_close = "30s")]
//! async fn resize_image(_ctx: ActivityContext, url: String) -> Result<u64, ActivityError> {
//!     Ok(url.len() as u64)
//! }
//!
//! # async fn demo(client: &Client) -> Result<(), quark_workflow::ClientError> {
//! let id = client.enqueue::<resize_image>(&"s3://a.png".to_string(), JobOptions::default()).await?;
//! let ids = client
//!     .enqueue_many::<resize_image>(["s3://b.png".to_string(), "s3://c.png".to_string()], JobOptions::default().priority(5))
//!     .await?;
//! # let _ = (id, ids); Ok(()) }
//! ```

use std::time::Duration;

use quark_history::{ClaimedTask, Commit, FailAction, NewTask, Payload, TaskKind, Timestamp};
use serde::{Deserialize, Serialize};

use crate::definition::{Activity, ActivityOptions};
use crate::error::ActivityError;
use crate::task::TaskPayload;

/// Run activity `activity` with `input` as a job. Stored as JSON in the task's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTask {
    /// The registered activity name.
    pub activity: String,
    /// The input.
    pub input: Payload,
    /// Retries and timeouts: the activity's own, with the enqueue options' overrides.
    pub options: ActivityOptions,
}

/// How to enqueue a job. The defaults: the activity's queue (or `default`), priority 0, now, the
/// activity's retry policy and timeouts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct JobOptions {
    /// The queue (`None`: the activity's queue, or `default`).
    pub queue: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this time.
    pub run_at: Option<Timestamp>,
    /// Not before this long from now (added to `run_at`, or to now).
    pub delay: Option<Duration>,
    /// Overrides the activity's retry policy.
    pub retry: Option<crate::RetryPolicy>,
    /// Overrides the activity's per-attempt timeout.
    pub timeout: Option<Duration>,
}

impl JobOptions {
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs it at `at` at the earliest.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs it `d` from now at the earliest.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Overrides the retry policy.
    pub fn retry(mut self, retry: crate::RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Overrides the per-attempt timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// The task that runs activity `A` with `input` as a job, for code that enqueues it itself (in its
/// own transaction, with `PostgresStore::enqueue_in`, say). `now` is the store's clock.
pub fn job_task<A: Activity>(
    input: &A::Input,
    options: &JobOptions,
    now: Timestamp,
) -> Result<NewTask, crate::ClientError> {
    let input = Payload::json(input).map_err(|e| crate::ClientError::Payload(e.to_string()))?;
    let mut activity = A::options();
    if let Some(retry) = options.retry {
        activity.retry = retry;
    }
    if let Some(timeout) = options.timeout {
        activity.start_to_close = Some(timeout);
    }
    let queue = options
        .queue
        .clone()
        .or_else(|| activity.queue.clone())
        .unwrap_or_else(|| "default".to_string());
    let mut task = NewTask::new(TaskKind::Job, queue)
        .priority(options.priority)
        .payload(
            TaskPayload::Job(JobTask {
                activity: A::NAME.to_string(),
                input,
                options: activity,
            })
            .to_bytes(),
        );
    let at = options.run_at.unwrap_or(now) + options.delay.unwrap_or_default();
    if at > now {
        task = task.visible_at(at);
    }
    Ok(task)
}

/// The commit that settles a job attempt held under `claimed`: success completes the job; a
/// retryable failure with attempts left releases it after the policy's backoff (`now` is the
/// caller's clock); a terminal failure or the last attempt dead-letters it with the error.
pub fn job_commit(
    claimed: &ClaimedTask,
    job: &JobTask,
    result: Result<Payload, ActivityError>,
    now: Timestamp,
) -> Commit {
    let lease = claimed.lease.clone();
    match result {
        Ok(_) => Commit::new().complete(lease),
        Err(error) => match job.options.retry.delay_after(claimed.lease.attempt) {
            Some(delay) if error.is_retryable() => Commit::new().fail(
                lease,
                FailAction::Retry {
                    at: now + delay,
                    error: Some(error.to_string()),
                },
            ),
            _ => {
                let why = format!(
                    "job `{}` failed after {} attempt(s): {error}",
                    job.activity, claimed.lease.attempt
                );
                Commit::new().fail(lease, FailAction::Dead { error: why })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::{Lease, Settle};

    fn claimed(attempt: u32) -> ClaimedTask {
        ClaimedTask {
            lease: Lease {
                task_id: 1,
                attempt,
                worker: "w".into(),
            },
            kind: TaskKind::Job,
            queue: "default".into(),
            instance_id: None,
            priority: 0,
            created_at: Timestamp::EPOCH,
            lease_expires_at: Timestamp::EPOCH,
            payload: Vec::new(),
        }
    }

    fn job(max_attempts: u32) -> JobTask {
        JobTask {
            activity: "resize".into(),
            input: Payload::unit(),
            options: ActivityOptions::default().retry(crate::RetryPolicy::new(
                max_attempts,
                Duration::from_secs(1),
                Duration::from_secs(60),
            )),
        }
    }

    #[test]
    fn a_job_retries_with_backoff_then_dies_with_its_error() {
        let now = Timestamp::from_millis(10_000);
        let err = || Err(ActivityError::message("timeout"));
        match job_commit(&claimed(2), &job(3), err(), now).settle {
            Some(Settle::Fail(_, FailAction::Retry { at, .. })) => {
                assert_eq!(at, now + Duration::from_secs(2))
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        match job_commit(&claimed(3), &job(3), err(), now).settle {
            Some(Settle::Fail(_, FailAction::Dead { error })) => {
                assert!(
                    error.contains("after 3 attempt(s)") && error.contains("timeout"),
                    "{error}"
                )
            }
            other => panic!("expected the dead-letter list, got {other:?}"),
        }
        let terminal = Err(ActivityError::message("bad input").terminal());
        assert!(matches!(
            job_commit(&claimed(1), &job(3), terminal, now).settle,
            Some(Settle::Fail(_, FailAction::Dead { .. }))
        ));
        assert!(matches!(
            job_commit(&claimed(1), &job(3), Ok(Payload::unit()), now).settle,
            Some(Settle::Complete(_))
        ));
    }
}
