//! `quark events ...`: the journal's events across instances, in the global commit order.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use quark_history::{GlobalEvent, GlobalPosition, HistoryEvent, HistoryRange, Store, Timestamp};
use serde::Serialize;

use super::output::{self, Output, rfc3339, table, write_table};

/// `quark events ...`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Writes the events of every instance in the global commit order as NDJSON, one event a line
    /// with its position: for archives, audits and other tools. Only final events are written (on
    /// PostgreSQL, events of transactions still running anywhere come later), so an export resumed
    /// `--after` the last line's position misses nothing.
    Export {
        /// The range.
        #[command(flatten)]
        range: Range,
        /// Write to this file (created; never overwritten) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only the events that match.
        #[command(flatten)]
        filter: Filter,
    },
    /// Lists the events that match, in the global commit order (a stream's in its own order).
    Query {
        /// The range.
        #[command(flatten)]
        range: Range,
        /// Only the events that match.
        #[command(flatten)]
        filter: Filter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Applies events again through the code linked into this binary, with progress: the global
    /// order from a position or a time into a projection (`--into NAME`), or one entity stream
    /// from a version or a time (`--stream TYPE/KEY`, showing the state after each event).
    /// `--dry-run` writes nothing.
    Replay(super::replay::ReplayArgs),
}

/// Which events `quark events query` and `export` keep.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this instance's or entity stream's events (`Account/alice`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only events of this kind (`ActivityCompleted`) or entity event type (`Deposited`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only entity events in this conversation.
    #[arg(long)]
    pub correlation: Option<String>,
    /// Only entity events with this cause.
    #[arg(long)]
    pub causation: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Only events recorded before this time (RFC 3339).
    #[arg(long)]
    pub until_time: Option<String>,
}

/// A [`Filter`] with its times parsed.
struct Matcher {
    filter: Filter,
    from: Option<Timestamp>,
    until: Option<Timestamp>,
}

pub(super) fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("`{s}` is not an RFC 3339 time (e.g. 2026-12-04T10:00:00Z)"))?;
    Ok(Timestamp::from_micros(t.timestamp_micros()))
}

impl Matcher {
    fn new(filter: Filter) -> anyhow::Result<Self> {
        Ok(Matcher {
            from: filter.from.as_deref().map(parse_time).transpose()?,
            until: filter.until_time.as_deref().map(parse_time).transpose()?,
            filter,
        })
    }

    fn matches(&self, e: &quark_history::RecordedEvent) -> bool {
        let f = &self.filter;
        let (event_type, causation, correlation) = match &e.event {
            HistoryEvent::EntityEvent {
                event_type,
                causation,
                correlation,
                ..
            } => (
                Some(event_type.as_str()),
                causation.as_deref(),
                correlation.as_deref(),
            ),
            _ => (None, None, None),
        };
        f.stream.as_ref().is_none_or(|s| *s == e.instance_id)
            && f.event_type
                .as_ref()
                .is_none_or(|t| t == e.event.kind() || Some(t.as_str()) == event_type)
            && f.correlation
                .as_ref()
                .is_none_or(|c| Some(c.as_str()) == correlation)
            && f.causation
                .as_ref()
                .is_none_or(|c| Some(c.as_str()) == causation)
            && self.from.is_none_or(|t| e.recorded_at >= t)
            && self.until.is_none_or(|t| e.recorded_at < t)
    }
}

/// A range of the global order, as `quark events export` and `quark checkpoint create` take it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Range {
    /// Start after this position (`tx:position`, as an exported line or a checkpoint's `until`
    /// gives it; default: the beginning).
    #[arg(long)]
    pub after: Option<GlobalPosition>,
    /// Stop at this position, included (default: the last event final now).
    #[arg(long)]
    pub until: Option<GlobalPosition>,
}

/// One exported line.
#[derive(Serialize)]
struct Line<'a> {
    /// `tx:position`, to resume after.
    position: String,
    instance_id: &'a str,
    seq: u64,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: Timestamp,
    kind: &'static str,
    event: &'a HistoryEvent,
    hash: &'a str,
}

