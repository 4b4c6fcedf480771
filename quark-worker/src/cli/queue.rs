//! `quark queue ...`: queue statistics and controls from the command line.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::{RateLimit, Store};
use serde::Serialize;

use super::duration;
use super::output::{self, Output};

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
    store: &Arc<dyn Store>,
    cmd: QueueCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let (queue, paused, rate_limit) = match cmd {
        QueueCommand::Stats { queue } => {
            let stats = store.queue_stats(&queue).await?;
            let settings = store.queue_settings(&queue).await?;
            let view = QueueView {
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
            };
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
            store.set_queue_paused(&queue, true).await?;
            (queue, Some(true), None)
        }
        QueueCommand::Resume { queue } => {
            store.set_queue_paused(&queue, false).await?;
            (queue, Some(false), None)
        }
        QueueCommand::RateLimit {
            queue,
            limit,
            per,
            clear,
        } => {
            if clear {
                store.set_rate_limit(&queue, None).await?;
                (queue, None, Some(None))
            } else {
                let limit = limit.context("--limit is required")?;
                if per.is_zero() {
                    bail!("--per must be longer than zero, e.g. 1s");
                }
                store
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
