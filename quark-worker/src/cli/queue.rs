//! `quark queue ...`: queue statistics and controls from the command line.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::RateLimit;
use serde::Serialize;

use super::duration;
use super::output::{self, Output};
use super::place::{self, Place};
use crate::service::proto;

/// `quark queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts of tasks on a queue, and its controls.
    Stats {
        /// The queue.
        queue: String,
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
        /// The interval (`1s`, `500ms`, `1m`).
        #[arg(long, default_value = "1s", value_parser = duration::parse)]
        per: Duration,
        /// Removes the limit.
        #[arg(long, conflicts_with = "limit")]
        clear: bool,
    },
}

/// A queue's counts and controls.
#[derive(Debug, Serialize)]
struct QueueView {
    queue: String,
    pending: u64,
    leased: u64,
    held: u64,
    dead: u64,
    paused: bool,
    rate_limit: Option<RateLimitView>,
}

/// A rate limit: `limit` tasks per `per` (a duration as `1s`, `500ms`).
#[derive(Debug, Serialize)]
struct RateLimitView {
    limit: u32,
    per: String,
}

pub(super) async fn run(
    place: Place<'_>,
    cmd: QueueCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let (queue, paused, rate_limit) = match cmd {
        QueueCommand::Stats { queue } => {
            let view = place.queue(queue).await?;
            return output::one(out, output, &view, |out, q| {
                writeln!(
                    out,
                    "{}: {} pending, {} leased, {} held, {} dead{}{}",
                    q.queue,
                    q.pending,
                    q.leased,
                    q.held,
                    q.dead,
                    if q.paused { "; PAUSED" } else { "" },
                    q.rate_limit
                        .as_ref()
                        .map(|l| format!("; rate limit {} per {}", l.limit, l.per))
                        .unwrap_or_default()
                )?;
                Ok(())
            });
        }
        QueueCommand::Pause { queue } => {
            place.set_paused(&queue, true).await?;
            (queue, Some(true), None)
        }
        QueueCommand::Resume { queue } => {
            place.set_paused(&queue, false).await?;
            (queue, Some(false), None)
        }
        QueueCommand::RateLimit {
            queue,
            limit,
            per,
            clear,
        } => {
            if clear {
                place.set_rate_limit(&queue, None).await?;
                (queue, None, Some(None))
            } else {
                let limit = limit.context("--limit is required")?;
                if per.is_zero() {
                    bail!("--per must be longer than zero, e.g. 1s");
                }
                place
                    .set_rate_limit(
                        &queue,
                        Some(RateLimit {
                            limit,
                            interval: per,
                        }),
                    )
                    .await?;
                let per = duration::show(per);
                (queue, None, Some(Some(RateLimitView { limit, per })))
            }
        }
    };
    /// What a command that changes a queue did.
    #[derive(Debug, Serialize)]
    struct QueueChanged {
        queue: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        paused: Option<bool>,
        /// Present when the command set the limit; `null` when it cleared it.
        #[serde(skip_serializing_if = "Option::is_none")]
        rate_limit: Option<Option<RateLimitView>>,
    }
    let changed = QueueChanged {
        queue,
        paused,
        rate_limit,
    };
    output::one(out, output, &changed, |out, c| {
        let q = &c.queue;
        match (&c.paused, &c.rate_limit) {
            (Some(true), _) => writeln!(out, "queue {q} paused")?,
            (Some(false), _) => writeln!(out, "queue {q} resumed")?,
            (None, Some(Some(l))) => writeln!(out, "queue {q}: at most {} per {}", l.limit, l.per)?,
            _ => writeln!(out, "queue {q}: no rate limit")?,
        }
        Ok(())
    })
}

impl Place<'_> {
    /// `queue`'s counts and controls.
    async fn queue(&self, queue: String) -> anyhow::Result<QueueView> {
        match self {
            Place::Database(store) => {
                let stats = store.queue_stats(&queue).await?;
                let settings = store.queue_settings(&queue).await?;
                Ok(QueueView {
                    queue,
                    pending: stats.pending,
                    leased: stats.leased,
                    held: stats.held,
                    dead: stats.dead,
                    paused: stats.paused,
                    rate_limit: settings.rate_limit.map(|l| RateLimitView {
                        limit: l.limit,
                        per: duration::show(l.interval),
                    }),
                })
            }
            Place::Server(remote) => {
                let q = remote
                    .queues()
                    .get_queue(proto::GetQueueRequest { queue })
                    .await
                    .map_err(place::api)?
                    .into_inner()
                    .queue
                    .context("the API answered no queue")?;
                let rate_limit = match q.rate_limit {
                    Some(l) => Some(RateLimitView {
                        limit: l.limit,
                        per: duration::show(
                            crate::service::convert::duration_in(
                                "rate_limit.per",
                                l.per.unwrap_or_default(),
                            )
                            .map_err(place::api)?,
                        ),
                    }),
                    None => None,
                };
                Ok(QueueView {
                    queue: q.name,
                    pending: q.pending,
                    leased: q.leased,
                    held: q.held,
                    dead: q.dead,
                    paused: q.paused,
                    rate_limit,
                })
            }
        }
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(store.set_queue_paused(queue, paused).await?),
            Place::Server(remote) => {
                let queue = queue.to_string();
                let mut queues = remote.queues();
                if paused {
                    queues.pause_queue(proto::PauseQueueRequest { queue }).await
                } else {
                    queues
                        .resume_queue(proto::ResumeQueueRequest { queue })
                        .await
                        .map(|_| tonic::Response::new(proto::PauseQueueResponse {}))
                }
                .map_err(place::api)?;
                Ok(())
            }
        }
    }

    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> anyhow::Result<()> {
        match self {
            Place::Database(store) => Ok(store.set_rate_limit(queue, limit).await?),
            Place::Server(remote) => {
                remote
                    .queues()
                    .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
                        queue: queue.to_string(),
                        rate_limit: limit.map(|l| proto::QueueRateLimit {
                            limit: l.limit,
                            per: Some(crate::service::convert::duration_out(l.interval)),
                        }),
                    })
                    .await
                    .map_err(place::api)?;
                Ok(())
            }
        }
    }
}
