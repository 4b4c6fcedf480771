//! `quark outbox ...`: the transactional outbox from the command line.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use quark_history::{Destination, MessageState, OutboxFilter, OutboxMessage, OutboxRecord, Store};

use quark_history::Timestamp;
use serde::Serialize;

use super::output::{self, Output, rfc3339, rfc3339_opt, table, write_table};

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

/// A message, as listed.
#[derive(Debug, Serialize)]
struct MessageView {
    id: i64,
    destination: String,
    ordering_key: String,
    idempotency_key: String,
    state: &'static str,
    attempts: u32,
    #[serde(serialize_with = "rfc3339")]
    next_attempt_at: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339_opt")]
    sent_at: Option<Timestamp>,
    last_error: Option<String>,
    headers: std::collections::BTreeMap<String, String>,
    payload: String,
}

impl From<OutboxRecord> for MessageView {
    fn from(m: OutboxRecord) -> Self {
        MessageView {
            id: m.id,
            destination: m.destination.to_string(),
            ordering_key: m.ordering_key,
            idempotency_key: m.idempotency_key,
            state: m.state.as_str(),
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at,
            created_at: m.created_at,
            sent_at: m.sent_at,
            last_error: m.last_error,
            headers: m.headers,
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
        }
    }
}

/// A message a command wrote or put back in line.
#[derive(Debug, Serialize)]
struct MessageChanged {
    message_id: i64,
    /// `written` or `redriven`.
    action: &'static str,
}

pub(super) async fn outbox(
    store: &Arc<dyn Store>,
    cmd: OutboxCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::List { state, key, limit } => {
            let state = state.map(|s| s.parse::<MessageState>()).transpose()?;
            let messages: Vec<MessageView> = store
                .list_outbox(OutboxFilter {
                    state,
                    ordering_key: key,
                    limit,
                })
                .await?
                .into_iter()
                .map(MessageView::from)
                .collect();
            output::rows(out, output, &messages, |out, messages| {
                let mut t = table(["id", "state", "attempts", "destination", "created", "error"]);
                for m in messages {
                    t.add_row([
                        m.id.to_string(),
                        m.state.to_string(),
                        m.attempts.to_string(),
                        m.destination.clone(),
                        m.created_at.to_string(),
                        m.last_error.clone().unwrap_or_default(),
                    ]);
                }
                write_table(out, &t)
            })?;
        }
        OutboxCommand::Retry { ids } => {
            let mut done = Vec::new();
            for id in ids {
                store
                    .redrive_message(id)
                    .await
                    .with_context(|| format!("re-driving outbox message {id}"))?;
                done.push(MessageChanged {
                    message_id: id,
                    action: "redriven",
                });
            }
            output::rows(out, output, &done, |out, done| {
                for d in done {
                    writeln!(out, "outbox message {} is back in line", d.message_id)?;
                }
                Ok(())
            })?;
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
            if let Some(traceparent) = quark_workflow::trace_context::traceparent() {
                message.headers.insert(
                    quark_workflow::trace_context::TRACEPARENT.into(),
                    traceparent,
                );
            }
            let ids = store.send(vec![message]).await?;
            let written = MessageChanged {
                message_id: ids[0],
                action: "written",
            };
            output::one(out, output, &written, |out, w| {
                writeln!(out, "outbox message {} written", w.message_id)?;
                Ok(())
            })?;
        }
    }
    Ok(())
}
