//! `quark audit trace ID`: who caused what. Follows causation and correlation ids through the
//! journal: from a workflow instance to the entity events its steps caused, from a command or
//! message id to the events it caused, and on to what those caused in turn.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use clap::Subcommand;
use quark_history::{GlobalPosition, HistoryEvent, Store, Timestamp};
use serde::Serialize;

use super::events::Range;
use super::output::{self, Output, rfc3339, table, write_table};

/// `quark audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The chain of events an id caused, in the global commit order: the id may be a workflow
    /// instance (its steps cause the entity events of its calls), a causation id (a command or
    /// message id) or a correlation id (a conversation). Each event found adds its own id
    /// (`stream/version`) and, for a workflow, its instance id, as causes to follow.
    Trace {
        /// The id to start from.
        id: String,
        /// The range of the global order to search.
        #[command(flatten)]
        range: Range,
    },
}

#[derive(Debug, Serialize)]
struct Link {
    position: String,
    instance_id: String,
    seq: u64,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: Timestamp,
    kind: String,
    causation: Option<String>,
    correlation: Option<String>,
    /// Why it is in the chain: the id it was reached through.
    via: String,
}

/// Whether `causation` names `cause` or one of its steps (`cause/n`).
fn caused_by(causation: &str, cause: &str) -> bool {
    causation == cause
        || causation
            .strip_prefix(cause)
            .is_some_and(|rest| rest.starts_with('/'))
}

const PAGE: u32 = 1000;

pub(super) async fn run(
    store: &Arc<dyn Store>,
    command: AuditCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let AuditCommand::Trace { id, range } = command;
    // The ids followed so far; the global order is commit order, so an effect comes after its
    // cause and one pass finds the whole chain.
    let mut causes: BTreeSet<String> = BTreeSet::from([id.clone()]);
    let mut chain = Vec::new();
    quark_history::scan_range(
        store.as_ref(),
        range.after.unwrap_or(GlobalPosition::START),
        range.until,
        PAGE,
        |e| -> anyhow::Result<()> {
            let r = &e.event;
            let (kind, causation, correlation) = match &r.event {
                HistoryEvent::EntityEvent {
                    event_type,
                    causation,
                    correlation,
                    ..
                } => (event_type.clone(), causation.clone(), correlation.clone()),
                other => (other.kind().to_string(), None, None),
            };
            let via = if causes.contains(&r.instance_id) {
                Some(r.instance_id.clone())
            } else {
                causes
                    .iter()
                    .find(|c| {
                        causation.as_deref().is_some_and(|x| caused_by(x, c))
                            || correlation.as_deref() == Some(c.as_str())
                    })
                    .cloned()
            };
            let Some(via) = via else { return Ok(()) };
            causes.insert(format!("{}/{}", r.instance_id, r.seq));
            // A workflow reached through a cause: its own steps cause more.
            if !matches!(r.event, HistoryEvent::EntityEvent { .. }) {
                causes.insert(r.instance_id.clone());
            }
            chain.push(Link {
                position: e.position.to_string(),
                instance_id: r.instance_id.clone(),
                seq: r.seq,
                recorded_at: r.recorded_at,
                kind,
                causation,
                correlation,
                via,
            });
            Ok(())
        },
    )
    .await?;
    output::rows(out, output, &chain, |out, chain| {
        let mut t = table(["position", "instance", "seq", "kind", "caused by", "via"]);
        for l in chain {
            t.add_row([
                l.position.clone(),
                l.instance_id.clone(),
                l.seq.to_string(),
                l.kind.clone(),
                l.causation.clone().unwrap_or_default(),
                l.via.clone(),
            ]);
        }
        write_table(out, &t)
    })
}

#[cfg(test)]
mod tests {
    use super::caused_by;

    #[test]
    fn a_cause_names_itself_and_its_steps_only() {
        assert!(caused_by("order-1", "order-1"));
        assert!(caused_by("order-1/3", "order-1"));
        assert!(!caused_by("order-10/3", "order-1"));
        assert!(!caused_by("order", "order-1"));
    }
}
