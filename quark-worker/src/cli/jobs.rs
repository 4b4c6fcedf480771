//! `quark job ...` and `quark queue ...`: durable jobs and queue controls from the command line.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::{
    JobFilter, JobInfo, JobState, RateLimit, Store, Timestamp, UniqueKey, UniquePolicy,
};
use quark_workflow::{Client, JobOptions, JobTask, Registry, job_task_by_name};

use super::{Output, OutputArg, json_payload};

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
        /// Not before this many seconds from now.
        #[arg(long)]
        delay: Option<u64>,
        /// A unique key: while a job holds it, another is not enqueued.
        #[arg(long)]
        unique: Option<String>,
        /// What a duplicate does: reject, keep (return the holder) or replace (a holder that has
        /// not started).
        #[arg(long, default_value = "reject", requires = "unique")]
        unique_policy: String,
        /// Keep the key for this many seconds from the enqueue (default: until the job finishes).
        #[arg(long, requires = "unique")]
        unique_window: Option<u64>,
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
        #[command(flatten)]
        output: OutputArg,
    },
    /// Shows one job: state, attempts, times, error, progress, activity and input.
    Show {
        /// The job id.
        id: i64,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Cancels jobs: at once if not started, else their workers are asked to stop.
    Cancel {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Puts dead jobs back on their queues with fresh attempts.
    Retry {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Holds jobs that have not started.
    Pause {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Releases paused jobs.
    Resume {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// `quark queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts of tasks on a queue, and its controls.
    Stats {
        /// The queue.
        queue: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Stops every worker claiming from a queue (running tasks finish).
    Pause {
        /// The queue.
        queue: String,
    },
    /// Lets workers claim from a paused queue again.
    Resume {
        /// The queue.
        queue: String,
    },
    /// Limits how many tasks all workers together start from a queue per interval.
    RateLimit {
        /// The queue.
        queue: String,
        /// How many per interval.
        #[arg(long, required_unless_present = "clear")]
        limit: Option<u32>,
        /// The interval, in seconds.
        #[arg(long, default_value_t = 1.0)]
        per: f64,
        /// Removes the limit.
        #[arg(long, conflicts_with = "limit")]
        clear: bool,
    },
}

pub(super) async fn job(
    store: &Arc<dyn Store>,
    cmd: JobCommand,
    registry: Option<&Registry>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = Client::new(Arc::clone(store));
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
            let Some(defaults) = registry.and_then(|r| r.activity_options(&activity)) else {
                bail!(
                    "no activity `{activity}` is linked into this binary; nothing was enqueued \
                     (build your own binary with quark_worker::cli::main_with(registry))"
                );
            };
            let input = json_payload("input", &input)?;
            let mut options = JobOptions::default().priority(priority);
            options.queue = queue;
            options.delay = delay.map(Duration::from_secs);
            if let Some(key) = unique {
                let policy = match unique_policy.as_str() {
                    "reject" => UniquePolicy::Reject,
                    "keep" => UniquePolicy::Keep,
                    "replace" => UniquePolicy::Replace,
                    other => bail!("unknown unique policy `{other}`: use reject, keep or replace"),
                };
                let mut key = UniqueKey::new(key).policy(policy);
                if let Some(secs) = unique_window {
                    key = key.window(Duration::from_secs(secs));
                }
                options = options.unique(key);
            }
            if let Some(spec) = concurrency {
                let (key, limit) = spec
                    .rsplit_once(':')
                    .and_then(|(k, n)| Some((k, n.parse::<u32>().ok()?)))
                    .with_context(|| format!("--concurrency `{spec}`: expected KEY:N"))?;
                options = options.concurrency(key, limit);
            }
            let now = store.config().clock.now();
            let task = job_task_by_name(&activity, defaults.clone(), input, &options, now);
            let committed = store
                .commit(quark_history::Commit::new().enqueue(task))
                .await?;
            let id = committed.task_ids[0];
            match committed.outcome(0) {
                quark_history::Enqueued::New => writeln!(out, "enqueued job {id} ({activity})")?,
                quark_history::Enqueued::Existing => writeln!(
                    out,
                    "job {id} already holds the unique key; nothing enqueued"
                )?,
                quark_history::Enqueued::Replaced => {
                    writeln!(out, "replaced job {id}, which had not started")?
                }
            }
        }
        JobCommand::List {
            queue,
            state,
            limit,
            before,
            output,
        } => {
            let states = state
                .iter()
                .map(|s| s.parse::<JobState>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let jobs = client
                .jobs(JobFilter {
                    queue,
                    states,
                    before_id: before,
                    limit,
                })
                .await?;
            if output.output == Output::Json {
                let rows: Vec<_> = jobs.iter().map(job_json).collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<11}  {:<12}  {:<20}  {:>8}  {:>8}  {:<27}  error",
                    "job",
                    "state",
                    "queue",
                    "activity",
                    "attempts",
                    "progress",
                    "run at / finished"
                )?;
                for j in &jobs {
                    let activity = JobTask::of(j).map(|t| t.activity).unwrap_or_default();
                    let progress = j
                        .progress
                        .as_ref()
                        .and_then(|p| p.percent)
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_default();
                    let when = j
                        .finished_at
                        .or(j.run_at)
                        .map(show_time)
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:>8}  {:<11}  {:<12}  {:<20}  {:>8}  {:>8}  {:<27}  {}",
                        j.id,
                        j.state,
                        j.queue,
                        activity,
                        j.attempts,
                        progress,
                        when,
                        j.error.as_deref().unwrap_or("")
                    )?;
                }
                if jobs.len() as u32 == limit
                    && let Some(last) = jobs.last()
                {
                    writeln!(out, "next page: --before {}", last.id)?;
                }
            }
        }
        JobCommand::Show { id, output } => {
            let j = client.job(id).await?;
            if output.output == Output::Json {
                serde_json::to_writer_pretty(&mut *out, &job_json(&j))?;
                writeln!(out)?;
            } else {
                let task = JobTask::of(&j);
                writeln!(out, "job          {}", j.id)?;
                writeln!(out, "state        {}", j.state)?;
                writeln!(out, "queue        {}", j.queue)?;
                writeln!(out, "priority     {}", j.priority)?;
                if let Some(task) = &task {
                    writeln!(out, "activity     {}", task.activity)?;
                    let input: serde_json::Value = task.input.decode().unwrap_or_default();
                    writeln!(out, "input        {input}")?;
                }
                writeln!(out, "attempts     {}", j.attempts)?;
                writeln!(out, "created      {}", show_time(j.created_at))?;
                if let Some(at) = j.run_at {
                    writeln!(out, "run at       {}", show_time(at))?;
                }
                if let Some(at) = j.finished_at {
                    writeln!(out, "finished     {}", show_time(at))?;
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
                        writeln!(out, "checkpoint   {}", String::from_utf8_lossy(c))?;
                    }
                }
            }
        }
        JobCommand::Cancel { ids } => {
            for id in ids {
                let state = client
                    .cancel_job(id)
                    .await
                    .with_context(|| format!("cancelling job {id}"))?;
                match state {
                    JobState::Cancelling => {
                        writeln!(out, "job {id} is running; its worker was asked to stop")?
                    }
                    _ => writeln!(out, "job {id} cancelled")?,
                }
            }
        }
        JobCommand::Retry { ids } => {
            for id in ids {
                client
                    .retry_job(id)
                    .await
                    .with_context(|| format!("retrying job {id}"))?;
                writeln!(out, "job {id} is back on its queue")?;
            }
        }
        JobCommand::Pause { ids } => {
            for id in ids {
                client
                    .pause_job(id)
                    .await
                    .with_context(|| format!("pausing job {id}"))?;
                writeln!(out, "job {id} paused")?;
            }
        }
        JobCommand::Resume { ids } => {
            for id in ids {
                client
                    .resume_job(id)
                    .await
                    .with_context(|| format!("resuming job {id}"))?;
                writeln!(out, "job {id} resumed")?;
            }
        }
    }
    Ok(())
}

