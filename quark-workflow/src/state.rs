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

/// One issued command whose future may still ask for its result.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) command: Command,
    pub(crate) result: Option<Resolution>,
    /// The sequence number of the event that resolved it (history order for `select`).
    pub(crate) resolved_at: u64,
    pub(crate) waker: Option<Waker>,
    /// A timer whose future was dropped before it fired.
    pub(crate) abandoned: bool,
    /// Its future was dropped: the slot goes once the command is settled.
    pub(crate) orphaned: bool,
}

/// A command the history does not hold yet: issued by this run, to be recorded by its turn.
#[derive(Debug)]
pub(crate) struct Fresh {
    pub(crate) command: Command,
    /// The recording event and the task to enqueue with it, until the turn takes them.
    pub(crate) event: Option<HistoryEvent>,
    pub(crate) task: Option<NewTask>,
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

/// What one run of an orchestration knows and has decided. It learns the history in pieces (the
/// whole of it for a replay, only the new events for a warm instance's next turn), and a run fed
/// a history in pieces ends in the same state as one fed it at once: what it learns about later
/// events is exactly what a replay of the whole would have known before running the code.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) instance_id: String,
    pub(crate) queue: String,
    /// The command events learned and not yet issued by the code, by command id.
    pub(crate) recorded: BTreeMap<CommandId, (u64, HistoryEvent)>,
    /// The sequence number of the last event learned that records a decision of the code (a
    /// command, or the end of the run): before it, the code is replaying what it did.
    pub(crate) last_decision: u64,
    /// Timers that fired or were cancelled in events learned but not yet delivered.
    pub(crate) settled_timers: BTreeSet<CommandId>,
    /// Commands whose futures may still ask for their result.
    pub(crate) slots: BTreeMap<CommandId, Slot>,
    /// Commands issued beyond what the history held when they were issued.
    pub(crate) fresh: BTreeMap<CommandId, Fresh>,
    /// Results that came before their command was issued, with the sequence number of their
    /// event. A child is created (with its first task) just before the commit that records its
    /// start, so it can end, and its result reach this history, before that commit lands.
    pub(crate) early: BTreeMap<CommandId, (Resolution, u64)>,
    pub(crate) next_command: CommandId,
    /// The sequence number and time of the event being processed.
    pub(crate) seq: u64,
    pub(crate) now: Timestamp,
    /// The approximate encoded size of the events delivered so far.
    pub(crate) history_bytes: u64,
    pub(crate) signals: HashMap<String, VecDeque<(u64, Payload)>>,
    pub(crate) signal_wakers: Vec<Waker>,
    pub(crate) cancel: Cancel,
    /// The sequence number of the `CancelRequested` event, once delivered.
    pub(crate) cancel_seq: u64,
    pub(crate) nondeterminism: Option<Nondeterminism>,
    /// A command this run issued ahead of the history was recorded differently: the run saw
    /// less than a replay of the whole would have, so it must be rebuilt from the history.
    pub(crate) stale: bool,
    /// The largest `resolved_at` of the commands resolved during the current poll of a branch.
    pub(crate) stamp: u64,
    /// Set when the run is torn down: futures dropped after that are not abandoned by the code.
    pub(crate) turn_over: bool,
    /// Patches the code asked about, and whether any answer sent it down the old branch.
    pub(crate) patches: BTreeMap<String, bool>,
    /// The query and update handlers the code declared.
    pub(crate) handlers: crate::request::Handlers,
    /// The ids of the updates accepted so far (`UpdateAccepted` delivered).
    pub(crate) updates_accepted: std::collections::HashSet<String>,
    /// Set while a query's handler or an update's validator runs: they read the state and may
    /// not issue commands (a warm run would keep them, and commit them with its next turn).
    pub(crate) read_only: bool,
    entropy: u64,
}

