//! `quark outbox ...`: the transactional outbox from the command line.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use quark_history::{Destination, MessageState, OutboxFilter, OutboxMessage, OutboxRecord, Store};

use super::{Output, OutputArg};

/// `quark outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Lists outbox messages, newest first.
    List {
        /// Only this state: pending, sent or dead.
        #[arg(long)]
        state: Option<String>,
        /// Only this ordering key.
        #[arg(long)]
        key: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Puts dead messages back in line, due now, with fresh attempts.
    Retry {
        /// The message ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Writes a message to the outbox (for operators and scripts; applications write messages in
    /// their own transactions).
    Send {
        /// `signal:<instance>/<name>`, `http:<url>`, `nats:<subject>` or `callback:<name>`.
        destination: String,
        /// The payload, as JSON.
        payload: String,
        /// The ordering key (default: the destination).
        #[arg(long)]
        key: Option<String>,
        /// The idempotency key (default: a new UUID v7).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn record_json(m: &OutboxRecord) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "destination": m.destination.to_string(),
        "ordering_key": m.ordering_key,
        "idempotency_key": m.idempotency_key,
        "state": m.state.as_str(),
        "attempts": m.attempts,
        "next_attempt_at": m.next_attempt_at.to_string(),
        "created_at": m.created_at.to_string(),
        "sent_at": m.sent_at.map(|t| t.to_string()),
        "last_error": m.last_error,
        "headers": m.headers,
        "payload": String::from_utf8_lossy(&m.payload),
    })
}

pub(super) async fn outbox(
    store: &Arc<dyn Store>,
    cmd: OutboxCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List {
            state,
            key,
            limit,
            output,
        } => {
            let state = state.map(|s| s.parse::<MessageState>()).transpose()?;
            let messages = store
                .list_outbox(OutboxFilter {
                    state,
                    ordering_key: key,
                    limit,
                })
                .await?;
            if output.output == Output::Json {
                let rows: Vec<_> = messages.iter().map(record_json).collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<7}  {:>8}  {:<40}  {:<27}  error",
                    "id", "state", "attempts", "destination", "created"
                )?;
                for m in &messages {
                    writeln!(
                        out,
                        "{:>8}  {:<7}  {:>8}  {:<40}  {:<27}  {}",
                        m.id,
                        m.state,
                        m.attempts,
                        m.destination.to_string(),
                        m.created_at.to_string(),
                        m.last_error.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        OutboxCommand::Retry { ids } => {
            for id in ids {
                store
                    .redrive_message(id)
                    .await
                    .with_context(|| format!("re-driving outbox message {id}"))?;
                writeln!(out, "outbox message {id} is back in line")?;
            }
        }
        OutboxCommand::Send {
            destination,
            payload,
            key,
            idempotency_key,
        } => {
            let destination: Destination = destination.parse()?;
            let value: serde_json::Value =
                serde_json::from_str(&payload).context("the payload is not valid JSON")?;
            let mut message = OutboxMessage::json(destination, &value)?;
            message.ordering_key = key;
            message.idempotency_key = idempotency_key;
            let ids = store.send(vec![message]).await?;
            writeln!(out, "outbox message {} written", ids[0])?;
        }
    }
    Ok(())
}
