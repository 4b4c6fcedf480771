//! The replay state one orchestration run shares between its context, its futures and the executor.
//!
//! Single-threaded by construction (`Rc<RefCell<_>>`): an orchestration runs on one thread, in one
//! turn, and nothing in it may be sent elsewhere.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::task::Waker;

use quark_history::{
    CallSite, CommandId, Failure, HistoryEvent, NewInstance, NewTask, Payload, RecordedEvent,
    Timestamp,
};

use crate::command::{Command, describe_event, event_site};
use crate::error::Nondeterminism;

pub(crate) type Shared = Rc<RefCell<State>>;

/// How a command resolved.
#[derive(Debug, Clone)]
pub(crate) enum Resolution {
    /// An activity or child returned this value; a timer fired (unit).
    Value(Payload),
    /// An activity or child failed.
    Failed(Failure),
}

/// One issued command.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) command: Command,
    /// The recording event, if the history does not hold it yet (the command is new).
    pub(crate) new_event: Option<HistoryEvent>,
    /// The task to enqueue with the new event.
    pub(crate) task: Option<NewTask>,
    pub(crate) result: Option<Resolution>,
    /// The sequence number of the event that resolved it (history order for `select`).
    pub(crate) resolved_at: u64,
    pub(crate) waker: Option<Waker>,
    /// A timer whose future was dropped before it fired.
    pub(crate) abandoned: bool,
}

/// Where cancellation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cancel {
    None,
    /// Requested; the next await returns `Cancelled`.
    Requested(String),
    /// The code has seen it.
    Observed(String),
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) instance_id: String,
    pub(crate) queue: String,
    /// Every command event in the whole history, by command id.
    pub(crate) recorded: BTreeMap<CommandId, (u64, HistoryEvent)>,
    /// The sequence number of the last event that records a decision of the code (a command, or
    /// the end of the run): before it, the code is replaying what it did.
    pub(crate) last_decision: u64,
    /// Timers that fired or were cancelled anywhere in the history.
    pub(crate) settled_timers: BTreeSet<CommandId>,
    pub(crate) slots: BTreeMap<CommandId, Slot>,
    pub(crate) next_command: CommandId,
    /// The sequence number and time of the event being processed.
    pub(crate) seq: u64,
    pub(crate) now: Timestamp,
    pub(crate) signals: HashMap<String, VecDeque<(u64, Payload)>>,
    pub(crate) signal_wakers: Vec<Waker>,
    pub(crate) cancel: Cancel,
    /// The sequence number of the `CancelRequested` event, once delivered.
    pub(crate) cancel_seq: u64,
    pub(crate) nondeterminism: Option<Nondeterminism>,
    /// The largest `resolved_at` of the commands resolved during the current poll of a branch.
    pub(crate) stamp: u64,
    /// Set once the turn is over: futures dropped after that are not abandoned by the code.
    pub(crate) turn_over: bool,
    /// Patches the code asked about, and whether any answer sent it down the old branch.
    pub(crate) patches: BTreeMap<String, bool>,
    entropy: u64,
}

impl State {
    pub(crate) fn new(instance_id: &str, queue: &str, history: &[RecordedEvent]) -> Self {
        let mut recorded = BTreeMap::new();
        let mut settled_timers = BTreeSet::new();
        let mut last_decision = 0;
        for e in history {
            if crate::command::is_command_event(&e.event) || e.event.closing_status().is_some() {
                last_decision = e.seq;
            }
            match &e.event {
                HistoryEvent::TimerFired { command } | HistoryEvent::TimerCancelled { command } => {
                    settled_timers.insert(*command);
                }
                ev if crate::command::is_command_event(ev) => {
                    if let Some(id) = ev.command() {
                        recorded.insert(id, (e.seq, ev.clone()));
                    }
                }
                _ => {}
            }
        }
        State {
            instance_id: instance_id.to_string(),
            queue: queue.to_string(),
            recorded,
            last_decision,
            settled_timers,
            slots: BTreeMap::new(),
            next_command: 1,
            seq: 0,
            now: Timestamp::EPOCH,
            signals: HashMap::new(),
            signal_wakers: Vec::new(),
            cancel: Cancel::None,
            cancel_seq: 0,
            nondeterminism: None,
            stamp: 0,
            turn_over: false,
            patches: BTreeMap::new(),
            entropy: 0,
        }
    }