impl State {
    pub(crate) fn new(instance_id: &str, queue: &str) -> Self {
        State {
            instance_id: instance_id.to_string(),
            queue: queue.to_string(),
            recorded: BTreeMap::new(),
            last_decision: 0,
            settled_timers: BTreeSet::new(),
            slots: BTreeMap::new(),
            fresh: BTreeMap::new(),
            early: BTreeMap::new(),
            next_command: 1,
            seq: 0,
            now: Timestamp::EPOCH,
            history_bytes: 0,
            signals: HashMap::new(),
            signal_wakers: Vec::new(),
            cancel: Cancel::None,
            cancel_seq: 0,
            nondeterminism: None,
            stale: false,
            stamp: 0,
            turn_over: false,
            patches: BTreeMap::new(),
            handlers: crate::request::Handlers::default(),
            updates_accepted: std::collections::HashSet::new(),
            read_only: false,
            entropy: 0,
        }
    }

    /// Learns `events` (the next part of the history) before any of them is delivered, as a
    /// replay of the whole history knows every recorded command before it runs the code. A
    /// command this run issued ahead of the history is checked against its recorded event here:
    /// the same command is now simply recorded; another one makes the run stale.
    pub(crate) fn learn(&mut self, events: &[RecordedEvent]) {
        for e in events {
            if crate::command::is_command_event(&e.event) || e.event.closing_status().is_some() {
                self.last_decision = self.last_decision.max(e.seq);
            }
            match &e.event {
                HistoryEvent::TimerFired { command } | HistoryEvent::TimerCancelled { command } => {
                    self.settled_timers.insert(*command);
                }
                ev if crate::command::is_command_event(ev) => {
                    let Some(id) = ev.command() else { continue };
                    if let Some(fresh) = self.fresh.remove(&id) {
                        // A side effect's code saw its fresh value: the recorded one must be it.
                        let same_value = match (&fresh.command, ev) {
                            (
                                Command::SideEffect { value },
                                HistoryEvent::SideEffectRecorded { value: old, .. },
                            ) => crate::command::same_payload(value, old),
                            _ => true,
                        };
                        if fresh.command.check(ev).is_err() || !same_value {
                            self.stale = true;
                        }
                    } else if id < self.next_command {
                        // Issued with the history at hand, so it cannot be learned again.
                        self.stale = true;
                    } else {
                        self.recorded.insert(id, (e.seq, ev.clone()));
                    }
                }
                _ => {}
            }
        }
    }

    /// A rough measure of the memory the run's bookkeeping holds, in bytes.
    pub(crate) fn footprint(&self) -> usize {
        let payload = |p: &Payload| p.len();
        let command = |c: &Command| match c {
            Command::Activity { name, input, queue } => name.len() + input.len() + queue.len(),
            Command::Child {
                instance_id,
                instance_type,
                input,
                ..
            } => instance_id.len() + instance_type.len() + input.len(),
            Command::SideEffect { value } => value.len(),
            Command::Patch { patch } => patch.len(),
            Command::Signal {
                instance_id,
                name,
                payload,
            } => instance_id.len() + name.len() + payload.len(),
            Command::Timer { .. } => 0,
            Command::UpdateCompleted { update_id, result } => {
                update_id.len()
                    + result
                        .as_ref()
                        .map_or_else(|f| f.message.len(), |p| p.len())
            }
        };
        let slots: usize = self
            .slots
            .values()
            .map(|s| {
                std::mem::size_of::<Slot>()
                    + command(&s.command)
                    + match &s.result {
                        Some(Resolution::Value(p)) => payload(p),
                        Some(Resolution::Failed(f)) => f.message.len(),
                        None => 0,
                    }
            })
            .sum();
        let recorded: usize = self
            .recorded
            .values()
            .map(|(_, e)| std::mem::size_of::<HistoryEvent>() + event_bytes(e))
            .sum();
        let fresh: usize = self
            .fresh
            .values()
            .map(|f| std::mem::size_of::<Fresh>() + 2 * command(&f.command))
            .sum();
        let signals: usize = self
            .signals
            .iter()
            .map(|(name, q)| name.len() + q.iter().map(|(_, p)| 16 + payload(p)).sum::<usize>())
            .sum();
        std::mem::size_of::<State>()
            + slots
            + recorded
            + fresh
            + signals
            + self.settled_timers.len() * 16
            + self.early.len() * (std::mem::size_of::<Resolution>() + 16)
            + self.patches.keys().map(|p| p.len() + 8).sum::<usize>()
            + self
                .updates_accepted
                .iter()
                .map(|id| id.len() + 16)
                .sum::<usize>()
    }

