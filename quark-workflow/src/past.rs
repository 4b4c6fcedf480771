//! A workflow instance as it stood at a past point of its history: its status, what it was waiting
//! for, what it had received, read from the history alone (no orchestration code is run).

use std::collections::BTreeMap;

use quark_history::{CommandId, Failure, HistoryEvent, Payload, RecordedEvent, Timestamp};
use serde::Serialize;

/// What an instance's history says about it after its first `version` events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowAt {
    /// The instance.
    pub instance_id: String,
    /// How many events were applied.
    pub version: u64,
    /// When the last of them was recorded.
    pub at: Option<Timestamp>,
    /// The orchestration type.
    pub instance_type: String,
    /// Its status then: `running`, `cancelling`, `completed`, `failed`, `cancelled`,
    /// `terminated` or `continued_as_new`.
    pub status: &'static str,
    /// Activities scheduled and not yet completed or failed.
    pub pending_activities: Vec<Pending>,
    /// Timers started and not yet fired or cancelled.
    pub pending_timers: Vec<PendingTimer>,
    /// Children started and not yet ended.
    pub pending_children: Vec<Pending>,
    /// Activities that completed, failed; timers that fired; children that ended.
    pub done: BTreeMap<&'static str, u64>,
    /// Signals received so far, by name, with the last value.
    pub signals: BTreeMap<String, SignalsSeen>,
    /// The reason of a cancellation request, if one came.
    pub cancel_requested: Option<String>,
    /// The output, once completed.
    pub output: Option<serde_json::Value>,
    /// The failure, once failed.
    pub failure: Option<Failure>,
}

/// An activity or child that was outstanding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Its command id (the position of the call in the code).
    pub command: CommandId,
    /// The activity type, or the child's instance id and type.
    pub name: String,
    /// When it was scheduled.
    pub since: Timestamp,
}

/// A timer that was outstanding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingTimer {
    /// Its command id.
    pub command: CommandId,
    /// When it was due.
    pub fire_at: Timestamp,
}

/// The signals of one name received so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalsSeen {
    /// How many.
    pub count: u64,
    /// The last one's value.
    pub last: serde_json::Value,
}

fn json(p: &Payload) -> serde_json::Value {
    p.decode::<serde_json::Value>()
        .unwrap_or_else(|_| serde_json::Value::String(format!("<{} bytes>", p.as_bytes().len())))
}

