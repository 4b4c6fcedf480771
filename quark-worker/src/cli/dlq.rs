//! `quark dlq ...`: the dead-letter list and re-drive, on the database or through a server.

use std::io::Write;

use anyhow::Context;
use quark_history::{DeadTask, TaskKind};
use serde::Serialize;

use super::DlqCommand;
use super::output::{self, Output, rfc3339, table, write_table};
use super::place::{self, Place};
use crate::service::proto;

/// A dead task, as listed.
#[derive(Serialize)]
struct DeadRow {
    task_id: i64,
    kind: &'static str,
    queue: String,
    instance_id: Option<String>,
    attempts: u32,
    error: String,
    #[serde(serialize_with = "rfc3339")]
    died_at: quark_history::Timestamp,
}

/// A task put back on its queue.
#[derive(Debug, Serialize)]
struct Redriven {
    task_id: i64,
}

pub(super) async fn run(
    place: Place<'_>,
    cmd: DlqCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { queue, limit } => {
            let dead: Vec<DeadRow> = place
                .list_dead(queue, limit)
                .await?
                .into_iter()
                .map(|d| DeadRow {
                    task_id: d.task_id,
                    kind: d.kind.as_str(),
                    queue: d.queue,
                    instance_id: d.instance_id,
                    attempts: d.attempts,
                    error: d.error,
                    died_at: d.died_at,
                })
                .collect();
            output::rows(out, output, &dead, |out, dead| {
                let mut t = table(["task", "kind", "queue", "attempts", "died at", "error"]);
                for d in dead {
                    t.add_row([
                        d.task_id.to_string(),
                        d.kind.to_string(),
                        d.queue.clone(),
                        d.attempts.to_string(),
                        d.died_at.to_string(),
                        d.error.clone(),
                    ]);
                }
                write_table(out, &t)
            })
        }
        DlqCommand::Retry { task_ids } => {
            let mut done = Vec::new();
            for id in task_ids {
                place
                    .redrive(id)
                    .await
                    .with_context(|| format!("re-driving task {id}"))?;
                done.push(Redriven { task_id: id });
            }
            output::rows(out, output, &done, |out, done| {
                for d in done {
                    writeln!(out, "task {} is back on its queue", d.task_id)?;
                }
                Ok(())
            })
        }
    }
}

impl Place<'_> {
    /// Up to `limit` dead tasks (of `queue`), oldest first.
    async fn list_dead(&self, queue: Option<String>, limit: u32) -> anyhow::Result<Vec<DeadTask>> {
        match self {
            Place::Database(store) => Ok(store.list_dead(queue.as_deref(), limit).await?),
            Place::Server(remote) => {
                let listed = remote
                    .queues()
                    .list_dead_letters(proto::ListDeadLettersRequest {
                        queue: queue.unwrap_or_default(),
                        page_size: limit,
                    })
                    .await
                    .map_err(place::api)?
                    .into_inner();
                listed
                    .dead_letters
                    .into_iter()
                    .map(|d| {
                        Ok(DeadTask {
                            task_id: d.task_id,
                            kind: d.kind.parse::<TaskKind>().map_err(anyhow::Error::msg)?,
                            queue: d.queue,
                            instance_id: (!d.instance_id.is_empty()).then_some(d.instance_id),
                            attempts: d.attempts,
                            error: d.error,
                            died_at: d
                                .died_at
                                .map(|t| crate::service::convert::time_in("died_at", t))
                                .transpose()
                                .map_err(place::api)?
                                .unwrap_or(quark_history::Timestamp::EPOCH),
                            payload: Vec::new(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// Puts dead task `id` back on its queue.
    async fn redrive(&self, id: i64) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(store.redrive(id).await?),
            Place::Server(remote) => {
                let results = remote
                    .queues()
                    .redrive_dead_letters(proto::RedriveDeadLettersRequest { task_ids: vec![id] })
                    .await
                    .map_err(place::api)?
                    .into_inner()
                    .results;
                match results.first() {
                    Some(r) if r.redriven => Ok(()),
                    Some(r) => anyhow::bail!("{}", r.error),
                    None => anyhow::bail!("the API answered nothing for task {id}"),
                }
            }
        }
    }
}
