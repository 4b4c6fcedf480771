//! `quark job ...`: durable jobs from the command line.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::{JobFilter, JobInfo, JobState, Timestamp, UniqueKey, UniquePolicy};
use quark_workflow::runner::{JobTask, job_task_by_name};
use quark_workflow::{Client, JobId, JobOptions, Registry};

use serde::Serialize;

use super::duration;
use super::json_payload;
use super::output::{self, Output, rfc3339, rfc3339_opt, table, write_table};
use super::place::Place;
use crate::service::jobs as jobs_api;
use crate::service::proto;

/// `quark job ...`
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Enqueues a job of an activity linked into this binary.
    Enqueue {
        /// The activity's registered name.
        activity: String,
        /// The input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// The queue (default: the activity's, or `default`).
        #[arg(long)]
        queue: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Not before this long from now (`30s`, `5m`).
        #[arg(long, value_parser = duration::parse)]
        delay: Option<Duration>,
        /// A unique key: while a job holds it, another is not enqueued.
        #[arg(long)]
        unique: Option<String>,
        /// What a duplicate does: reject, keep (return the holder) or replace (a holder that has
        /// not started).
        #[arg(long, default_value = "reject", requires = "unique")]
        unique_policy: String,
        /// Keep the key for this long from the enqueue, e.g. `1h` (default: until the job
        /// finishes).
        #[arg(long, requires = "unique", value_parser = duration::parse)]
        unique_window: Option<Duration>,
        /// A concurrency key and limit, `KEY:N`: at most N jobs of KEY run at a time.
        #[arg(long)]
        concurrency: Option<String>,
    },
    /// Lists jobs, newest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only these states (pending, scheduled, retrying, paused, waiting, running, cancelling,
        /// completed, cancelled, dead).
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only jobs older than this id (the next page).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Shows one job: state, attempts, times, error, progress, activity and input.
    Show {
        /// The job id.
        id: JobId,
    },
    /// Cancels jobs: at once if not started, else their workers are asked to stop.
    Cancel {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Puts dead jobs back on their queues with fresh attempts.
    Retry {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Holds jobs that have not started.
    Pause {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
    /// Releases paused jobs.
    Resume {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<JobId>,
    },
}

pub(super) async fn job(
    place: Place<'_>,
    cmd: JobCommand,
    registry: Option<&Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Enqueue {
            activity,
            input,
            queue,
            priority,
            delay,
            unique,
            unique_policy,
            unique_window,
            concurrency,
        } => {
            let input = json_payload("input", &input)?;
            let request = EnqueueArgs {
                queue,
                priority,
                delay,
                unique,
                unique_policy,
                unique_window,
                concurrency,
            };
            let (job_id, outcome) = place
                .enqueue_job(&activity, input, request, registry)
                .await?;
            let enqueued = Enqueued {
                job_id,
                activity,
                outcome,
            };
            output::one(out, output, &enqueued, |out, e| {
                let id = e.job_id;
                match e.outcome {
                    "enqueued" => writeln!(out, "enqueued job {id} ({})", e.activity)?,
                    "existing" => writeln!(
                        out,
                        "job {id} already holds the unique key; nothing enqueued"
                    )?,
                    _ => writeln!(out, "replaced job {id}, which had not started")?,
                }
                Ok(())
            })?;
        }
        JobCommand::List {
            queue,
            state,
            limit,
            before,
        } => {
            let states = state
                .iter()
                .map(|s| s.parse::<JobState>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let jobs: Vec<JobView> = place
                .list_jobs(JobFilter {
                    queue,
                    queue_prefix: None,
                    states,
                    before_id: before,
                    limit,
                })
                .await?
                .iter()
                .map(JobView::from)
                .collect();
            output::rows(out, output, &jobs, |out, jobs| {
                let mut t = table([
                    "job",
                    "state",
                    "queue",
                    "activity",
                    "attempts",
                    "progress",
                    "run at / finished",
                    "error",
                ]);
                for j in jobs {
                    let progress = j
                        .progress
                        .as_ref()
                        .and_then(|p| p.percent)
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_default();
                    let when = j
                        .finished_at
                        .or(j.run_at)
                        .map(output::time)
                        .unwrap_or_default();
                    t.add_row([
                        j.id.to_string(),
                        j.state.to_string(),
                        j.queue.clone(),
                        j.activity.clone().unwrap_or_default(),
                        j.attempts.to_string(),
                        progress,
                        when,
                        j.error.clone().unwrap_or_default(),
                    ]);
                }
                write_table(out, &t)?;
                if jobs.len() as u32 == limit
                    && let Some(last) = jobs.last()
                {
                    writeln!(out, "next page: --before {}", last.id)?;
                }
                Ok(())
            })?;
        }
        JobCommand::Show { id } => {
            let j = JobView::from(&place.job(id).await?);
            output::one(out, output, &j, show)?;
        }
        JobCommand::Cancel { ids } => {
            let mut done = Vec::new();
            for id in ids {
                let state = place
                    .cancel_job(id)
                    .await
                    .with_context(|| format!("cancelling job {id}"))?;
                done.push(JobChanged {
                    job_id: id,
                    state: state.as_str(),
                });
            }
            output::rows(out, output, &done, |out, done| {
                for d in done {
                    match d.state {
                        "cancelling" => writeln!(
                            out,
                            "job {} is running; its worker was asked to stop",
                            d.job_id
                        )?,
                        _ => writeln!(out, "job {} cancelled", d.job_id)?,
                    }
                }
                Ok(())
            })?;
        }
        JobCommand::Retry { ids } => {
            let mut done = Vec::new();
            for id in ids {
                place
                    .retry_job(id)
                    .await
                    .with_context(|| format!("retrying job {id}"))?;
                done.push(JobChanged {
                    job_id: id,
                    state: JobState::Pending.as_str(),
                });
            }
            changed(out, output, &done, "is back on its queue")?;
        }
        JobCommand::Pause { ids } => {
            let mut done = Vec::new();
            for id in ids {
                place
                    .pause_job(id)
                    .await
                    .with_context(|| format!("pausing job {id}"))?;
                done.push(JobChanged {
                    job_id: id,
                    state: JobState::Paused.as_str(),
                });
            }
            changed(out, output, &done, "paused")?;
        }
        JobCommand::Resume { ids } => {
            let mut done = Vec::new();
            for id in ids {
                place
                    .resume_job(id)
                    .await
                    .with_context(|| format!("resuming job {id}"))?;
                done.push(JobChanged {
                    job_id: id,
                    state: JobState::Pending.as_str(),
                });
            }
            changed(out, output, &done, "resumed")?;
        }
    }
    Ok(())
}

/// What `quark job enqueue` did.
#[derive(Debug, Serialize)]
struct Enqueued {
    job_id: i64,
    activity: String,
    /// `enqueued`, `existing` (another job holds the unique key; its id) or `replaced`.
    outcome: &'static str,
}

/// A job that a command changed, and its state after.
#[derive(Debug, Serialize)]
struct JobChanged {
    job_id: JobId,
    state: &'static str,
}

fn changed(
    out: &mut dyn Write,
    output: Output,
    done: &[JobChanged],
    what: &str,
) -> anyhow::Result<()> {
    output::rows(out, output, done, |out, done| {
        for d in done {
            writeln!(out, "job {} {what}", d.job_id)?;
        }
        Ok(())
    })
}

/// A job, as listed and shown.
#[derive(Debug, Serialize)]
struct JobView {
    id: i64,
    state: &'static str,
    queue: String,
    priority: i32,
    activity: Option<String>,
    input: Option<serde_json::Value>,
    attempts: u32,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339_opt")]
    run_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339_opt")]
    finished_at: Option<Timestamp>,
    error: Option<String>,
    concurrency_key: Option<String>,
    progress: Option<ProgressView>,
}

#[derive(Debug, Serialize)]
struct ProgressView {
    percent: Option<f32>,
    message: Option<String>,
    checkpoint: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    updated_at: Timestamp,
}

impl From<&JobInfo> for JobView {
    fn from(j: &JobInfo) -> Self {
        let task = JobTask::of(j);
        JobView {
            id: j.id,
            state: j.state.as_str(),
            queue: j.queue.clone(),
            priority: j.priority,
            activity: task.as_ref().map(|t| t.activity.clone()),
            input: task.as_ref().and_then(|t| t.input.decode().ok()),
            attempts: j.attempts,
            created_at: j.created_at,
            run_at: j.run_at,
            finished_at: j.finished_at,
            error: j.error.clone(),
            concurrency_key: j.concurrency_key.clone(),
            progress: j.progress.as_ref().map(|p| ProgressView {
                percent: p.percent,
                message: p.message.clone(),
                checkpoint: p
                    .checkpoint
                    .as_ref()
                    .map(|c| String::from_utf8_lossy(c).into_owned()),
                updated_at: p.updated_at,
            }),
        }
    }
}

fn show(out: &mut dyn Write, j: &JobView) -> anyhow::Result<()> {
    writeln!(out, "job          {}", j.id)?;
    writeln!(out, "state        {}", j.state)?;
    writeln!(out, "queue        {}", j.queue)?;
    writeln!(out, "priority     {}", j.priority)?;
    if let Some(activity) = &j.activity {
        writeln!(out, "activity     {activity}")?;
        let input = j.input.clone().unwrap_or_default();
        writeln!(out, "input        {input}")?;
    }
    writeln!(out, "attempts     {}", j.attempts)?;
    writeln!(out, "created      {}", output::time(j.created_at))?;
    if let Some(at) = j.run_at {
        writeln!(out, "run at       {}", output::time(at))?;
    }
    if let Some(at) = j.finished_at {
        writeln!(out, "finished     {}", output::time(at))?;
    }
    if let Some(key) = &j.concurrency_key {
        writeln!(out, "concurrency  {key}")?;
    }
    if let Some(e) = &j.error {
        writeln!(out, "error        {e}")?;
    }
    if let Some(p) = &j.progress {
        writeln!(
            out,
            "progress     {}{}",
            p.percent.map(|p| format!("{p:.1}%")).unwrap_or_default(),
            p.message
                .as_ref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        )?;
        if let Some(c) = &p.checkpoint {
            writeln!(out, "checkpoint   {c}")?;
        }
    }
    Ok(())
}

/// What `quark job enqueue` asks for besides the activity and its input.
struct EnqueueArgs {
    queue: Option<String>,
    priority: i32,
    delay: Option<Duration>,
    unique: Option<String>,
    unique_policy: String,
    unique_window: Option<Duration>,
    concurrency: Option<String>,
}

impl EnqueueArgs {
    fn policy(&self) -> anyhow::Result<UniquePolicy> {
        Ok(match self.unique_policy.as_str() {
            "reject" => UniquePolicy::Reject,
            "keep" => UniquePolicy::Keep,
            "replace" => UniquePolicy::Replace,
            other => bail!("unknown unique policy `{other}`: use reject, keep or replace"),
        })
    }

    fn concurrency(&self) -> anyhow::Result<Option<(String, u32)>> {
        self.concurrency
            .as_ref()
            .map(|spec| {
                spec.rsplit_once(':')
                    .and_then(|(k, n)| Some((k.to_string(), n.parse::<u32>().ok()?)))
                    .with_context(|| format!("--concurrency `{spec}`: expected KEY:N"))
            })
            .transpose()
    }
}

impl Place<'_> {
    /// Enqueues a job of `activity`; its id and `enqueued`, `existing` or `replaced`.
    async fn enqueue_job(
        &self,
        activity: &str,
        input: quark_history::Payload,
        args: EnqueueArgs,
        registry: Option<&Registry>,
    ) -> anyhow::Result<(i64, &'static str)> {
        let policy = args.policy()?;
        let concurrency = args.concurrency()?;
        let store = match self {
            Place::Database(store) => store,
            Place::Server(remote) => {
                let policy = match policy {
                    UniquePolicy::Keep => proto::UniquePolicy::Keep,
                    UniquePolicy::Replace => proto::UniquePolicy::Replace,
                    _ => proto::UniquePolicy::Reject,
                };
                let (concurrency_key, concurrency_limit) = concurrency.unwrap_or_default();
                let enqueued = remote
                    .jobs()
                    .enqueue_job(proto::EnqueueJobRequest {
                        activity: activity.to_string(),
                        input: Some(crate::service::convert::payload_out(&input)),
                        queue: args.queue.unwrap_or_default(),
                        priority: args.priority,
                        run_at: None,
                        delay: args.delay.map(crate::service::convert::duration_out),
                        unique_key: args.unique.unwrap_or_default(),
                        unique_policy: policy as i32,
                        unique_window: args
                            .unique_window
                            .map(crate::service::convert::duration_out),
                        concurrency_key,
                        concurrency_limit,
                    })
                    .await
                    .map_err(super::place::api)?
                    .into_inner();
                let outcome = match enqueued.outcome.as_str() {
                    "existing" => "existing",
                    "replaced" => "replaced",
                    _ => "enqueued",
                };
                return Ok((enqueued.job_id, outcome));
            }
        };
        let defaults = match registry.and_then(|r| r.activity_options(activity)) {
            Some(linked) => linked.clone(),
            None => match store
                .registered_type(quark_history::TypeKind::Activity, activity)
                .await?
            {
                Some(registered) => serde_json::from_str(&registered.options)
                    .with_context(|| format!("the catalog's options of `{activity}`"))?,
                None => bail!(
                    "no activity `{activity}` is linked into this binary or registered by a \
                     worker of this database; nothing was enqueued (start a worker that runs \
                     it, or build your own binary with quark_worker::cli::main_with(registry))"
                ),
            },
        };
        let mut options = JobOptions::default().priority(args.priority);
        options.queue = args.queue;
        options.delay = args.delay;
        if let Some(key) = args.unique {
            let mut key = UniqueKey::new(key).policy(policy);
            if let Some(window) = args.unique_window {
                key = key.window(window);
            }
            options = options.unique(key);
        }
        if let Some((key, limit)) = concurrency {
            options = options.concurrency(key, limit);
        }
        let now = store.config().clock.now();
        let task = job_task_by_name(activity, defaults, input, &options, now);
        let committed = store
            .commit(quark_history::Commit::new().enqueue(task))
            .await?;
        let outcome = match committed.outcome(0) {
            quark_history::Enqueued::New => "enqueued",
            quark_history::Enqueued::Existing => "existing",
            quark_history::Enqueued::Replaced => "replaced",
        };
        Ok((committed.task_ids[0], outcome))
    }

    /// Jobs matching `filter`, newest first.
    async fn list_jobs(&self, filter: JobFilter) -> anyhow::Result<Vec<JobInfo>> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).jobs(filter).await?),
            Place::Server(remote) => {
                let listed = remote
                    .jobs()
                    .list_jobs(proto::ListJobsRequest {
                        queue: filter.queue.unwrap_or_default(),
                        states: filter
                            .states
                            .iter()
                            .map(|s| jobs_api::state_out(*s) as i32)
                            .collect(),
                        page_size: filter.limit,
                        page_token: filter.before_id.map(|b| b.to_string()).unwrap_or_default(),
                    })
                    .await
                    .map_err(super::place::api)?
                    .into_inner();
                listed
                    .jobs
                    .into_iter()
                    .map(|j| jobs_api::job_in(j).map_err(super::place::api))
                    .collect()
            }
        }
    }

    /// Job `id`.
    async fn job(&self, id: JobId) -> anyhow::Result<JobInfo> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).job(id).await?),
            Place::Server(remote) => {
                let got = remote
                    .jobs()
                    .get_job(proto::GetJobRequest { job_id: id.get() })
                    .await
                    .map_err(super::place::api)?
                    .into_inner();
                let job = got.job.context("the API answered no job")?;
                jobs_api::job_in(job).map_err(super::place::api)
            }
        }
    }

    /// Cancels job `id`; its state after.
    async fn cancel_job(&self, id: JobId) -> anyhow::Result<JobState> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).cancel_job(id).await?),
            Place::Server(remote) => {
                let state = remote
                    .jobs()
                    .cancel_job(proto::CancelJobRequest { job_id: id.get() })
                    .await
                    .map_err(super::place::api)?
                    .into_inner()
                    .state;
                jobs_api::state_in(state).map_err(super::place::api)
            }
        }
    }

    async fn retry_job(&self, id: JobId) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).retry_job(id).await?),
            Place::Server(remote) => {
                remote
                    .jobs()
                    .retry_job(proto::RetryJobRequest { job_id: id.get() })
                    .await
                    .map_err(super::place::api)?;
                Ok(())
            }
        }
    }

    async fn pause_job(&self, id: JobId) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).pause_job(id).await?),
            Place::Server(remote) => {
                remote
                    .jobs()
                    .pause_job(proto::PauseJobRequest { job_id: id.get() })
                    .await
                    .map_err(super::place::api)?;
                Ok(())
            }
        }
    }

    async fn resume_job(&self, id: JobId) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).resume_job(id).await?),
            Place::Server(remote) => {
                remote
                    .jobs()
                    .resume_job(proto::ResumeJobRequest { job_id: id.get() })
                    .await
                    .map_err(super::place::api)?;
                Ok(())
            }
        }
    }
}