/// Folds the first `version` events of `history` (in sequence order, as read from the store).
/// `None` if `history` is not a workflow's (no `WorkflowStarted` first).
pub fn workflow_at(history: &[RecordedEvent], version: u64) -> Option<WorkflowAt> {
    let first = history.first()?;
    let HistoryEvent::WorkflowStarted { instance_type, .. } = &first.event else {
        return None;
    };
    let mut w = WorkflowAt {
        instance_id: first.instance_id.clone(),
        version: 0,
        at: None,
        instance_type: instance_type.clone(),
        status: "running",
        pending_activities: Vec::new(),
        pending_timers: Vec::new(),
        pending_children: Vec::new(),
        done: BTreeMap::new(),
        signals: BTreeMap::new(),
        cancel_requested: None,
        output: None,
        failure: None,
    };
    let mut activities: BTreeMap<CommandId, Pending> = BTreeMap::new();
    let mut timers: BTreeMap<CommandId, PendingTimer> = BTreeMap::new();
    let mut children: BTreeMap<CommandId, Pending> = BTreeMap::new();
    for e in history.iter().take_while(|e| e.seq <= version) {
        w.version = e.seq;
        w.at = Some(e.recorded_at);
        let mut done = |what: &'static str| *w.done.entry(what).or_default() += 1;
        match &e.event {
            HistoryEvent::ActivityScheduled {
                command, activity, ..
            } => {
                activities.insert(
                    *command,
                    Pending {
                        command: *command,
                        name: activity.clone(),
                        since: e.recorded_at,
                    },
                );
            }
            HistoryEvent::ActivityCompleted { command, .. } => {
                activities.remove(command);
                done("activities completed");
            }
            HistoryEvent::ActivityFailed { command, .. } => {
                activities.remove(command);
                done("activities failed");
            }
            HistoryEvent::TimerCreated {
                command, fire_at, ..
            } => {
                timers.insert(
                    *command,
                    PendingTimer {
                        command: *command,
                        fire_at: *fire_at,
                    },
                );
            }
            HistoryEvent::TimerFired { command } => {
                timers.remove(command);
                done("timers fired");
            }
            HistoryEvent::TimerCancelled { command } => {
                timers.remove(command);
                done("timers cancelled");
            }
            HistoryEvent::ChildStarted {
                command,
                instance_id,
                instance_type,
                ..
            } => {
                children.insert(
                    *command,
                    Pending {
                        command: *command,
                        name: format!("{instance_id} ({instance_type})"),
                        since: e.recorded_at,
                    },
                );
            }
            HistoryEvent::ChildCompleted { command, .. } => {
                children.remove(command);
                done("children completed");
            }
            HistoryEvent::ChildFailed { command, .. } => {
                children.remove(command);
                done("children failed");
            }
            HistoryEvent::SignalReceived { name, payload } => {
                let seen = w.signals.entry(name.clone()).or_insert(SignalsSeen {
                    count: 0,
                    last: serde_json::Value::Null,
                });
                seen.count += 1;
                seen.last = json(payload);
            }
            HistoryEvent::SignalSent { .. } => done("signals sent"),
            HistoryEvent::CancelRequested { reason } => {
                w.cancel_requested = Some(reason.clone());
                w.status = "cancelling";
            }
            HistoryEvent::WorkflowCompleted { output } => {
                w.status = "completed";
                w.output = Some(json(output));
            }
            HistoryEvent::WorkflowFailed { failure } => {
                w.status = "failed";
                w.failure = Some(failure.clone());
            }
            HistoryEvent::WorkflowCancelled { .. } => w.status = "cancelled",
            HistoryEvent::WorkflowTerminated { .. } => w.status = "terminated",
            HistoryEvent::ContinuedAsNew { .. } => w.status = "continued_as_new",
            _ => {}
        }
    }
    w.pending_activities = activities.into_values().collect();
    w.pending_timers = timers.into_values().collect();
    w.pending_children = children.into_values().collect();
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::Payload;

    fn event(seq: u64, event: HistoryEvent) -> RecordedEvent {
        RecordedEvent {
            instance_id: "order-1".into(),
            seq,
            recorded_at: Timestamp::from_micros(seq as i64 * 1_000_000),
            event,
            hash: String::new(),
        }
    }

    #[test]
    fn it_shows_what_was_outstanding_and_received_at_each_version() {
        let c = |n: u64| -> CommandId { n };
        let history = vec![
            event(
                1,
                HistoryEvent::WorkflowStarted {
                    instance_type: "process_order".into(),
                    version: 1,
                    input: Payload::json(&1).unwrap(),
                    parent: None,
                    continued_from: None,
                },
            ),
            event(
                2,
                HistoryEvent::ActivityScheduled {
                    command: c(0),
                    activity: "charge".into(),
                    input: Payload::json(&1).unwrap(),
                    queue: "default".into(),
                    site: None,
                },
            ),
            event(
                3,
                HistoryEvent::TimerCreated {
                    command: c(1),
                    fire_at: Timestamp::from_micros(9_000_000),
                    site: None,
                },
            ),
            event(
                4,
                HistoryEvent::SignalReceived {
                    name: "approve".into(),
                    payload: Payload::json(&true).unwrap(),
                },
            ),
            event(
                5,
                HistoryEvent::ActivityCompleted {
                    command: c(0),
                    output: Payload::json(&"ok").unwrap(),
                    attempt: 1,
                },
            ),
            event(6, HistoryEvent::TimerCancelled { command: c(1) }),
            event(
                7,
                HistoryEvent::WorkflowCompleted {
                    output: Payload::json(&"shipped").unwrap(),
                },
            ),
        ];
        let at3 = workflow_at(&history, 3).unwrap();
        assert_eq!((at3.version, at3.status), (3, "running"));
        assert_eq!(at3.pending_activities.len(), 1);
        assert_eq!(at3.pending_activities[0].name, "charge");
        assert_eq!(at3.pending_timers.len(), 1);
        assert!(at3.signals.is_empty());

        let at5 = workflow_at(&history, 5).unwrap();
        assert!(at5.pending_activities.is_empty());
        assert_eq!(at5.pending_timers.len(), 1);
        assert_eq!(at5.signals["approve"].count, 1);
        assert_eq!(at5.done["activities completed"], 1);

        let end = workflow_at(&history, u64::MAX).unwrap();
        assert_eq!((end.version, end.status), (7, "completed"));
        assert!(end.pending_timers.is_empty());
        assert_eq!(end.output, Some(serde_json::json!("shipped")));
        assert_eq!(end.at, Some(Timestamp::from_micros(7_000_000)));
    }
}
