//! `quark schedule list|add|remove`: cron schedules of durable jobs.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::{Missed, NewTask, ScheduleRecord, ScheduleSpec, TaskKind, Timestamp, Upserted};
use quark_workflow::runner::{JobTask, TaskPayload};
use quark_workflow::{Client, Registry, Schedule};

use serde::Serialize;

use super::json_payload;
use super::output::{self, Output, rfc3339, rfc3339_opt, table, time, write_table};
use super::place::{self, Place};
use crate::service::proto;

/// `quark schedule ...`
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Lists the schedules, by name.
    List,
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
    place: Place<'_>,
    cmd: ScheduleCommand,
    registry: Option<&Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::List => {
            let schedules: Vec<ScheduleView> = place
                .schedules()
                .await?
                .iter()
                .map(ScheduleView::from)
                .collect();
            output::rows(out, output, &schedules, |out, schedules| {
                let mut t = table([
                    "name",
                    "cron",
                    "tz",
                    "missed",
                    "activity",
                    "queue",
                    "next at",
                    "last fired",
                ]);
                for s in schedules {
                    t.add_row([
                        s.name.clone(),
                        s.cron.clone(),
                        s.timezone.clone(),
                        s.missed.clone(),
                        s.activity.clone().unwrap_or_else(|| "?".into()),
                        s.queue.clone(),
                        time(s.next_at),
                        s.last_fired_at.map_or_else(|| "-".into(), time),
                    ]);
                }
                write_table(out, &t)
            })?;
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
            let upserted = place
                .put_schedule(
                    &name,
                    PutArgs {
                        cron,
                        tz,
                        activity,
                        input,
                        queue,
                        priority,
                        missed,
                    },
                    registry,
                )
                .await?;
            let record = place
                .schedules()
                .await?
                .into_iter()
                .find(|s| {
                    // Through a namespace's token, the name is stored in its namespace.
                    s.spec.name == name
                        || s.spec
                            .name
                            .strip_suffix(name.as_str())
                            .is_some_and(|ns| ns.ends_with(quark_history::NAMESPACE_SEPARATOR))
                })
                .with_context(|| format!("schedule `{name}` was removed meanwhile"))?;
            let what = match upserted {
                Upserted::Created => "created",
                Upserted::Updated => "updated",
                Upserted::Unchanged => "unchanged",
                _ => "registered",
            };
            let added = ScheduleChanged {
                name,
                outcome: what,
                view: Some(ScheduleView::from(&record)),
            };
            output::one(out, output, &added, |out, a| {
                if let Some(s) = &a.view {
                    writeln!(
                        out,
                        "schedule {} {}: {} at `{}` ({}); next at {}",
                        a.name,
                        a.outcome,
                        s.activity.as_deref().unwrap_or("?"),
                        s.cron,
                        s.timezone,
                        time(s.next_at)
                    )?;
                }
                Ok(())
            })?;
        }
        ScheduleCommand::Remove { name } => {
            if !place.remove_schedule(&name).await? {
                bail!("no schedule `{name}`");
            }
            let removed = ScheduleChanged {
                name,
                outcome: "removed",
                view: None,
            };
            output::one(out, output, &removed, |out, r| {
                writeln!(out, "schedule {} removed", r.name)?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// What `quark schedule add` registers.
struct PutArgs {
    cron: String,
    tz: String,
    activity: String,
    input: String,
    queue: Option<String>,
    priority: i32,
    missed: Missed,
}

impl Place<'_> {
    /// Every schedule, by name.
    async fn schedules(&self) -> anyhow::Result<Vec<ScheduleRecord>> {
        let remote = match self {
            Place::Database(store) => {
                return Ok(Client::new(Arc::clone(store)).schedules().await?);
            }
            Place::Server(remote) => remote,
        };
        let listed = remote
            .schedules()
            .list_schedules(proto::ListSchedulesRequest::default())
            .await
            .map_err(place::api)?
            .into_inner()
            .schedules;
        let time =
            |field: &str, t: Option<prost_types::Timestamp>| -> anyhow::Result<Option<Timestamp>> {
                t.map(|t| crate::service::convert::time_in(field, t))
                    .transpose()
                    .map_err(place::api)
            };
        listed
            .into_iter()
            .map(|s| {
                let job = TaskPayload::Job(JobTask {
                    activity: s.activity,
                    input: crate::service::convert::payload_in("input", s.input)
                        .map_err(place::api)?,
                    options: Default::default(),
                });
                Ok(ScheduleRecord {
                    spec: ScheduleSpec {
                        name: s.name,
                        cron: s.cron,
                        timezone: s.timezone,
                        missed: match s.backfill {
                            0 => Missed::Skip,
                            n => Missed::Backfill(n),
                        },
                        queue: s.queue,
                        priority: s.priority,
                        payload: job.to_bytes(),
                    },
                    next_at: time("next_at", s.next_at)?.unwrap_or(Timestamp::EPOCH),
                    last_fired_at: time("last_fired_at", s.last_fired_at)?,
                    created_at: time("created_at", s.created_at)?.unwrap_or(Timestamp::EPOCH),
                    updated_at: time("updated_at", s.updated_at)?.unwrap_or(Timestamp::EPOCH),
                })
            })
            .collect()
    }

    /// Registers schedule `name`, or changes it.
    async fn put_schedule(
        &self,
        name: &str,
        args: PutArgs,
        registry: Option<&Registry>,
    ) -> anyhow::Result<Upserted> {
        let store = match self {
            Place::Database(store) => store,
            Place::Server(remote) => {
                let put = remote
                    .schedules()
                    .put_schedule(proto::PutScheduleRequest {
                        name: name.to_string(),
                        cron: args.cron,
                        timezone: args.tz,
                        backfill: args.missed.backfill(),
                        activity: args.activity,
                        input: Some(crate::service::convert::payload_out(&json_payload(
                            "input",
                            &args.input,
                        )?)),
                        queue: args.queue.unwrap_or_default(),
                        priority: args.priority,
                    })
                    .await
                    .map_err(place::api)?
                    .into_inner();
                return Ok(match put.outcome.as_str() {
                    "created" => Upserted::Created,
                    "updated" => Upserted::Updated,
                    _ => Upserted::Unchanged,
                });
            }
        };
        let PutArgs {
            cron,
            tz,
            activity,
            input,
            queue,
            priority,
            missed,
        } = args;
        {
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
            Client::new(Arc::clone(store))
                .schedule_job(name, &schedule, &task)
                .await
                .with_context(|| format!("registering schedule `{name}`"))
        }
    }

    /// Removes schedule `name`; `false` if there is none.
    async fn remove_schedule(&self, name: &str) -> anyhow::Result<bool> {
        match self {
            Place::Database(store) => Ok(Client::new(Arc::clone(store)).unschedule(name).await?),
            Place::Server(remote) => {
                match remote
                    .schedules()
                    .delete_schedule(proto::DeleteScheduleRequest {
                        name: name.to_string(),
                    })
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
                    Err(status) => Err(place::api(status)),
                }
            }
        }
    }
}

fn job_of(record: &ScheduleRecord) -> Option<JobTask> {
    match TaskPayload::from_bytes(&record.spec.payload) {
        Ok(TaskPayload::Job(job)) => Some(job),
        _ => None,
    }
}

/// What `quark schedule add|remove` did.
#[derive(Debug, Serialize)]
struct ScheduleChanged {
    name: String,
    /// `created`, `updated`, `unchanged` or `removed`.
    outcome: &'static str,
    /// The schedule as it stands, unless removed.
    #[serde(rename = "schedule", skip_serializing_if = "Option::is_none")]
    view: Option<ScheduleView>,
}

/// A schedule, as listed.
#[derive(Debug, Serialize)]
struct ScheduleView {
    name: String,
    cron: String,
    timezone: String,
    missed: String,
    activity: Option<String>,
    input: Option<serde_json::Value>,
    queue: String,
    priority: i32,
    /// `null` when the expression has no tick left.
    #[serde(serialize_with = "rfc3339")]
    next_at: Timestamp,
    #[serde(serialize_with = "rfc3339_opt")]
    last_fired_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    updated_at: Timestamp,
}

impl From<&ScheduleRecord> for ScheduleView {
    fn from(s: &ScheduleRecord) -> Self {
        let job = job_of(s);
        ScheduleView {
            name: s.spec.name.clone(),
            cron: s.spec.cron.clone(),
            timezone: s.spec.timezone.clone(),
            missed: s.spec.missed.to_string(),
            activity: job.as_ref().map(|j| j.activity.clone()),
            input: job.as_ref().and_then(|j| j.input.decode().ok()),
            queue: s.spec.queue.clone(),
            priority: s.spec.priority,
            next_at: s.next_at,
            last_fired_at: s.last_fired_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}
