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

use quark_history::{
    ClaimedTask, Commit, Enqueued, FailAction, JobFilter, JobInfo, JobState, NewTask, Payload,
    Progress, RateLimit, TaskKind, Timestamp, UniqueKey,
};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
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
    /// A unique key: see [`UniqueKey`].
    pub unique: Option<UniqueKey>,
    /// A concurrency key and its limit: at most that many jobs of the key run at a time.
    pub concurrency: Option<(String, u32)>,
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

    /// Deduplicates by a unique key (see [`UniqueKey`] for the policies and the window).
    pub fn unique(mut self, key: UniqueKey) -> Self {
        self.unique = Some(key);
        self
    }

    /// At most `limit` jobs with concurrency key `key` run at a time, across every worker; the
    /// others wait their turn, highest priority and oldest first.
    pub fn concurrency(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.concurrency = Some((key.into(), limit));
        self
    }
}

/// A job's id: what enqueueing returns, and what the calls about one job take. It is the id of
/// the job's task in the store (the one `quark job show`, `quark dlq` and
/// [`Store::redrive`](quark_history::Store::redrive) use), so it prints and parses as that number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    /// The job with task id `id` (as the store, the command line or another process names it).
    pub const fn new(id: i64) -> Self {
        JobId(id)
    }

    /// The task id, for the store's calls.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(JobId)
    }
}

impl From<JobId> for i64 {
    fn from(id: JobId) -> i64 {
        id.0
    }
}

/// A job just enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueuedJob {
    /// Its id (for a deduplicated job, the id of the job that holds the key).
    pub id: JobId,
    /// Whether it is new, or another job with its unique key was kept or replaced.
    pub outcome: Enqueued,
}

/// The task that runs activity `A` with `input` as a job, for code that enqueues it itself (in its
/// own transaction, with `Store::enqueue_tx`, say). `now` is the store's clock.
pub fn job_task<A: Activity>(
    input: &A::Input,
    options: &JobOptions,
    now: Timestamp,
) -> Result<NewTask, crate::ClientError> {
    let input = Payload::json(input).map_err(|e| crate::ClientError::Payload(e.to_string()))?;
    Ok(job_task_by_name(A::NAME, A::options(), input, options, now))
}

/// [`job_task`] for an activity known by name only (the command line): `activity` is the
/// activity's own options, which `options` override.
pub fn job_task_by_name(
    name: &str,
    mut activity: ActivityOptions,
    input: Payload,
    options: &JobOptions,
    now: Timestamp,
) -> NewTask {
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
                activity: name.to_string(),
                input,
                options: activity,
            })
            .to_bytes(),
        );
    let at = options.run_at.unwrap_or(now) + options.delay.unwrap_or_default();
    if at > now {
        task = task.visible_at(at);
    }
    task.unique = options.unique.clone();
    task.concurrency = options.concurrency.clone();
    task.traceparent = crate::trace_context::traceparent();
    task
}

/// Jobs, seen from a client: enqueue with the outcome, read, list, cancel, pause and resume, and
/// queue controls. (`Client::enqueue` and `Client::enqueue_many` enqueue too.)
impl Client {
    /// Enqueues activity `A` as a job, telling whether it is new or was deduplicated by its
    /// unique key (a `Reject` duplicate is an error naming the holder).
    pub async fn enqueue_job<A: Activity>(
        &self,
        input: &A::Input,
        options: JobOptions,
    ) -> Result<EnqueuedJob, ClientError> {
        let now = self.store().config().clock.now();
        let task = job_task::<A>(input, &options, now)?;
        let committed = self.store().commit(Commit::new().enqueue(task)).await?;
        Ok(EnqueuedJob {
            id: JobId(committed.task_ids[0]),
            outcome: committed.outcome(0),
        })
    }

    /// Begins a transaction on the engine's database, for your own statements together with
    /// [`enqueue_tx`](Self::enqueue_tx) and [`StoreTx`](quark_history::StoreTx)'s outbox and
    /// inbox calls: run yours on `tx.postgres()?` or `tx.sqlite()?`, then `tx.commit()`.
    pub async fn begin_tx(&self) -> Result<quark_history::StoreTx, ClientError> {
        Ok(self.store().begin_tx().await?)
    }