    /// Issues a command: matches it against the history, or marks it new. Commands that are
    /// answered at once (side effects, patches) get no slot: no future waits for them.
    pub(crate) fn issue(
        &mut self,
        command: Command,
        site: CallSite,
        task: impl FnOnce(CommandId) -> Option<NewTask>,
    ) -> CommandId {
        assert!(
            !self.read_only,
            "a query's handler or an update's validator only reads the orchestration's state: \
             it cannot call activities, sleep, send signals or record side effects"
        );
        let id = self.next_command;
        self.next_command += 1;
        match self.recorded.remove(&id) {
            Some((seq, event)) => {
                if let Err(actual) = command.check(&event) {
                    self.diverge(Nondeterminism {
                        command: id,
                        seq: Some(seq),
                        expected: describe_event(&event),
                        expected_site: event_site(&event),
                        actual,
                        actual_site: Some(site),
                    });
                }
            }
            None => {
                let fresh = Fresh {
                    event: Some(command.to_event(id, &site)),
                    task: task(id),
                    command: command.clone(),
                };
                self.fresh.insert(id, fresh);
            }
        }
        if matches!(
            command,
            Command::Activity { .. } | Command::Timer { .. } | Command::Child { .. }
        ) {
            self.slots.insert(
                id,
                Slot {
                    command,
                    result: None,
                    resolved_at: 0,
                    waker: None,
                    abandoned: false,
                    orphaned: false,
                },
            );
            if let Some((resolution, seq)) = self.early.remove(&id)
                && let Some(slot) = self.slots.get_mut(&id)
            {
                slot.result = Some(resolution);
                slot.resolved_at = seq;
            }
        }
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

    /// Resolves command `id` with the event at the current sequence number. A command whose
    /// future is gone is forgotten instead: nobody will ask for its result.
    pub(crate) fn resolve(&mut self, id: CommandId, resolution: Resolution) {
        let seq = self.seq;
        self.settled_timers.remove(&id);
        let Some(slot) = self.slots.get_mut(&id) else {
            // Not issued yet: kept for when it is (a result of a command already issued and
            // gone is nobody's).
            if id >= self.next_command {
                self.early.insert(id, (resolution, seq));
            }
            return;
        };
        if slot.orphaned {
            self.slots.remove(&id);
            return;
        }
        slot.result = Some(resolution);
        slot.resolved_at = seq;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    /// A timer the code abandoned is cancelled in the history: its slot goes.
    pub(crate) fn timer_cancelled(&mut self, id: CommandId) {
        self.settled_timers.remove(&id);
        if self.slots.get(&id).is_some_and(|s| s.orphaned) {
            self.slots.remove(&id);
        }
    }

    /// Whether a future that Quark drives is waiting: a command's, a signal's. When the code is
    /// pending and none is, it waits on something no history event can wake.
    pub(crate) fn anything_waits(&self) -> bool {
        !self.signal_wakers.is_empty() || self.slots.values().any(|s| s.waker.is_some())
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
        assert!(
            !self.read_only,
            "a query's handler or an update's validator cannot draw random values"
        );
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
    /// them, followed by `TimerCancelled` for timers the code abandoned. Each is handed out once.
    pub(crate) fn drain_new(&mut self) -> Drained {
        let (mut events, mut tasks, mut children) = (Vec::new(), Vec::new(), Vec::new());
        let mut homes = Vec::new();
        let parent = self.instance_id.clone();
        for (id, fresh) in self.fresh.iter_mut() {
            if let Some(event) = fresh.event.take() {
                if let Command::Child {
                    instance_id,
                    instance_type,
                    version,
                    input,
                } = &fresh.command
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
            if let Some(task) = fresh.task.take() {
                if let Command::Activity { name, input, .. } = &fresh.command
                    && let Some(stream) = crate::entity::stream_of_call(name, input)
                {
                    homes.push((tasks.len(), stream));
                }
                tasks.push(task);
            }
        }
        for (id, slot) in &self.slots {
            let unsettled = slot.result.is_none() && !self.settled_timers.contains(id);
            if slot.abandoned && unsettled {
                events.push(HistoryEvent::TimerCancelled { command: *id });
            }
        }
        Drained {
            events,
            tasks,
            children,
            homes,
        }
    }
}

/// What [`State::drain_new`] hands out.
pub(crate) struct Drained {
    pub(crate) events: Vec<HistoryEvent>,
    pub(crate) tasks: Vec<NewTask>,
    pub(crate) children: Vec<NewInstance>,
    /// (index in `tasks`, stream): the entity commands among the tasks, with the stream each
    /// works on.
    pub(crate) homes: Vec<(usize, String)>,
}

/// The approximate encoded size of an event: its payloads and strings, and a fixed part for the
/// rest (tags, numbers, the envelope).
pub(crate) fn event_bytes(event: &HistoryEvent) -> usize {
    const ENVELOPE: usize = 48;
    let site = |s: &Option<CallSite>| s.as_ref().map_or(0, |s| s.file.len() + 16);
    ENVELOPE
        + match event {
            HistoryEvent::WorkflowStarted {
                instance_type,
                input,
                ..
            } => instance_type.len() + input.len() + 32,
            HistoryEvent::ActivityScheduled {
                activity,
                input,
                queue,
                site: s,
                ..
            } => activity.len() + input.len() + queue.len() + site(s),
            HistoryEvent::ActivityCompleted { output, .. }
            | HistoryEvent::ChildCompleted { output, .. }
            | HistoryEvent::WorkflowCompleted { output } => output.len(),
            HistoryEvent::ActivityFailed { failure, .. }
            | HistoryEvent::ChildFailed { failure, .. }
            | HistoryEvent::WorkflowFailed { failure } => failure.message.len() + 16,
            HistoryEvent::TimerCreated { site: s, .. } => 16 + site(s),
            HistoryEvent::ChildStarted {
                instance_id,
                instance_type,
                input,
                site: s,
                ..
            } => instance_id.len() + instance_type.len() + input.len() + site(s),
            HistoryEvent::SideEffectRecorded { value, site: s, .. } => value.len() + site(s),
            HistoryEvent::PatchMarker { patch, .. } => patch.len(),
            HistoryEvent::SignalReceived { name, payload } => name.len() + payload.len(),
            HistoryEvent::SignalSent {
                instance_id,
                name,
                payload,
                site: s,
                ..
            } => instance_id.len() + name.len() + payload.len() + site(s),
            HistoryEvent::CancelRequested { reason }
            | HistoryEvent::WorkflowCancelled { reason }
            | HistoryEvent::WorkflowTerminated { reason } => reason.len(),
            HistoryEvent::ContinuedAsNew {
                new_instance_id,
                input,
            } => new_instance_id.len() + input.len(),
            HistoryEvent::UpdateAccepted {
                update_id,
                name,
                payload,
            } => update_id.len() + name.len() + payload.len(),
            HistoryEvent::UpdateCompleted {
                update_id, result, ..
            } => {
                update_id.len()
                    + result
                        .as_ref()
                        .map_or_else(|f| f.message.len() + 16, |p| p.len())
            }
            _ => 8,
        }
}
