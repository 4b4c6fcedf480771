//! `quark events ...`: the journal's events across instances, in the global commit order.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use quark_history::{GlobalEvent, GlobalPosition, HistoryEvent, Store, Timestamp};
use serde::Serialize;

use super::output::rfc3339;

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
    },
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
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let EventsCommand::Export { range, out: file } = command;
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
