//! The event model: everything that happens to an orchestration instance.
//!
//! A history is the ordered list of these events, numbered from 1 by a per-instance sequence number.
//! Events that record a command the orchestration code issued (`ActivityScheduled`, `TimerCreated`,
//! `ChildStarted`, `SideEffectRecorded`, `PatchMarker`, ...) carry the command's id, a number the
//! replay executor assigns in the order the code issues commands, and the call site of the `ctx`
//! call, so a nondeterminism error can point at source lines. Events that resolve a command
//! (`ActivityCompleted`, `TimerFired`, `ChildCompleted`, ...) carry the same id.
//!
//! An entity's stream is a history too, of [`HistoryEvent::EntityEvent`]s only: it shares the
//! global order, the hash chain, verification and checkpoints with the workflows.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::codec::Payload;

/// The version of the event schema this build writes. Stored with every event; a reader refuses
/// events from a newer schema with [`Error::UnsupportedSchema`](crate::Error::UnsupportedSchema)
/// rather than guessing.
pub const SCHEMA_VERSION: i16 = 1;

/// The id of a command within one instance's history: 1 for the first `ctx` call, and so on.
pub type CommandId = u64;

/// Where in the user's source a command was issued (`#[track_caller]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallSite {
    /// Source file, as `file!()` gives it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl std::fmt::Display for CallSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why something failed, in a form that survives the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// A human-readable message.
    pub message: String,
    /// Whether a retry could succeed. Terminal failures are never retried.
    pub retryable: bool,
    /// Optional structured details.
    pub details: Option<Payload>,
}

impl Failure {
    /// A retryable failure with a message.
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: true,
            details: None,
        }
    }

    /// A terminal failure with a message.
    pub fn terminal(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: false,
            details: None,
        }
    }
}

/// Names the parent of a child orchestration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent instance.
    pub instance_id: String,
    /// The parent's command that started the child.
    pub command: CommandId,
}

