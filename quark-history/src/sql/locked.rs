//! The rows a commit reads (and on PostgreSQL locks) before it plans, as both dialects' commit
//! paths read them: task rows and instance heads (see [`crate::plan::Locked`]), decoded once.

use super::{Dialect, Row};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::plan::{InstanceHead, TaskRow};
use crate::rows::hash32;

/// The columns a task row is decoded from ([`task_row`]).
pub(crate) const TASK_COLUMNS: &str =
    "id, kind, attempts, lease_owner, visible_at, rerun, instance_id, queue, cancel_requested";

/// The columns an instance head is decoded from ([`instance_head`]).
pub(crate) const HEAD_COLUMNS: &str = "id, next_seq, last_hash, status";

/// A task row from a row of [`TASK_COLUMNS`].
pub(crate) fn task_row<DB: Dialect>(row: &Row<DB>) -> Result<TaskRow> {
    Ok(TaskRow {
        id: row.get("id")?,
        kind: row.get::<String>("kind")?.parse().map_err(Error::Invalid)?,
        attempt: row.get::<i32>("attempts")? as u32,
        owner: row.get("lease_owner")?,
        visible_at: Timestamp::from_micros(row.get("visible_at")?),
        rerun: row.get("rerun")?,
        instance_id: row.get("instance_id")?,
        queue: row.get("queue")?,
        cancel_requested: row.get("cancel_requested")?,
    })
}

/// An instance's id and head from a row of [`HEAD_COLUMNS`].
pub(crate) fn instance_head<DB: Dialect>(row: &Row<DB>) -> Result<(String, InstanceHead)> {
    let head = InstanceHead {
        next_seq: row.get::<i64>("next_seq")? as u64,
        last_hash: hash32(&row.get::<Vec<u8>>("last_hash")?),
        status: row
            .get::<String>("status")?
            .parse()
            .map_err(Error::Invalid)?,
    };
    Ok((row.get("id")?, head))
}