impl<'a> From<&'a GlobalEvent> for Line<'a> {
    fn from(e: &'a GlobalEvent) -> Self {
        Line {
            position: e.position.to_string(),
            instance_id: &e.event.instance_id,
            seq: e.event.seq,
            recorded_at: e.event.recorded_at,
            kind: e.event.event.kind(),
            event: &e.event.event,
            hash: &e.event.hash,
        }
    }
}

/// Events read from the store at a time.
const PAGE: u32 = 1000;

pub(super) async fn run(
    store: &Arc<dyn Store>,
    command: EventsCommand,
    registry: Option<&quark_workflow::Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let (range, file, filter) = match command {
        EventsCommand::Replay(args) => {
            return super::replay::replay(store, registry, args, output, out).await;
        }
        EventsCommand::Export {
            range,
            out: file,
            filter,
        } => (range, file, filter),
        EventsCommand::Query {
            range,
            filter,
            limit,
        } => return query(store, range, Matcher::new(filter)?, limit, output, out).await,
    };
    let matcher = Matcher::new(filter)?;
    let mut file_out = match &file {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let sink: &mut (dyn Write + Send) = match &mut file_out {
        Some(f) => f,
        None => out,
    };
    let progress = indicatif::ProgressBar::no_length().with_style(
        indicatif::ProgressStyle::with_template("{spinner} exported {pos} events ({per_sec})")
            .expect("a valid template"),
    );
    quark_history::scan_range(
        store.as_ref(),
        range.after.unwrap_or(GlobalPosition::START),
        range.until,
        PAGE,
        |e| -> anyhow::Result<()> {
            if !matcher.matches(&e.event) {
                return Ok(());
            }
            serde_json::to_writer(&mut *sink, &Line::from(e))?;
            sink.write_all(b"\n").context("writing the export")?;
            progress.inc(1);
            Ok(())
        },
    )
    .await?;
    sink.flush()?;
    if let Some(f) = file_out {
        f.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .context("writing the export")?;
    }
    progress.finish_and_clear();
    Ok(())
}

/// An event as `quark events query` lists it.
#[derive(Serialize)]
struct Found {
    /// `tx:position` (`-` for a stream read in its own order).
    position: String,
    instance_id: String,
    seq: u64,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: Timestamp,
    kind: String,
    causation: Option<String>,
    correlation: Option<String>,
    event: HistoryEvent,
}

fn found(position: String, e: &quark_history::RecordedEvent) -> Found {
    let (kind, causation, correlation) = match &e.event {
        HistoryEvent::EntityEvent {
            event_type,
            causation,
            correlation,
            ..
        } => (event_type.clone(), causation.clone(), correlation.clone()),
        other => (other.kind().to_string(), None, None),
    };
    Found {
        position,
        instance_id: e.instance_id.clone(),
        seq: e.seq,
        recorded_at: e.recorded_at,
        kind,
        causation,
        correlation,
        event: e.event.clone(),
    }
}

async fn query(
    store: &Arc<dyn Store>,
    range: Range,
    matcher: Matcher,
    limit: usize,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    match (&matcher.filter.stream, range.after, range.until) {
        // One stream, no range of the global order: read it by its key, not by a scan.
        (Some(stream), None, None) => {
            for e in store.read_history(stream, HistoryRange::All).await? {
                if rows.len() < limit && matcher.matches(&e) {
                    rows.push(found("-".into(), &e));
                }
            }
        }
        _ => {
            quark_history::scan_range(
                store.as_ref(),
                range.after.unwrap_or(GlobalPosition::START),
                range.until,
                PAGE,
                |e| -> anyhow::Result<()> {
                    if rows.len() < limit && matcher.matches(&e.event) {
                        rows.push(found(e.position.to_string(), &e.event));
                    }
                    Ok(())
                },
            )
            .await?;
        }
    }
    output::rows(out, output, &rows, |out, rows| {
        let mut t = table([
            "position",
            "instance",
            "seq",
            "recorded at",
            "kind",
            "caused by",
        ]);
        for r in rows {
            t.add_row([
                r.position.clone(),
                r.instance_id.clone(),
                r.seq.to_string(),
                r.recorded_at.to_string(),
                r.kind.clone(),
                r.causation.clone().unwrap_or_default(),
            ]);
        }
        write_table(out, &t)
    })
}