/// One thing that happened to an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HistoryEvent {
    /// The instance was created. Always event 1.
    WorkflowStarted {
        /// The registered orchestration type.
        instance_type: String,
        /// The orchestration version the instance started under.
        version: u32,
        /// The input.
        input: Payload,
        /// The parent, for a child orchestration.
        parent: Option<ParentRef>,
        /// The instance this one continues, after `continue_as_new`.
        continued_from: Option<String>,
    },
    /// The code called an activity.
    ActivityScheduled {
        /// The command id.
        command: CommandId,
        /// The registered activity type.
        activity: String,
        /// The input.
        input: Payload,
        /// The queue the activity task went to.
        queue: String,
        /// Where the code made the call.
        site: Option<CallSite>,
    },
    /// An activity returned a value.
    ActivityCompleted {
        /// The command id of the `ActivityScheduled` event.
        command: CommandId,
        /// The output.
        output: Payload,
        /// The attempt that succeeded (1-based).
        attempt: u32,
    },
    /// An activity failed for good: a terminal error or its retries exhausted.
    ActivityFailed {
        /// The command id of the `ActivityScheduled` event.
        command: CommandId,
        /// Why.
        failure: Failure,
        /// The last attempt (1-based).
        attempt: u32,
    },
    /// The code started a durable timer.
    TimerCreated {
        /// The command id.
        command: CommandId,
        /// When it fires.
        fire_at: Timestamp,
        /// Where the code made the call.
        site: Option<CallSite>,
    },
    /// A timer fired.
    TimerFired {
        /// The command id of the `TimerCreated` event.
        command: CommandId,
    },
    /// The code cancelled a timer it no longer waits for (a lost `select`, a signal timeout that
    /// did not expire).
    TimerCancelled {
        /// The command id of the `TimerCreated` event.
        command: CommandId,
    },
    /// A signal arrived from outside.
    SignalReceived {
        /// The signal's name.
        name: String,
        /// The signal's value.
        payload: Payload,
    },
    /// The code started a child orchestration.
    ChildStarted {
        /// The command id.
        command: CommandId,
        /// The child's instance id.
        instance_id: String,
        /// The child's orchestration type.
        instance_type: String,
        /// The child's input.
        input: Payload,
        /// Where the code made the call.
        site: Option<CallSite>,
    },
    /// A child orchestration completed.
    ChildCompleted {
        /// The command id of the `ChildStarted` event.
        command: CommandId,
        /// The child's output.
        output: Payload,
    },
    /// A child orchestration failed, was cancelled or was terminated.
    ChildFailed {
        /// The command id of the `ChildStarted` event.
        command: CommandId,
        /// Why.
        failure: Failure,
    },
    /// The result of a side effect (`ctx.side_effect`, `ctx.now`, `ctx.random`, `ctx.uuid`), recorded
    /// so that replay returns the same value.
    SideEffectRecorded {
        /// The command id.
        command: CommandId,
        /// The value.
        value: Payload,
        /// Where the code made the call.
        site: Option<CallSite>,
    },
    /// The code passed a `ctx.patched(id)` check while running new code.
    PatchMarker {
        /// The command id.
        command: CommandId,
        /// The patch id.
        patch: String,
    },
    /// Cancellation was requested from outside; the code sees it at its next await.
    CancelRequested {
        /// Why, as given by the caller.
        reason: String,
    },
    /// The instance ended and a new run continues it with a fresh history.
    ContinuedAsNew {
        /// The new run's instance id.
        new_instance_id: String,
        /// The new run's input.
        input: Payload,
    },
    /// The orchestration returned a value.
    WorkflowCompleted {
        /// The output.
        output: Payload,
    },
    /// The orchestration returned an error.
    WorkflowFailed {
        /// Why.
        failure: Failure,
    },
    /// The orchestration ended after a cancellation request.
    WorkflowCancelled {
        /// Why, as given by the caller.
        reason: String,
    },
    /// The instance was stopped from outside, without running any more code.
    WorkflowTerminated {
        /// Why, as given by the caller.
        reason: String,
    },
    /// A domain event of an entity, in the entity's stream (an instance whose status is
    /// [`InstanceStatus::Stream`](crate::InstanceStatus::Stream)). Only streams hold these, and
    /// streams hold nothing else.
    EntityEvent {
        /// The event's type name (`Deposited`), for readers that select by type.
        event_type: String,
        /// The event itself, as the entity's code serialized it.
        data: Payload,
        /// What caused it: the id of the command, message or workflow step it answers.
        causation: Option<String>,
        /// The conversation it belongs to, carried unchanged from cause to effect.
        correlation: Option<String>,
    },
    /// The code sent a signal to another orchestration instance (`ctx.send`). The same commit
    /// appends `SignalReceived` to the receiver, if it is still running. Last of the variants
    /// because stored events name their variant by position.
    SignalSent {
        /// The command id.
        command: CommandId,
        /// The receiving instance.
        instance_id: String,
        /// The signal's name.
        name: String,
        /// The signal's value.
        payload: Payload,
        /// Where the code made the call.
        site: Option<CallSite>,
    },
    /// An update to the running instance passed its validator (or had none): its handler runs
    /// from here on. A rejected update leaves no event. Appended by the worker that validated
    /// it, in the commit of the turn its handler's first steps make.
    UpdateAccepted {
        /// The update's id, chosen by the caller (unique per instance).
        update_id: String,
        /// The update's name, as its handler was declared.
        name: String,
        /// The update's argument.
        payload: Payload,
    },
    /// An update's handler returned: the value handed back to the caller, or why it failed.
    /// Recorded by the code, like a command: a replay must end the handler the same way.
    UpdateCompleted {
        /// The command id.
        command: CommandId,
        /// The update's id, from its `UpdateAccepted`.
        update_id: String,
        /// What the handler returned.
        result: std::result::Result<Payload, Failure>,
    },
}