    /// Enqueues job `A` inside `tx`, the caller's own transaction
    /// ([`begin_tx`](Self::begin_tx)): the job exists if and only if that transaction commits
    /// (write your row and its follow-up job together). The same on PostgreSQL and SQLite.
    ///
    /// ```no_run
    /// # use quark_workflow::{ActivityContext, ActivityError, Client, JobOptions, activity};
    /// # #[activity] async fn send_welcome(_ctx: ActivityContext, user: i64) -> Result<(), ActivityError> { Ok(()) }
    /// # use quark_workflow::quark_history::sqlx;
    /// # async fn demo(client: &Client) -> anyhow::Result<()> {
    /// let mut tx = client.begin_tx().await?;
    /// sqlx::query("INSERT INTO users (id) VALUES (42)").execute(tx.sqlite()?).await?;
    /// let job = client.enqueue_tx::<send_welcome>(&mut tx, &42, JobOptions::default()).await?;
    /// tx.commit().await?;
    /// # let _ = job; Ok(()) }
    /// ```
    pub async fn enqueue_tx<A: Activity>(
        &self,
        tx: &mut quark_history::StoreTx,
        input: &A::Input,
        options: JobOptions,
    ) -> Result<JobId, ClientError> {
        let task = job_task::<A>(input, &options, self.store().config().clock.now())?;
        Ok(JobId(self.store().enqueue_tx(tx, vec![task]).await?[0]))
    }

    /// A job: its state, attempts, times, last error and progress.
    pub async fn job(&self, id: JobId) -> Result<JobInfo, ClientError> {
        self.store()
            .job(id.get())
            .await?
            .ok_or_else(|| ClientError::NotFound(format!("job {id}")))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn jobs(&self, filter: JobFilter) -> Result<Vec<JobInfo>, ClientError> {
        Ok(self.store().list_jobs(filter).await?)
    }

    /// A job's last progress report.
    pub async fn job_progress(&self, id: JobId) -> Result<Option<Progress>, ClientError> {
        Ok(self.store().job_progress(id.get()).await?)
    }

    /// Cancels a job: at once if it has not started, else by asking its worker to stop (the
    /// activity's cancellation token fires at the worker's next heartbeat).
    pub async fn cancel_job(&self, id: JobId) -> Result<JobState, ClientError> {
        Ok(self.store().cancel_job(id.get()).await?)
    }

    /// Holds a job that has not started.
    pub async fn pause_job(&self, id: JobId) -> Result<(), ClientError> {
        Ok(self.store().pause_job(id.get()).await?)
    }

    /// Releases a paused job.
    pub async fn resume_job(&self, id: JobId) -> Result<(), ClientError> {
        Ok(self.store().resume_job(id.get()).await?)
    }

    /// Puts a dead job back on its queue with fresh attempts.
    pub async fn retry_job(&self, id: JobId) -> Result<(), ClientError> {
        Ok(self.store().redrive(id.get()).await?)
    }

    /// Stops claims from `queue` on every worker until [`resume_queue`](Self::resume_queue).
    pub async fn pause_queue(&self, queue: &str) -> Result<(), ClientError> {
        Ok(self.store().set_queue_paused(queue, true).await?)
    }

    /// Resumes claims from `queue`.
    pub async fn resume_queue(&self, queue: &str) -> Result<(), ClientError> {
        Ok(self.store().set_queue_paused(queue, false).await?)
    }

    /// Sets (or with `None` clears) `queue`'s rate limit, shared by every worker.
    pub async fn set_rate_limit(
        &self,
        queue: &str,
        limit: Option<RateLimit>,
    ) -> Result<(), ClientError> {
        Ok(self.store().set_rate_limit(queue, limit).await?)
    }
}

impl JobTask {
    /// The job task in a job's payload (its activity, input and options).
    pub fn of(job: &JobInfo) -> Option<JobTask> {
        match TaskPayload::from_bytes(&job.payload) {
            Ok(TaskPayload::Job(task)) => Some(task),
            _ => None,
        }
    }
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
        Err(error) => match job.options.retry.jittered_delay_after(
            claimed.lease.attempt,
            claimed.lease.task_id as u64 ^ now.as_micros() as u64,
        ) {
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
            visible_at: Timestamp::EPOCH,
            lease_expires_at: Timestamp::EPOCH,
            payload: Vec::new(),
            traceparent: None,
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
                // 2 s after the second attempt, less up to a fifth of jitter.
                assert!(
                    at <= now + Duration::from_secs(2) && at >= now + Duration::from_millis(1600),
                    "{at:?}"
                )
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