    /// Issues a command: matches it against the history, or marks it new.
    pub(crate) fn issue(
        &mut self,
        command: Command,
        site: CallSite,
        task: impl FnOnce(CommandId) -> Option<NewTask>,
    ) -> CommandId {
        let id = self.next_command;
        self.next_command += 1;
        let (new_event, task) = match self.recorded.get(&id) {
            Some((seq, event)) => {
                if let Err(actual) = command.check(event) {
                    self.diverge(Nondeterminism {
                        command: id,
                        seq: Some(*seq),
                        expected: describe_event(event),
                        expected_site: event_site(event),
                        actual,
                        actual_site: Some(site),
                    });
                }
                (None, None)
            }
            None => (Some(command.to_event(id, &site)), task(id)),
        };
        self.slots.insert(
            id,
            Slot {
                command,
                new_event,
                task,
                result: None,
                resolved_at: 0,
                waker: None,
                abandoned: false,
            },
        );
        id
    }

    /// Records an answer of `ctx.patched(patch)`.
    pub(crate) fn note_patch(&mut self, patch: &str, old_branch: bool) {
        *self.patches.entry(patch.to_string()).or_insert(false) |= old_branch;
    }

    /// Records the first divergence; later ones are consequences of it.
    pub(crate) fn diverge(&mut self, n: Nondeterminism) {
        if self.nondeterminism.is_none() {
            self.nondeterminism = Some(n);
        }
    }

    /// Resolves command `id` with the event at the current sequence number.
    pub(crate) fn resolve(&mut self, id: CommandId, resolution: Resolution) {
        let seq = self.seq;
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.result = Some(resolution);
            slot.resolved_at = seq;
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Wakes everything that waits: cancellation concerns every pending future.
    pub(crate) fn wake_all(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        for w in self.signal_wakers.drain(..) {
            w.wake();
        }
    }

    /// If cancellation is requested and not yet seen, the caller's await sees it now.
    pub(crate) fn take_cancel(&mut self) -> Option<String> {
        if let Cancel::Requested(reason) = &self.cancel {
            let reason = reason.clone();
            self.cancel = Cancel::Observed(reason.clone());
            return Some(reason);
        }
        None
    }

    /// A fresh pseudo-random number for a side effect that is about to be recorded.
    pub(crate) fn entropy(&mut self) -> u64 {
        use std::hash::BuildHasher;
        self.entropy += 1;
        std::collections::hash_map::RandomState::new().hash_one((self.entropy, self.seq))
    }

    /// `CancelRequested` for every child still running, if this is a turn that first sees this
    /// instance's cancellation: no decision of the code is recorded after the request yet.
    /// (A later turn that sees no recorded decision sends them again; a child ignores a second
    /// request.)
    pub(crate) fn cancel_notices(&self) -> Vec<(String, HistoryEvent)> {
        let reason = match &self.cancel {
            Cancel::Requested(r) | Cancel::Observed(r) => r,
            Cancel::None => return Vec::new(),
        };
        if self.last_decision > self.cancel_seq {
            return Vec::new();
        }
        self.slots
            .values()
            .filter(|slot| slot.result.is_none())
            .filter_map(|slot| match &slot.command {
                Command::Child { instance_id, .. } => Some((
                    instance_id.clone(),
                    HistoryEvent::CancelRequested {
                        reason: format!("parent `{}` cancelled: {reason}", self.instance_id),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// The new events of this turn, in command order, and the tasks and children that go with
    /// them, followed by `TimerCancelled` for timers the code abandoned.
    pub(crate) fn drain_new(&mut self) -> (Vec<HistoryEvent>, Vec<NewTask>, Vec<NewInstance>) {
        let (mut events, mut tasks, mut children) = (Vec::new(), Vec::new(), Vec::new());
        let parent = self.instance_id.clone();
        for (id, slot) in self.slots.iter_mut() {
            if let Some(event) = slot.new_event.take() {
                if let Command::Child {
                    instance_id,
                    instance_type,
                    version,
                    input,
                } = &slot.command
                {
                    let mut child = NewInstance::new(instance_id, instance_type, input.clone());
                    child.version = *version;
                    child.queue = self.queue.clone();
                    child.parent = Some(quark_history::ParentRef {
                        instance_id: parent.clone(),
                        command: *id,
                    });
                    children.push(child);
                }
                events.push(event);
            }
            tasks.extend(slot.task.take());
        }
        for (id, slot) in &self.slots {
            let unsettled = slot.result.is_none() && !self.settled_timers.contains(id);
            if slot.abandoned && unsettled {
                events.push(HistoryEvent::TimerCancelled { command: *id });
            }
        }
        (events, tasks, children)
    }
}
