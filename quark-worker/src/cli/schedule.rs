//! `quark schedule list|add|remove`: cron schedules of durable jobs.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::{Missed, NewTask, ScheduleRecord, Store, TaskKind, Timestamp, Upserted};
use quark_workflow::{Client, JobTask, Registry, Schedule, TaskPayload};

use super::{Output, OutputArg, json_payload};

/// `quark schedule ...`
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Lists the schedules, by name.
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Registers a schedule (or changes the one of that name): a job of a registered activity at
    /// every tick of a cron expression.
    Add {
        /// The schedule's unique name.
        name: String,
        /// The cron expression: `min hour dom month dow`, or with seconds first (6 fields).
        #[arg(long)]
        cron: String,
        /// The IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// The activity each tick's job runs (one linked into this binary).
        #[arg(long)]
        activity: String,
        /// The job's input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// The job's queue (default: the activity's, or `default`).
        #[arg(long)]
        queue: Option<String>,
        /// The job's priority (higher first).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Ticks missed while no worker ran: `skip`, or `backfill:N` for the N most recent.
        #[arg(long, default_value = "skip", value_parser = parse_missed)]
        missed: Missed,
    },
    /// Removes a schedule. Jobs it already enqueued still run.
    Remove {
        /// The schedule's name.
        name: String,
    },
}

fn parse_missed(text: &str) -> Result<Missed, String> {
    text.parse()
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    cmd: ScheduleCommand,
    registry: Option<&Registry>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = Client::new(Arc::clone(store));
    match cmd {
        ScheduleCommand::List { output } => {
            let schedules = client.schedules().await?;
            if output.output == Output::Json {
                let rows: Vec<_> = schedules.iter().map(to_json).collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<24}  {:<20}  {:<16}  {:<12}  {:<20}  {:<12}  {:<27}  last fired",
                "name", "cron", "tz", "missed", "activity", "queue", "next at"
            )?;
            for s in &schedules {
                let spec = &s.spec;
                writeln!(
                    out,
                    "{:<24}  {:<20}  {:<16}  {:<12}  {:<20}  {:<12}  {:<27}  {}",
                    spec.name,
                    spec.cron,
                    spec.timezone,
                    spec.missed,
                    job_of(s).map_or_else(|| "?".into(), |j| j.activity),
                    spec.queue,
                    time(s.next_at),
                    s.last_fired_at.map_or_else(|| "-".into(), time),
                )?;
            }
        }
        ScheduleCommand::Add {
            name,
            cron,
            tz,
            activity,
            input,
            queue,
            priority,
            missed,
        } => {
            let Some(options) = registry.and_then(|r| r.activity_options(&activity)) else {
                bail!(
                    "no activity `{activity}` is linked into this binary; nothing was scheduled \
                     (build your own binary with quark_worker::cli::main_with(registry))"
                );
            };
            let schedule = Schedule::cron(&cron)?.timezone(&tz)?.missed(missed);
            let input = json_payload("input", &input)?;
            let queue = queue
                .or_else(|| options.queue.clone())
                .unwrap_or_else(|| "default".into());
            let job = TaskPayload::Job(JobTask {
                activity: activity.clone(),
                input,
                options: options.clone(),
            });
            let task = NewTask::new(TaskKind::Job, queue)
                .priority(priority)
                .payload(job.to_bytes());
            let upserted = client
                .schedule_job(&name, &schedule, &task)
                .await
                .with_context(|| format!("registering schedule `{name}`"))?;
            let record = store
                .get_schedule(&name)
                .await?
                .with_context(|| format!("schedule `{name}` was removed meanwhile"))?;
            let what = match upserted {
                Upserted::Created => "created",
                Upserted::Updated => "updated",
                Upserted::Unchanged => "unchanged",
                _ => "registered",
            };
            writeln!(
                out,
                "schedule {name} {what}: {activity} at `{cron}` ({tz}); next at {}",
                time(record.next_at)
            )?;
        }
        ScheduleCommand::Remove { name } => {
            if !client.unschedule(&name).await? {
                bail!("no schedule `{name}`");
            }
            writeln!(out, "schedule {name} removed")?;
        }
    }
    Ok(())
}

fn job_of(record: &ScheduleRecord) -> Option<JobTask> {
    match TaskPayload::from_bytes(&record.spec.payload) {
        Ok(TaskPayload::Job(job)) => Some(job),
        _ => None,
    }
}

fn time(at: Timestamp) -> String {
    if at == Timestamp::MAX {
        "never".into()
    } else {
        at.to_string()
    }
}

fn to_json(s: &ScheduleRecord) -> serde_json::Value {
    let job = job_of(s);
    serde_json::json!({
        "name": s.spec.name,
        "cron": s.spec.cron,
        "timezone": s.spec.timezone,
        "missed": s.spec.missed.to_string(),
        "activity": job.as_ref().map(|j| j.activity.clone()),
        "input": job.as_ref().and_then(|j| j.input.decode::<serde_json::Value>().ok()),
        "queue": s.spec.queue,
        "priority": s.spec.priority,
        "next_at": (s.next_at != Timestamp::MAX).then(|| s.next_at.to_string()),
        "last_fired_at": s.last_fired_at.map(|t| t.to_string()),
        "created_at": s.created_at.to_string(),
        "updated_at": s.updated_at.to_string(),
    })
}
