//! Orchestration instances: one row per run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::event::ParentRef;

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InstanceStatus {
    /// Started and not ended.
    Running,
    /// Not ended, but stopped: its code failed in a way that retrying cannot fix (a
    /// nondeterminism error, a panic, an orchestration type no worker has), and its turn is in the
    /// dead-letter list. [`InstanceRecord::blocked`] says why. Deploy fixed code and re-drive the
    /// turn ([`Store::redrive`](crate::Store::redrive)): that sets it running again, and its next
    /// turn runs the new code.
    Blocked,
    /// Returned a value.
    Completed,
    /// Returned an error.
    Failed,
    /// Ended after a cancellation request.
    Cancelled,
    /// Stopped from outside.
    Terminated,
    /// Ended and continued by a new run.
    ContinuedAsNew,
    /// Not a workflow run but an entity's stream of events: it never ends and has no tasks.
    /// Listings leave streams out unless asked for this status.
    Stream,
}

impl InstanceStatus {
    /// Every status, in declaration order.
    pub const ALL: [InstanceStatus; 8] = [
        InstanceStatus::Running,
        InstanceStatus::Blocked,
        InstanceStatus::Completed,
        InstanceStatus::Failed,
        InstanceStatus::Cancelled,
        InstanceStatus::Terminated,
        InstanceStatus::ContinuedAsNew,
        InstanceStatus::Stream,
    ];

    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Running => "running",
            InstanceStatus::Blocked => "blocked",
            InstanceStatus::Completed => "completed",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Cancelled => "cancelled",
            InstanceStatus::Terminated => "terminated",
            InstanceStatus::ContinuedAsNew => "continued_as_new",
            InstanceStatus::Stream => "stream",
        }
    }

    /// Whether the instance has ended. A blocked instance has not: it resumes once re-driven.
    pub fn is_closed(self) -> bool {
        match self {
            InstanceStatus::Running | InstanceStatus::Blocked | InstanceStatus::Stream => false,
            InstanceStatus::Completed
            | InstanceStatus::Failed
            | InstanceStatus::Cancelled
            | InstanceStatus::Terminated
            | InstanceStatus::ContinuedAsNew => true,
        }
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown instance status `{s}`"))
    }
}

/// What to do when an instance id is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdReusePolicy {
    /// Refuse with [`Error::DuplicateInstance`](crate::Error::DuplicateInstance).
    #[default]
    RejectDuplicate,
    /// Return the existing run unchanged (idempotent start).
    ReturnExisting,
}

/// A request to start an instance: inserts the row, appends `WorkflowStarted` and enqueues the
/// first orchestration task, in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewInstance {
    /// The id; unique.
    pub id: String,
    /// The registered orchestration type.
    pub instance_type: String,
    /// The orchestration version.
    pub version: u32,
    /// The input.
    pub input: Payload,
    /// The parent, for a child orchestration.
    pub parent: Option<ParentRef>,
    /// The instance this run continues, after `continue_as_new`.
    pub continued_from: Option<String>,
    /// The queue of its orchestration tasks.
    pub queue: String,
    /// Priority of its orchestration tasks (higher first).
    pub priority: i32,
    /// When the first turn may run (`None`: now).
    pub start_at: Option<Timestamp>,
    /// The W3C trace context (`traceparent`) its first turn continues (see
    /// [`NewTask::traceparent`](crate::NewTask::traceparent)).
    pub traceparent: Option<String>,
}

impl NewInstance {
    /// A request with the defaults: version 1, queue `default`, priority 0, start now.
    pub fn new(id: impl Into<String>, instance_type: impl Into<String>, input: Payload) -> Self {
        NewInstance {
            id: id.into(),
            instance_type: instance_type.into(),
            version: 1,
            input,
            parent: None,
            continued_from: None,
            queue: "default".into(),
            priority: 0,
            start_at: None,
            traceparent: None,
        }
    }
}