pub(super) async fn queue(
    store: &Arc<dyn Store>,
    cmd: QueueCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Stats { queue, output } => {
            let stats = store.queue_stats(&queue).await?;
            let settings = store.queue_settings(&queue).await?;
            let limit = settings
                .rate_limit
                .map(|l| format!("{} per {:.3} s", l.limit, l.interval.as_secs_f64()));
            if output.output == Output::Json {
                let json = serde_json::json!({
                    "queue": queue, "pending": stats.pending, "leased": stats.leased,
                    "held": stats.held, "dead": stats.dead, "paused": stats.paused,
                    "rate_limit": settings.rate_limit.map(|l| serde_json::json!({
                        "limit": l.limit, "interval_secs": l.interval.as_secs_f64()
                    })),
                });
                writeln!(out, "{json}")?;
            } else {
                writeln!(
                    out,
                    "{queue}: {} pending, {} leased, {} held, {} dead{}{}",
                    stats.pending,
                    stats.leased,
                    stats.held,
                    stats.dead,
                    if stats.paused { "; PAUSED" } else { "" },
                    limit
                        .map(|l| format!("; rate limit {l}"))
                        .unwrap_or_default()
                )?;
            }
        }
        QueueCommand::Pause { queue } => {
            store.set_queue_paused(&queue, true).await?;
            writeln!(out, "queue {queue} paused")?;
        }
        QueueCommand::Resume { queue } => {
            store.set_queue_paused(&queue, false).await?;
            writeln!(out, "queue {queue} resumed")?;
        }
        QueueCommand::RateLimit {
            queue,
            limit,
            per,
            clear,
        } => {
            if clear {
                store.set_rate_limit(&queue, None).await?;
                writeln!(out, "queue {queue}: no rate limit")?;
            } else {
                let limit = limit.context("--limit is required")?;
                if !(per.is_finite() && per > 0.0) {
                    bail!("--per must be a positive number of seconds");
                }
                let interval = Duration::from_secs_f64(per);
                store
                    .set_rate_limit(&queue, Some(RateLimit { limit, interval }))
                    .await?;
                writeln!(out, "queue {queue}: at most {limit} per {per} s")?;
            }
        }
    }
    Ok(())
}

fn show_time(at: Timestamp) -> String {
    at.to_string()
}

fn job_json(j: &JobInfo) -> serde_json::Value {
    let task = JobTask::of(j);
    serde_json::json!({
        "id": j.id,
        "state": j.state.as_str(),
        "queue": j.queue,
        "priority": j.priority,
        "activity": task.as_ref().map(|t| t.activity.clone()),
        "input": task.as_ref().and_then(|t| t.input.decode::<serde_json::Value>().ok()),
        "attempts": j.attempts,
        "created_at": j.created_at.to_string(),
        "run_at": j.run_at.map(|t| t.to_string()),
        "finished_at": j.finished_at.map(|t| t.to_string()),
        "error": j.error,
        "concurrency_key": j.concurrency_key,
        "progress": j.progress.as_ref().map(|p| serde_json::json!({
            "percent": p.percent,
            "message": p.message,
            "checkpoint": p.checkpoint.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()),
            "updated_at": p.updated_at.to_string(),
        })),
    })
}
