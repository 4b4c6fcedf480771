//! Commands: what orchestration code asks for, matched against what its history recorded.
//!
//! Every `ctx` call that must survive a replay is a command with an id (1, 2, ... in the order the
//! code issues them). When the history already holds an event for that id, the command must have
//! the same *kind and identity* (activity name and input, child type and input, ...), or the turn
//! stops with a [`Nondeterminism`](crate::Nondeterminism) error that names both sides.

use quark_history::{CallSite, CommandId, HistoryEvent, Payload, Timestamp};

/// A command as the code issues it.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Activity {
        name: String,
        input: Payload,
        queue: String,
    },
    Timer {
        fire_at: Timestamp,
    },
    Child {
        instance_id: String,
        instance_type: String,
        version: u32,
        input: Payload,
    },
    SideEffect {
        value: Payload,
    },
    Patch {
        patch: String,
    },
    /// A signal to another instance (`ctx.send`), answered at once.
    Signal {
        instance_id: String,
        name: String,
        payload: Payload,
    },
    /// An update's handler returned (issued by the executor, not by a `ctx` call).
    UpdateCompleted {
        update_id: String,
        result: Result<Payload, quark_history::Failure>,
    },
}

impl Command {
    /// How the command reads in a nondeterminism message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Command::Activity { name, .. } => format!("ActivityScheduled({name})"),
            Command::Timer { .. } => "TimerCreated".into(),
            Command::Child { instance_type, .. } => format!("ChildStarted({instance_type})"),
            Command::SideEffect { .. } => "SideEffectRecorded".into(),
            Command::Patch { patch } => format!("PatchMarker({patch})"),
            Command::Signal {
                instance_id, name, ..
            } => format!("SignalSent({name} to {instance_id})"),
            Command::UpdateCompleted { update_id, .. } => format!("UpdateCompleted({update_id})"),
        }
    }

    /// The event that records the command.
    pub(crate) fn to_event(&self, command: CommandId, site: &CallSite) -> HistoryEvent {
        let site = Some(site.clone());
        match self.clone() {
            Command::Activity {
                name, input, queue, ..
            } => HistoryEvent::ActivityScheduled {
                command,
                activity: name,
                input,
                queue,
                site,
            },
            Command::Timer { fire_at } => HistoryEvent::TimerCreated {
                command,
                fire_at,
                site,
            },
            Command::Child {
                instance_id,
                instance_type,
                input,
                ..
            } => HistoryEvent::ChildStarted {
                command,
                instance_id,
                instance_type,
                input,
                site,
            },
            Command::SideEffect { value } => HistoryEvent::SideEffectRecorded {
                command,
                value,
                site,
            },
            Command::Patch { patch } => HistoryEvent::PatchMarker { command, patch },
            Command::Signal {
                instance_id,
                name,
                payload,
            } => HistoryEvent::SignalSent {
                command,
                instance_id,
                name,
                payload,
                site,
            },
            Command::UpdateCompleted { update_id, result } => HistoryEvent::UpdateCompleted {
                command,
                update_id,
                result,
            },
        }
    }

    /// `Ok` if `recorded` records this same command; otherwise how the code's command differs.
    pub(crate) fn check(&self, recorded: &HistoryEvent) -> Result<(), String> {
        let same = match (self, recorded) {
            (
                Command::Activity { name, input, .. },
                HistoryEvent::ActivityScheduled {
                    activity,
                    input: old,
                    ..
                },
            ) => {
                if name != activity {
                    false
                } else if !same_payload(input, old) {
                    return Err(format!(
                        "asks for {} with input {}, recorded with input {}",
                        self.describe(),
                        show(input),
                        show(old)
                    ));
                } else {
                    true
                }
            }
            (Command::Timer { .. }, HistoryEvent::TimerCreated { .. }) => true,
            (
                Command::Child {
                    instance_type,
                    input,
                    ..
                },
                HistoryEvent::ChildStarted {
                    instance_type: old_type,
                    input: old,
                    ..
                },
            ) => {
                if instance_type != old_type {
                    false
                } else if !same_payload(input, old) {
                    return Err(format!(
                        "asks for {} with input {}, recorded with input {}",
                        self.describe(),
                        show(input),
                        show(old)
                    ));
                } else {
                    true
                }
            }
            (Command::SideEffect { .. }, HistoryEvent::SideEffectRecorded { .. }) => true,
            (Command::Patch { patch }, HistoryEvent::PatchMarker { patch: old, .. }) => {
                patch == old
            }
            (
                Command::Signal {
                    instance_id,
                    name,
                    payload,
                },
                HistoryEvent::SignalSent {
                    instance_id: old_id,
                    name: old_name,
                    payload: old,
                    ..
                },
            ) => {
                if instance_id != old_id || name != old_name {
                    false
                } else if !same_payload(payload, old) {
                    return Err(format!(
                        "asks for {} with value {}, recorded with value {}",
                        self.describe(),
                        show(payload),
                        show(old)
                    ));
                } else {
                    true
                }
            }
            (
                Command::UpdateCompleted { update_id, result },
                HistoryEvent::UpdateCompleted {
                    update_id: old_id,
                    result: old,
                    ..
                },
            ) => {
                if update_id != old_id {
                    false
                } else {
                    let same = match (result, old) {
                        (Ok(a), Ok(b)) => same_payload(a, b),
                        (Err(a), Err(b)) => a.message == b.message,
                        _ => false,
                    };
                    if !same {
                        let side = |r: &Result<Payload, quark_history::Failure>| match r {
                            Ok(p) => format!("returns {}", show(p)),
                            Err(f) => format!("fails ({})", f.message),
                        };
                        return Err(format!(
                            "ends update `{update_id}`: {}, recorded: {}",
                            side(result),
                            side(old)
                        ));
                    }
                    true
                }
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(format!("asks for {}", self.describe()))
        }
    }
}

