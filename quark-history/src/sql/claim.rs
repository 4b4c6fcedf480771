//! A claimed task as both dialects' claim statements return it, read once.

use super::{Dialect, Row};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::queue::{ClaimedTask, Lease};

/// The claimed tasks in `rows` (columns `id, attempts, kind, queue, instance_id, priority,
/// created_at, ready_at, payload, traceparent`, where `ready_at` is the `visible_at` the claim replaced),
/// leased to `worker` until `expires`.
pub(crate) fn claimed_tasks<DB: Dialect>(
    rows: Vec<Row<DB>>,
    worker: &str,
    expires: Timestamp,
) -> Result<Vec<ClaimedTask>> {
    rows.into_iter()
        .map(|row| {
            Ok(ClaimedTask {
                lease: Lease {
                    task_id: row.get("id")?,
                    attempt: row.get::<i32>("attempts")? as u32,
                    worker: worker.to_string(),
                },
                kind: row.get::<String>("kind")?.parse().map_err(Error::Invalid)?,
                queue: row.get("queue")?,
                instance_id: row.get("instance_id")?,
                priority: row.get("priority")?,
                created_at: Timestamp::from_micros(row.get("created_at")?),
                visible_at: Timestamp::from_micros(row.get("ready_at")?),
                lease_expires_at: expires,
                payload: row.get("payload")?,
                traceparent: row.get("traceparent")?,
            })
        })
        .collect()
}
