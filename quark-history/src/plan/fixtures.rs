//! Rows and events the plan's tests are built from.

use std::time::Duration;

use super::{InstanceHead, TaskRow};
use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::event::HistoryEvent;
use crate::instance::InstanceStatus;
use crate::journal::GENESIS;
use crate::queue::{Lease, TaskKind};

pub(crate) const NOW: Timestamp = Timestamp::from_micros(1_000_000_000);

pub(crate) fn lease(task_id: i64, attempt: u32) -> Lease {
    Lease {
        task_id,
        attempt,
        worker: "w".into(),
    }
}

/// A task of `instance`, leased to "w" at attempt 1 until a minute from now.
pub(crate) fn running(id: i64, kind: TaskKind, instance: &str) -> TaskRow {
    TaskRow {
        id,
        kind,
        attempt: 1,
        owner: Some("w".into()),
        visible_at: NOW + Duration::from_secs(60),
        rerun: false,
        instance_id: Some(instance.into()),
        queue: "q".into(),
        cancel_requested: false,
    }
}

pub(crate) fn pending(id: i64, kind: TaskKind, instance: &str) -> TaskRow {
    TaskRow {
        attempt: 0,
        owner: None,
        visible_at: NOW,
        ..running(id, kind, instance)
    }
}

pub(crate) fn fresh() -> InstanceHead {
    InstanceHead {
        next_seq: 1,
        last_hash: GENESIS,
        status: InstanceStatus::Running,
    }
}

pub(crate) fn signal() -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "ping".into(),
        payload: Payload::json(&1).unwrap(),
    }
}

pub(crate) fn terminated() -> HistoryEvent {
    HistoryEvent::WorkflowTerminated {
        reason: "enough".into(),
    }
}
