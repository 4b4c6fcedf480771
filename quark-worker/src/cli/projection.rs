//! `quark projection ...`: the read models built from the global order, how far each has got,
//! and who is building it.

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;
use quark_history::{ProjectionRecord, Store, Timestamp};
use serde::Serialize;

use super::output::{self, Output, rfc3339, rfc3339_opt, table, write_table};

/// `quark projection ...`
#[derive(Debug, Subcommand)]
pub enum ProjectionCommand {
    /// Every projection version: state, checkpoint, events applied, lease holder.
    List,
    /// One projection's versions, each with how far behind it is: the next event it has not
    /// applied, how long that event has waited, and how many events it has not applied.
    Status {
        /// The projection's name.
        name: String,
    },
    /// Empties a projection's read model and builds it again from zero, with a progress bar,
    /// through its code linked into this binary (`Registry::projection` in a binary built on
    /// `quark_worker::cli::main_with`). Takes the projection's lease: stop the workers that run
    /// it first, or wait for their lease to run out.
    Rebuild {
        /// The projection's name.
        name: String,
    },
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    version: u32,
    state: String,
    checkpoint: String,
    applied: u64,
    #[serde(serialize_with = "rfc3339_opt")]
    last_event_at: Option<Timestamp>,
    lease_owner: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    updated_at: Timestamp,
    /// The next event not applied (`tx:position`), if one is final.
    next: Option<String>,
    /// How long that event has waited, in seconds.
    behind_seconds: Option<f64>,
    /// How many committed events it has not applied (counted up to a million).
    behind_events: Option<u64>,
}

fn row(r: ProjectionRecord) -> Row {
    Row {
        name: r.name,
        version: r.version,
        state: r.state.to_string(),
        checkpoint: r.checkpoint.to_string(),
        applied: r.applied,
        last_event_at: r.last_event_at,
        lease_owner: r.lease_owner,
        updated_at: r.updated_at,
        next: None,
        behind_seconds: None,
        behind_events: None,
    }
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    command: ProjectionCommand,
    registry: Option<&quark_workflow::Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let all = store.list_projections().await?;
    let rows: Vec<Row> = match command {
        ProjectionCommand::Rebuild { name } => {
            return super::replay::rebuild(store, registry, &name, output, out).await;
        }
        ProjectionCommand::List => all.into_iter().map(row).collect(),
        ProjectionCommand::Status { name } => {
            let mut rows = Vec::new();
            let now = store.config().clock.now();
            for r in all.into_iter().filter(|r| r.name == name) {
                let next = store.read_all(r.checkpoint, 1).await?.into_iter().next();
                let behind_events = store
                    .count_after(r.checkpoint, quark_workflow::projection::BEHIND_CAP)
                    .await?;
                let mut shown = row(r);
                shown.behind_events = Some(behind_events);
                if let Some(e) = next {
                    shown.next = Some(e.position.to_string());
                    shown.behind_seconds = Some(
                        (now.as_micros() - e.event.recorded_at.as_micros()).max(0) as f64 / 1e6,
                    );
                } else {
                    shown.behind_seconds = Some(0.0);
                }
                rows.push(shown);
            }
            if rows.is_empty() {
                bail!("no projection `{name}`: none has run against this database");
            }
            rows
        }
    };
    output::rows(out, output, &rows, |out, rows| {
        let mut t = table([
            "name",
            "version",
            "state",
            "checkpoint",
            "applied",
            "lease",
            "behind",
            "events behind",
        ]);
        for r in rows {
            t.add_row([
                r.name.clone(),
                r.version.to_string(),
                r.state.clone(),
                r.checkpoint.clone(),
                r.applied.to_string(),
                r.lease_owner.clone().unwrap_or_else(|| "-".into()),
                r.behind_seconds
                    .map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
                r.behind_events
                    .map_or_else(|| "-".into(), |n| n.to_string()),
            ]);
        }
        write_table(out, &t)
    })
}