/// How a recorded command event reads in a nondeterminism message.
pub(crate) fn describe_event(event: &HistoryEvent) -> String {
    match event {
        HistoryEvent::ActivityScheduled { activity, .. } => {
            format!("ActivityScheduled({activity})")
        }
        HistoryEvent::ChildStarted { instance_type, .. } => {
            format!("ChildStarted({instance_type})")
        }
        HistoryEvent::PatchMarker { patch, .. } => format!("PatchMarker({patch})"),
        HistoryEvent::SignalSent {
            instance_id, name, ..
        } => format!("SignalSent({name} to {instance_id})"),
        HistoryEvent::UpdateCompleted { update_id, .. } => format!("UpdateCompleted({update_id})"),
        other => other.kind().to_string(),
    }
}

/// Where a recorded command was made, if the event says.
pub(crate) fn event_site(event: &HistoryEvent) -> Option<CallSite> {
    match event {
        HistoryEvent::ActivityScheduled { site, .. }
        | HistoryEvent::TimerCreated { site, .. }
        | HistoryEvent::ChildStarted { site, .. }
        | HistoryEvent::SideEffectRecorded { site, .. }
        | HistoryEvent::SignalSent { site, .. } => site.clone(),
        _ => None,
    }
}

/// Whether an event records a command the code issued (as opposed to resolving one, or arriving
/// from outside).
pub(crate) fn is_command_event(event: &HistoryEvent) -> bool {
    matches!(
        event,
        HistoryEvent::ActivityScheduled { .. }
            | HistoryEvent::TimerCreated { .. }
            | HistoryEvent::ChildStarted { .. }
            | HistoryEvent::SideEffectRecorded { .. }
            | HistoryEvent::PatchMarker { .. }
            | HistoryEvent::SignalSent { .. }
            | HistoryEvent::UpdateCompleted { .. }
    )
}

/// Payload equality that ignores JSON key order and whitespace: stored JSON is normalized, freshly
/// encoded JSON is not.
pub(crate) fn same_payload(a: &Payload, b: &Payload) -> bool {
    if a == b {
        return true;
    }
    match (
        a.decode::<serde_json::Value>(),
        b.decode::<serde_json::Value>(),
    ) {
        (Ok(x), Ok(y)) => a.codec() == b.codec() && x == y,
        _ => false,
    }
}

fn show(p: &Payload) -> String {
    match p.decode::<serde_json::Value>() {
        Ok(v) => {
            let text = v.to_string();
            if text.len() > 120 {
                format!("{}...", &text[..text.floor_char_boundary(117)])
            } else {
                text
            }
        }
        Err(_) => format!("<{} bytes>", p.len()),
    }
}

/// The call site of the caller of a `#[track_caller]` function.
#[track_caller]
pub(crate) fn caller() -> CallSite {
    let l = std::panic::Location::caller();
    CallSite {
        file: l.file().to_string(),
        line: l.line(),
        column: l.column(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(name: &str, input: serde_json::Value) -> Command {
        Command::Activity {
            name: name.into(),
            input: Payload::json(&input).unwrap(),
            queue: "default".into(),
        }
    }

    #[test]
    fn key_order_does_not_make_a_different_input() {
        let cmd = activity("a", serde_json::json!({"b": 1, "a": 2}));
        let site = CallSite {
            file: "x.rs".into(),
            line: 1,
            column: 1,
        };
        let stored: HistoryEvent =
            serde_json::from_str(&serde_json::to_string(&cmd.to_event(1, &site)).unwrap()).unwrap();
        assert_eq!(cmd.check(&stored), Ok(()));
    }

    #[test]
    fn a_signal_to_another_instance_or_with_another_value_is_a_different_command() {
        let site = CallSite {
            file: "x.rs".into(),
            line: 1,
            column: 1,
        };
        let signal = |to: &str, value: u32| Command::Signal {
            instance_id: to.into(),
            name: "ball".into(),
            payload: Payload::json(&value).unwrap(),
        };
        let old = signal("b", 1).to_event(3, &site);
        assert_eq!(signal("b", 1).check(&old), Ok(()));
        assert_eq!(
            signal("c", 1).check(&old).unwrap_err(),
            "asks for SignalSent(ball to c)"
        );
        assert_eq!(describe_event(&old), "SignalSent(ball to b)");
        assert_eq!(
            signal("b", 2).check(&old).unwrap_err(),
            "asks for SignalSent(ball to b) with value 2, recorded with value 1"
        );
    }

    #[test]
    fn a_changed_input_is_reported_with_both_values() {
        let site = CallSite {
            file: "x.rs".into(),
            line: 1,
            column: 1,
        };
        let old = activity("a", serde_json::json!(1)).to_event(1, &site);
        let err = activity("a", serde_json::json!(2)).check(&old).unwrap_err();
        assert_eq!(
            err,
            "asks for ActivityScheduled(a) with input 2, recorded with input 1"
        );
    }
}