/// What [`Store::create_instance`](crate::Store::create_instance) did.
#[derive(Debug, Clone)]
pub struct Created {
    /// The instance (the existing one, if `created` is false).
    pub instance: InstanceRecord,
    /// Whether a new instance was created.
    pub created: bool,
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The id.
    pub id: String,
    /// The orchestration type.
    pub instance_type: String,
    /// The version it started under.
    pub version: u32,
    /// Where it stands.
    pub status: InstanceStatus,
    /// The input.
    pub input: Payload,
    /// The output, once completed.
    pub output: Option<Payload>,
    /// The parent instance, for a child.
    pub parent_id: Option<String>,
    /// The queue of its orchestration tasks.
    pub queue: String,
    /// The number of events in its history.
    pub history_len: u64,
    /// The sum of the sizes of its encoded events.
    pub history_bytes: u64,
    /// The worker that keeps it warm, if any.
    pub affinity: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Why it is blocked, while its status is [`InstanceStatus::Blocked`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedTurn>,
}

/// The dead-lettered turn that blocks an instance: what went wrong, and what to re-drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlockedTurn {
    /// The dead orchestration task: `quark dlq redrive <task_id>` (or
    /// [`Store::redrive`](crate::Store::redrive)) runs the turn again.
    pub task_id: i64,
    /// The error, e.g. a nondeterminism error naming the recorded and the new command and their
    /// call sites.
    pub error: String,
    /// When the turn was dead-lettered.
    pub since: Timestamp,
}

impl BlockedTurn {
    /// The turn of task `task_id`, dead-lettered at `since` with `error` (as a remote client
    /// reads it back from the API).
    pub fn new(task_id: i64, error: impl Into<String>, since: Timestamp) -> BlockedTurn {
        BlockedTurn {
            task_id,
            error: error.into(),
            since,
        }
    }
}

/// Which instances to list. Results are ordered by creation time, newest first, then by id.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only this orchestration type.
    pub instance_type: Option<String>,
    /// Only these statuses (empty: every status but [`InstanceStatus::Stream`]).
    pub statuses: Vec<InstanceStatus>,
    /// Only instances created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Only instances created before this time.
    pub created_until: Option<Timestamp>,
    /// Only instances whose id starts with this (case-sensitive).
    pub id_prefix: Option<String>,
    /// Resume after this page cursor (the last `(created_at, id)` of the previous page).
    pub after: Option<(Timestamp, String)>,
    /// At most this many (0: 100).
    pub limit: u32,
}

impl NewInstance {
    /// The `WorkflowStarted` event that opens its history.
    pub(crate) fn started_event(&self) -> crate::HistoryEvent {
        crate::HistoryEvent::WorkflowStarted {
            instance_type: self.instance_type.clone(),
            version: self.version,
            input: self.input.clone(),
            parent: self.parent.clone(),
            continued_from: self.continued_from.clone(),
        }
    }

    /// The record of the instance it creates at `now`, whose first event is `history_bytes` long.
    pub(crate) fn into_record(self, history_bytes: u64, now: Timestamp) -> InstanceRecord {
        InstanceRecord {
            id: self.id,
            instance_type: self.instance_type,
            version: self.version,
            status: InstanceStatus::Running,
            input: self.input,
            output: None,
            parent_id: self.parent.map(|p| p.instance_id),
            queue: self.queue,
            history_len: 1,
            history_bytes,
            affinity: None,
            created_at: now,
            updated_at: now,
            blocked: None,
        }
    }
}

/// Refuses a batch that names one id twice (it could not be created as asked).
pub(crate) fn check_distinct(news: &[NewInstance]) -> crate::Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(news.len());
    for new in news {
        if !seen.insert(new.id.as_str()) {
            return Err(crate::Error::Invalid(format!(
                "instance id `{}` appears twice in one batch of starts",
                new.id
            )));
        }
    }
    Ok(())
}