impl HistoryEvent {
    /// The event's kind, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            HistoryEvent::WorkflowStarted { .. } => "WorkflowStarted",
            HistoryEvent::ActivityScheduled { .. } => "ActivityScheduled",
            HistoryEvent::ActivityCompleted { .. } => "ActivityCompleted",
            HistoryEvent::ActivityFailed { .. } => "ActivityFailed",
            HistoryEvent::TimerCreated { .. } => "TimerCreated",
            HistoryEvent::TimerFired { .. } => "TimerFired",
            HistoryEvent::TimerCancelled { .. } => "TimerCancelled",
            HistoryEvent::SignalReceived { .. } => "SignalReceived",
            HistoryEvent::ChildStarted { .. } => "ChildStarted",
            HistoryEvent::ChildCompleted { .. } => "ChildCompleted",
            HistoryEvent::ChildFailed { .. } => "ChildFailed",
            HistoryEvent::SideEffectRecorded { .. } => "SideEffectRecorded",
            HistoryEvent::PatchMarker { .. } => "PatchMarker",
            HistoryEvent::CancelRequested { .. } => "CancelRequested",
            HistoryEvent::ContinuedAsNew { .. } => "ContinuedAsNew",
            HistoryEvent::WorkflowCompleted { .. } => "WorkflowCompleted",
            HistoryEvent::WorkflowFailed { .. } => "WorkflowFailed",
            HistoryEvent::WorkflowCancelled { .. } => "WorkflowCancelled",
            HistoryEvent::WorkflowTerminated { .. } => "WorkflowTerminated",
            HistoryEvent::EntityEvent { .. } => "EntityEvent",
            HistoryEvent::SignalSent { .. } => "SignalSent",
            HistoryEvent::UpdateAccepted { .. } => "UpdateAccepted",
            HistoryEvent::UpdateCompleted { .. } => "UpdateCompleted",
        }
    }

    /// The status this event puts the instance in, if it ends the instance.
    pub fn closing_status(&self) -> Option<crate::InstanceStatus> {
        use crate::InstanceStatus as S;
        match self {
            HistoryEvent::WorkflowCompleted { .. } => Some(S::Completed),
            HistoryEvent::WorkflowFailed { .. } => Some(S::Failed),
            HistoryEvent::WorkflowCancelled { .. } => Some(S::Cancelled),
            HistoryEvent::WorkflowTerminated { .. } => Some(S::Terminated),
            HistoryEvent::ContinuedAsNew { .. } => Some(S::ContinuedAsNew),
            _ => None,
        }
    }

    /// The command this event records or resolves, if any.
    pub fn command(&self) -> Option<CommandId> {
        match self {
            HistoryEvent::ActivityScheduled { command, .. }
            | HistoryEvent::ActivityCompleted { command, .. }
            | HistoryEvent::ActivityFailed { command, .. }
            | HistoryEvent::TimerCreated { command, .. }
            | HistoryEvent::TimerFired { command }
            | HistoryEvent::TimerCancelled { command }
            | HistoryEvent::ChildStarted { command, .. }
            | HistoryEvent::ChildCompleted { command, .. }
            | HistoryEvent::ChildFailed { command, .. }
            | HistoryEvent::SideEffectRecorded { command, .. }
            | HistoryEvent::SignalSent { command, .. }
            | HistoryEvent::UpdateCompleted { command, .. }
            | HistoryEvent::PatchMarker { command, .. } => Some(*command),
            _ => None,
        }
    }
}

/// An event as stored: its position in the instance's history and in the global order, its time and
/// its link in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The instance.
    pub instance_id: String,
    /// The position in the instance's history, from 1.
    pub seq: u64,
    /// When the store appended it (by the store's clock).
    pub recorded_at: Timestamp,
    /// The event.
    pub event: HistoryEvent,
    /// `blake3(previous hash || seq || codec || encoded event)`, hex.
    pub hash: String,
}
