//! `quark entity ...`: an entity's stream, its state now or at a past version or time, and what
//! changed between two versions. The state needs the entity's code (a binary built on
//! `quark_worker::cli::main_with` with the entity registered); without it the events are shown as
//! stored.

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;
use quark_history::{HistoryEvent, HistoryRange, InstanceStatus, Store, Timestamp};
use quark_workflow::Registry;
use quark_workflow::entity::At;
use serde::Serialize;

use super::events::parse_time;
use super::output::{self, Output, rfc3339, table, write_table};

/// `quark entity ...`
#[derive(Debug, Subcommand)]
pub enum EntityCommand {
    /// An entity's version, its events and (with the entity's code linked in) its state, now or
    /// at a past version or time.
    Show {
        /// The entity type (`Account`).
        entity_type: String,
        /// The key (`alice`).
        key: String,
        /// As it was after this many events.
        #[arg(long, conflicts_with = "at_time")]
        at: Option<u64>,
        /// As it was at this time (RFC 3339, e.g. `2026-12-04T10:00:00Z`).
        #[arg(long)]
        at_time: Option<String>,
    },
    /// The events between two versions of an entity, and (with its code linked in) its state at
    /// both ends.
    Diff {
        /// The entity type.
        entity_type: String,
        /// The key.
        key: String,
        /// The earlier version.
        from: u64,
        /// The later version.
        to: u64,
    },
}

/// An event of a stream, as shown.
#[derive(Debug, Serialize)]
struct EventRow {
    version: u64,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: Timestamp,
    event_type: String,
    /// The event as stored (personal fields sealed).
    data: serde_json::Value,
    causation: Option<String>,
    correlation: Option<String>,
}

#[derive(Debug, Serialize)]
struct Shown {
    stream: String,
    entity_type: String,
    /// How many events the stream holds now.
    version: u64,
    /// The version shown.
    at: u64,
    /// The state at `at`, if the entity's code is linked in.
    state: Option<serde_json::Value>,
    events: Vec<EventRow>,
}

#[derive(Debug, Serialize)]
struct Diffed {
    stream: String,
    from: u64,
    to: u64,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    events: Vec<EventRow>,
}

fn data_json(data: &quark_history::Payload) -> serde_json::Value {
    data.decode::<serde_json::Value>().unwrap_or_else(|_| {
        serde_json::Value::String(format!(
            "({:?}, {} bytes)",
            data.codec(),
            data.as_bytes().len()
        ))
    })
}

/// The stream's events with versions in `(after, until]`, as shown.
async fn events(
    store: &Arc<dyn Store>,
    stream: &str,
    after: u64,
    until: u64,
) -> anyhow::Result<Vec<EventRow>> {
    let range = HistoryRange::Seq {
        from: after + 1,
        until: until.saturating_add(1),
    };
    Ok(store
        .read_history(stream, range)
        .await?
        .into_iter()
        .filter_map(|e| match e.event {
            HistoryEvent::EntityEvent {
                event_type,
                data,
                causation,
                correlation,
            } => Some(EventRow {
                version: e.seq,
                recorded_at: e.recorded_at,
                event_type,
                data: data_json(&data),
                causation,
                correlation,
            }),
            _ => None,
        })
        .collect())
}

/// The stream's current version, refusing an id that is not a stream of `entity_type`.
async fn version(store: &Arc<dyn Store>, stream: &str, entity_type: &str) -> anyhow::Result<u64> {
    let Some(record) = store.get_instance(stream).await? else {
        bail!("no entity `{stream}`: nothing was ever appended to it");
    };
    if record.status != InstanceStatus::Stream || record.instance_type != entity_type {
        bail!(
            "`{stream}` is not a stream of entity type `{entity_type}` (it is a {} {})",
            record.instance_type,
            record.status
        );
    }
    Ok(record.history_len)
}

async fn state(
    store: &Arc<dyn Store>,
    registry: Option<&Registry>,
    entity_type: &str,
    key: &str,
    at: u64,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(read) = registry
        .and_then(|r| r.read_entity(entity_type, Arc::clone(store), key, Some(At::Version(at))))
    else {
        return Ok(None);
    };
    let (state, _) = read.await.map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(state))
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    command: EntityCommand,
    registry: Option<&Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match command {
        EntityCommand::Show {
            entity_type,
            key,
            at,
            at_time,
        } => {
            let stream = format!("{entity_type}/{key}");
            let now = version(store, &stream, &entity_type).await?;
            let at = match (at, at_time) {
                (Some(v), _) if v > now => {
                    bail!("`{stream}` has {now} events: there is no version {v}")
                }
                (Some(v), _) => v,
                (None, Some(t)) => {
                    let t = parse_time(&t)?;
                    let until = Timestamp::from_micros(t.as_micros().saturating_add(1));
                    let upto = store
                        .read_history(
                            &stream,
                            HistoryRange::Time {
                                from: Timestamp::from_micros(i64::MIN),
                                until,
                            },
                        )
                        .await?;
                    upto.last().map_or(0, |e| e.seq)
                }
                (None, None) => now,
            };
            let state = state(store, registry, &entity_type, &key, at).await?;
            let shown = Shown {
                events: events(store, &stream, 0, at).await?,
                stream,
                entity_type,
                version: now,
                at,
                state,
            };
            output::one(out, output, &shown, |out, s| {
                writeln!(out, "{}  version {} of {}", s.stream, s.at, s.version)?;
                match &s.state {
                    Some(state) => {
                        writeln!(out, "state: {}", serde_json::to_string_pretty(state)?)?
                    }
                    None => writeln!(out, "(the entity's code is not linked in: events only)")?,
                }
                write_events(out, &s.events)
            })?;
        }
        EntityCommand::Diff {
            entity_type,
            key,
            from,
            to,
        } => {
            let stream = format!("{entity_type}/{key}");
            let now = version(store, &stream, &entity_type).await?;
            if from > to || to > now {
                bail!("versions must run forward within the stream's {now} events: {from}..{to}");
            }
            let diffed = Diffed {
                before: state(store, registry, &entity_type, &key, from).await?,
                after: state(store, registry, &entity_type, &key, to).await?,
                events: events(store, &stream, from, to).await?,
                stream,
                from,
                to,
            };
            output::one(out, output, &diffed, |out, d| {
                writeln!(out, "{}  versions {} to {}", d.stream, d.from, d.to)?;
                if let (Some(before), Some(after)) = (&d.before, &d.after) {
                    writeln!(out, "before: {before}")?;
                    writeln!(out, "after:  {after}")?;
                }
                write_events(out, &d.events)
            })?;
        }
    }
    Ok(())
}

fn write_events(out: &mut dyn Write, events: &[EventRow]) -> anyhow::Result<()> {
    let mut t = table(["version", "recorded at", "type", "data", "caused by"]);
    for e in events {
        t.add_row([
            e.version.to_string(),
            e.recorded_at.to_string(),
            e.event_type.clone(),
            e.data.to_string(),
            e.causation.clone().unwrap_or_default(),
        ]);
    }
    write_table(out, &t)
}
