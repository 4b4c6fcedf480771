//! Sagas whose compensation never succeeded, found without a table of their own.
//!
//! A stuck saga fails its orchestration with a failure whose details carry a
//! [`StuckCompensation`] marker (see `quark_workflow::Saga`). The failed instances are listed
//! newest first through the `(status, created_at)` index, and for each only its closing event is
//! read (one or two rows by primary key), never its history: the cost is proportional to the
//! failed instances examined, bounded by the caller's `scan`, not to the size of the database.
//! `quark saga stuck` and the API's `SagaService` list them.

use std::sync::Arc;

use quark_history::{HistoryEvent, HistoryRange, InstanceFilter, InstanceStatus, Store};
use quark_workflow::StuckCompensation;

/// A stuck saga, as listed.
#[derive(Debug, Clone)]
pub struct StuckSaga {
    /// The instance.
    pub instance_id: String,
    /// Its orchestration type.
    pub instance_type: String,
    /// When it failed.
    pub failed_at: String,
    /// What is stuck.
    pub stuck: StuckCompensation,
}

/// The stuck sagas among the newest `scan` failed instances, at most `limit` of them.
pub async fn stuck_sagas(
    store: &Arc<dyn Store>,
    instance_type: Option<String>,
    limit: usize,
    scan: usize,
) -> quark_history::Result<Vec<StuckSaga>> {
    let mut found = Vec::new();
    let mut scanned = 0;
    let mut after = None;
    while found.len() < limit && scanned < scan {
        let page = store
            .list_instances(InstanceFilter {
                instance_type: instance_type.clone(),
                statuses: vec![InstanceStatus::Failed],
                after: after.clone(),
                limit: u32::try_from((scan - scanned).min(100)).unwrap_or(100),
                ..InstanceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        for record in page {
            scanned += 1;
            // The closing event is the last one: read it alone.
            let from = record.history_len.saturating_sub(1);
            let tail = store
                .read_history(&record.id, HistoryRange::From(from))
                .await?;
            let stuck = tail.iter().rev().find_map(|e| match &e.event {
                HistoryEvent::WorkflowFailed { failure } => {
                    StuckCompensation::from_failure(failure).map(|s| (e.recorded_at, s))
                }
                _ => None,
            });
            if let Some((at, stuck)) = stuck {
                found.push(StuckSaga {
                    instance_id: record.id,
                    instance_type: record.instance_type,
                    failed_at: at.to_string(),
                    stuck,
                });
                if found.len() >= limit {
                    break;
                }
            }
        }
    }
    Ok(found)
}
