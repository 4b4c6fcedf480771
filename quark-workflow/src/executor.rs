//! The deterministic replay executor.
//!
//! [`replay`] runs orchestration code against a history with no I/O: it delivers the events one at
//! a time, in history order, and polls the orchestration's future (on this thread, with its own
//! waker) after each event that can wake it. Commands the code issues are matched against the
//! recorded ones by command id; whatever the code asks for beyond the history comes back as new
//! events, tasks and children. A live turn and a replay of the same history are the same
//! computation, so replaying any prefix of a history never re-emits a command the prefix holds.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

use futures::future::LocalBoxFuture;
use quark_history::{
    Failure, HistoryEvent, NewInstance, NewTask, ParentRef, Payload, RecordedEvent, Timestamp,
};

use crate::command::{describe_event, event_site, is_command_event, same_payload};
use crate::context::OrchestrationContext;
use crate::error::{Nondeterminism, OrchestrationError};
use crate::registry::ErasedOrchestration;
use crate::request::Running;
use crate::state::{Cancel, Resolution};

/// Where the code stands after a replay.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// It waits for events that are not in the history yet.
    Waiting,
    /// It returned a value (`WorkflowCompleted` is among the new events).
    Completed(Payload),
    /// It returned an error (`WorkflowFailed` is among the new events).
    Failed(Failure),
    /// It ended after a cancellation request (`WorkflowCancelled` is among the new events).
    Cancelled(String),
    /// It continued as new (`ContinuedAsNew` is among the new events); the new run is in
    /// [`Replay::children`], to be created.
    ContinuedAsNew(Payload),
    /// The history had already ended; nothing was run past its end.
    Closed,
    /// The code no longer matches the history. Nothing is to be appended.
    Nondeterminism(Nondeterminism),
    /// The code panicked (the message). Nothing is to be appended; like a nondeterminism, it
    /// needs a code fix, not a retry.
    Panicked(String),
    /// The code waits on a future that Quark does not drive (a Tokio timer, a channel), so no
    /// history event can ever wake it; the message names the likely cause. Like a panic, it
    /// needs a code fix.
    Stuck(String),
}

/// What a replay produced: the events, tasks and instances to write after the given history.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Events to append, in order.
    pub new_events: Vec<HistoryEvent>,
    /// Activity and timer tasks for the new commands.
    pub tasks: Vec<NewTask>,
    /// Instances to create: new children, and the next run after `continue_as_new`.
    pub children: Vec<NewInstance>,
    /// Where the code stands.
    pub outcome: Outcome,
    /// Every patch the code asked about (`ctx.patched`), with `true` if this history took its
    /// old branch at least once: the instance still depends on the code before the patch.
    pub patches: BTreeMap<String, bool>,
    /// Events for other instances: the cancellation of this instance's running children, the
    /// first time a turn sees this instance's cancellation (again, if that turn did not commit).
    pub notices: Vec<(String, HistoryEvent)>,
    /// Signals the code sent to other instances (`ctx.send`) in this turn, as the
    /// `SignalReceived` each receiver's history gets, in the order they were sent.
    pub signals: Vec<(String, HistoryEvent)>,
    /// The entity commands among [`tasks`](Self::tasks): (index in `tasks`, the entity's
    /// stream). Such a command runs best where its entity is live.
    pub homes: Vec<(usize, String)>,
}

impl Replay {
    /// Nothing to write, with `outcome`.
    fn nothing(outcome: Outcome, patches: BTreeMap<String, bool>) -> Self {
        Replay {
            new_events: Vec::new(),
            tasks: Vec::new(),
            children: Vec::new(),
            outcome,
            patches,
            notices: Vec::new(),
            signals: Vec::new(),
            homes: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Flag(AtomicBool);

#[path = "executor_poll.rs"]
mod poll;
#[path = "executor_requests.rs"]
mod requests;

use poll::panic_hint;
pub(crate) use poll::panic_message;

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The id of the run that continues `instance_id`: `id~2`, then `id~3`, ...
pub(crate) fn next_run_id(instance_id: &str) -> String {
    if let Some((base, n)) = instance_id.rsplit_once('~')
        && let Ok(n) = n.parse::<u64>()
    {
        return format!("{base}~{}", n + 1);
    }
    format!("{instance_id}~2")
}

/// Replays `history` (of instance `instance_id`, whose orchestration tasks use `queue`) against
/// `orchestration`. Pure: no I/O, no clock, and the same history always gives the same answer
/// (side effects aside, which run once and are recorded).
pub(crate) fn replay(
    orchestration: &dyn ErasedOrchestration,
    instance_id: &str,
    queue: &str,
    history: &[RecordedEvent],
) -> Replay {
    let mut executor = Executor::new(instance_id, queue);
    executor.feed(orchestration, history);
    executor.turn(queue)
}

/// One run of an orchestration, kept between turns: a warm instance's next turn feeds it only
/// the events that are new, instead of replaying the whole history into a fresh one.
///
/// Feeding a history in pieces reaches the state that feeding it at once reaches (see
/// [`State::learn`](crate::state::State::learn)); when it cannot (a command issued ahead of the
/// history was recorded differently, by other code), the executor says it is
/// [`stale`](Self::is_stale) and must be rebuilt from the history.
pub(crate) struct Executor {
    ctx: OrchestrationContext,
    flag: Arc<Flag>,
    waker: Waker,
    root: Option<LocalBoxFuture<'static, Result<Payload, OrchestrationError>>>,
    result: Option<Result<Payload, OrchestrationError>>,
    /// The handlers of the accepted updates that have not returned yet, in acceptance order.
    updates: Vec<Running>,
    /// The type and version of the run, from `WorkflowStarted`.
    started: Option<(String, u32)>,
    /// The parent, for a child's run.
    parent: Option<ParentRef>,
    /// The history ended (a closing event was fed).
    closed: bool,
    /// The code panicked; the message.
    panicked: Option<String>,
    /// The code waits on something no event can wake; why.
    stuck: Option<String>,
    /// The sequence number the next event fed must have.
    next_seq: u64,
    /// The events the last turn decided, kept until they are confirmed as recorded.
    decided: Vec<HistoryEvent>,
    /// The encoded size of the run's input: what its code typically holds, decoded, for as long
    /// as it runs (see [`Executor::footprint`]).
    input_bytes: usize,
}

/// What a live run holds that the sizes [`Executor::footprint`] adds up do not show: the
/// allocations of its context (the shared cell and its maps' tables), its waker, its entry in its
/// thread's map and the index, and the allocator's headers. Measured with the memory benchmark
/// (`cargo bench -p quark-worker --bench memory`): 866 bytes a run for an orchestration that holds
/// nothing.
const RUN_OVERHEAD: usize = 864;

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("instance_id", &self.ctx.state.borrow().instance_id)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// A run that has seen nothing yet.
    pub(crate) fn new(instance_id: &str, queue: &str) -> Self {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        Executor {
            ctx: OrchestrationContext::new(instance_id, queue),
            flag,
            waker,
            root: None,
            result: None,
            updates: Vec::new(),
            started: None,
            parent: None,
            closed: false,
            panicked: None,
            stuck: None,
            next_seq: 1,
            decided: Vec::new(),
            input_bytes: 0,
        }
    }

    /// The instance the run belongs to.
    pub(crate) fn instance_id(&self) -> String {
        self.ctx.instance_id()
    }

    /// The parent instance and command, for a child's run.
    pub(crate) fn parent(&self) -> Option<ParentRef> {
        self.parent.clone()
    }

    /// The sequence number the next event fed must have: one past what the run has seen.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the run can go on: it has not ended, diverged, panicked or gone stale.
    pub(crate) fn is_live(&self) -> bool {
        let st = self.ctx.state.borrow();
        !self.closed
            && self.panicked.is_none()
            && self.stuck.is_none()
            && st.nondeterminism.is_none()
            && !st.stale
    }

    /// Whether the run has ended (a closing event was fed, or it returned).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The orchestration type the run runs, once it has seen `WorkflowStarted`.
    pub(crate) fn orchestration_type(&self) -> Option<String> {
        self.started.as_ref().map(|(ty, _)| ty.clone())
    }

    /// Whether the events of the last turn wait for [`confirm`](Self::confirm): until then the
    /// run is ahead of the history by events that may never be recorded, and nothing else may
    /// use it.
    pub(crate) fn has_unconfirmed(&self) -> bool {
        !self.decided.is_empty()
    }

    /// Whether the run saw less than a replay would have and must be rebuilt from the history.
    pub(crate) fn is_stale(&self) -> bool {
        self.ctx.state.borrow().stale
    }

    /// An estimate of the memory the run holds, in bytes: the orchestration's future (its state
    /// machine), its input (which the code typically keeps, decoded, as long as it runs), the
    /// run's bookkeeping, and a fixed overhead. The memory benchmark checks it against the
    /// resident memory warm runs really take.
    pub(crate) fn footprint(&self) -> usize {
        let future = self
            .root
            .as_ref()
            .map_or(0, |f| std::mem::size_of_val(&**f));
        RUN_OVERHEAD
            + std::mem::size_of::<Self>()
            + future
            + self.input_bytes
            + self.ctx.state.borrow().footprint()
    }

    /// How many events the run has seen, and their approximate encoded size.
    pub(crate) fn history_size(&self) -> (u64, u64) {
        let st = self.ctx.state.borrow();
        (st.seq, st.history_bytes)
    }

    /// Feeds `events`, which must continue what the run has seen (`events[0].seq ==
    /// next_seq()`); anything else makes the run stale. Events past the end of the run, or after
    /// it stopped, are ignored.
    pub(crate) fn feed(
        &mut self,
        orchestration: &dyn ErasedOrchestration,
        events: &[RecordedEvent],
    ) {
        if events.is_empty() || !self.is_live() {
            return;
        }
        // The last turn's events, if they are recorded, come back among these and are checked
        // as they are learned (the replayer feeds histories this way, without confirming).
        self.decided.clear();
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == self.next_seq + i as u64);
        if !contiguous {
            self.ctx.state.borrow_mut().stale = true;
            return;
        }
        self.ctx.state.borrow_mut().learn(events);
        if !self.is_live() {
            return;
        }
        for rec in events {
            self.next_seq = rec.seq + 1;
            if !self.deliver(orchestration, rec) {
                break;
            }
        }
        self.check_waiting();
    }

    /// Confirms that the events the last turn decided were recorded from sequence number
    /// `first` on, at `at`, and feeds them: the run is then where the history is. Returns
    /// `false` (and the run is stale) if they cannot continue it.
    pub(crate) fn confirm(
        &mut self,
        orchestration: &dyn ErasedOrchestration,
        first: u64,
        at: Timestamp,
    ) -> bool {
        let decided = std::mem::take(&mut self.decided);
        if decided.is_empty() {
            return self.is_live();
        }
        if first != self.next_seq {
            self.ctx.state.borrow_mut().stale = true;
            return false;
        }
        let instance_id = self.ctx.state.borrow().instance_id.clone();
        let events: Vec<RecordedEvent> = decided
            .into_iter()
            .enumerate()
            .map(|(i, event)| RecordedEvent {
                instance_id: instance_id.clone(),
                seq: first + i as u64,
                recorded_at: at,
                event,
                hash: String::new(),
            })
            .collect();
        self.feed(orchestration, &events);
        self.is_live() || self.closed
    }

    /// Delivers one event; `false` once nothing more is to be delivered.
    fn deliver(&mut self, orchestration: &dyn ErasedOrchestration, rec: &RecordedEvent) -> bool {
        let ctx = &self.ctx;
        {
            let mut st = ctx.state.borrow_mut();
            st.seq = rec.seq;
            st.now = rec.recorded_at;
            st.history_bytes += crate::state::event_bytes(&rec.event) as u64;
        }
        match &rec.event {
            HistoryEvent::WorkflowStarted {
                input,
                instance_type,
                version,
                parent,
                ..
            } if self.started.is_none() => {
                self.started = Some((instance_type.clone(), *version));
                self.input_bytes = input.len();
                self.parent = parent.clone();
                self.root = Some(orchestration.start(ctx.clone(), input));
                self.flag.wake_by_ref();
            }
            ev if is_command_event(ev) => check_issued(ctx, rec, self.result.is_some()),
            HistoryEvent::ActivityCompleted {
                command, output, ..
            }
            | HistoryEvent::ChildCompleted { command, output } => {
                resolve(ctx, *command, Resolution::Value(output.clone()))
            }
            HistoryEvent::ActivityFailed {
                command, failure, ..
            }
            | HistoryEvent::ChildFailed { command, failure } => {
                resolve(ctx, *command, Resolution::Failed(failure.clone()))
            }
            HistoryEvent::TimerFired { command } => {
                resolve(ctx, *command, Resolution::Value(Payload::unit()))
            }
            HistoryEvent::TimerCancelled { command } => {
                ctx.state.borrow_mut().timer_cancelled(*command)
            }
            HistoryEvent::SignalReceived { name, payload } => {
                let mut st = ctx.state.borrow_mut();
                let seq = st.seq;
                st.signals
                    .entry(name.clone())
                    .or_default()
                    .push_back((seq, payload.clone()));
                st.wake_all();
            }
            HistoryEvent::UpdateAccepted {
                update_id,
                name,
                payload,
            } => {
                let handler = {
                    let mut st = ctx.state.borrow_mut();
                    st.updates_accepted.insert(update_id.clone());
                    st.handlers.update(name)
                };
                // A handler declared when the update was accepted is declared at the same point
                // of a replay; if the code no longer declares it, the update fails (the same
                // way on every replay from here on).
                self.updates.push(match handler {
                    Ok(h) => Running {
                        update_id: update_id.clone(),
                        site: h.site.clone(),
                        future: (h.run)(ctx.clone(), payload.clone()),
                    },
                    Err(why) => Running {
                        update_id: update_id.clone(),
                        site: crate::command::caller(),
                        future: Box::pin(std::future::ready(Err(OrchestrationError::Failed(why)))),
                    },
                });
                self.flag.wake_by_ref();
            }
            HistoryEvent::CancelRequested { reason } => {
                let mut st = ctx.state.borrow_mut();
                if st.cancel == Cancel::None {
                    st.cancel = Cancel::Requested(reason.clone());
                    st.cancel_seq = rec.seq;
                }
                st.wake_all();
            }
            HistoryEvent::WorkflowTerminated { .. } => {
                self.closed = true;
                return false;
            }
            ev if ev.closing_status().is_some() => {
                check_closing(ctx, rec, self.result.as_ref(), &ctx.instance_id());
                self.closed = true;
                return false;
            }
            // Kinds this build does not know: nothing to deliver.
            _ => {}
        }
        if ctx.state.borrow().nondeterminism.is_some() {
            return false;
        }
        if let Err(message) = self.poll() {
            self.panicked = Some(panic_hint(message));
            return false;
        }
        true
    }

    /// After the events are delivered: code that is pending while no `ctx` future waits can
    /// never be woken by the history.
    fn check_waiting(&mut self) {
        if self.root.is_none() || !self.is_live() {
            return;
        }
        if !self.ctx.state.borrow().anything_waits() {
            self.stuck = Some(
                "the orchestration is waiting, but not on anything Quark drives: no activity, \
                 timer, child or signal of its `ctx` is pending. It awaits a future that no \
                 history event can wake (a `tokio::time` sleep, interval or timeout, a channel, \
                 a task handle, `futures::future::pending`). Use `ctx.sleep`, `ctx.timeout`, \
                 `ctx.wait_for_signal`, an activity or a child orchestration instead."
                    .to_string(),
            );
        }
    }

    /// What the run decided since the last turn, and where it stands. The new events are kept
    /// until [`confirm`](Self::confirm) says where they were recorded.
    pub(crate) fn turn(&mut self, queue: &str) -> Replay {
        let instance_id = self.ctx.instance_id();
        let mut state = self.ctx.state.borrow_mut();
        let patches = state.patches.clone();
        if let Some(message) = &self.panicked {
            return Replay::nothing(Outcome::Panicked(message.clone()), patches);
        }
        if let Some(n) = state.nondeterminism.clone() {
            return Replay::nothing(Outcome::Nondeterminism(n), patches);
        }
        if self.closed {
            return Replay::nothing(Outcome::Closed, patches);
        }
        if let Some(why) = &self.stuck {
            return Replay::nothing(Outcome::Stuck(why.clone()), patches);
        }
        let crate::state::Drained {
            events: mut new_events,
            tasks,
            mut children,
            homes,
        } = state.drain_new();
        let notices = state.cancel_notices();
        drop(state);
        let outcome = match self.result.take() {
            None => Outcome::Waiting,
            Some(result) => {
                let (event, outcome) = closing(result, &instance_id);
                if let (
                    HistoryEvent::ContinuedAsNew {
                        new_instance_id,
                        input,
                    },
                    Some((ty, version)),
                ) = (&event, &self.started)
                {
                    let mut next = NewInstance::new(new_instance_id, ty, input.clone());
                    next.version = *version;
                    next.queue = queue.to_string();
                    next.continued_from = Some(instance_id.to_string());
                    children.push(next);
                }
                new_events.push(event);
                // The run is over; what it returns is handed out once.
                self.closed = true;
                outcome
            }
        };
        self.decided = new_events.clone();
        let signals = new_events
            .iter()
            .filter_map(|event| match event {
                HistoryEvent::SignalSent {
                    instance_id,
                    name,
                    payload,
                    ..
                } => Some((
                    instance_id.clone(),
                    HistoryEvent::SignalReceived {
                        name: name.clone(),
                        payload: payload.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        Replay {
            new_events,
            tasks,
            children,
            outcome,
            patches,
            notices,
            signals,
            homes,
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Futures dropped from here on are torn down with the run, not abandoned by the code.
        if let Ok(mut st) = self.ctx.state.try_borrow_mut() {
            st.turn_over = true;
        }
        self.root = None;
    }
}

fn resolve(ctx: &OrchestrationContext, command: u64, resolution: Resolution) {
    ctx.state.borrow_mut().resolve(command, resolution);
}

/// A recorded command must have been issued by the time its event comes up: the turn that
/// recorded it had seen only the events before it.
fn check_issued(ctx: &OrchestrationContext, rec: &RecordedEvent, finished: bool) {
    let mut st = ctx.state.borrow_mut();
    let Some(id) = rec.event.command() else {
        return;
    };
    if id < st.next_command {
        return;
    }
    let issued = st.next_command - 1;
    let actual = if finished {
        format!("returns after {issued} commands without asking for it")
    } else {
        format!("waits after {issued} commands without asking for it")
    };
    st.diverge(Nondeterminism {
        command: id,
        seq: Some(rec.seq),
        expected: describe_event(&rec.event),
        expected_site: event_site(&rec.event),
        actual,
        actual_site: None,
    });
}

/// The recorded end of the run must be what the code returns now.
fn check_closing(
    ctx: &OrchestrationContext,
    rec: &RecordedEvent,
    result: Option<&Result<Payload, OrchestrationError>>,
    instance_id: &str,
) {
    let actual = match result {
        None => Some("is still running".to_string()),
        Some(r) => {
            let (now, _) = closing(r.clone(), instance_id);
            let same = match (&rec.event, &now) {
                (
                    HistoryEvent::WorkflowCompleted { output: a },
                    HistoryEvent::WorkflowCompleted { output: b },
                ) => same_payload(a, b),
                (
                    HistoryEvent::ContinuedAsNew { input: a, .. },
                    HistoryEvent::ContinuedAsNew { input: b, .. },
                ) => same_payload(a, b),
                (a, b) => a == b,
            };
            (!same).then(|| format!("ends with {}", summary(&now)))
        }
    };
    if let Some(actual) = actual {
        let mut st = ctx.state.borrow_mut();
        let command = st.next_command;
        st.diverge(Nondeterminism {
            command,
            seq: Some(rec.seq),
            expected: summary(&rec.event),
            expected_site: None,
            actual,
            actual_site: None,
        });
    }
}

fn summary(e: &HistoryEvent) -> String {
    match e {
        HistoryEvent::WorkflowCompleted { output } => format!("WorkflowCompleted({output:?})"),
        HistoryEvent::WorkflowFailed { failure } => format!("WorkflowFailed({})", failure.message),
        HistoryEvent::WorkflowCancelled { reason } => format!("WorkflowCancelled({reason})"),
        other => other.kind().to_string(),
    }
}

fn closing(
    result: Result<Payload, OrchestrationError>,
    instance_id: &str,
) -> (HistoryEvent, Outcome) {
    match result {
        Ok(output) => (
            HistoryEvent::WorkflowCompleted {
                output: output.clone(),
            },
            Outcome::Completed(output),
        ),
        Err(OrchestrationError::Cancelled { reason }) => (
            HistoryEvent::WorkflowCancelled {
                reason: reason.clone(),
            },
            Outcome::Cancelled(reason),
        ),
        Err(OrchestrationError::ContinueAsNew { input }) => (
            HistoryEvent::ContinuedAsNew {
                new_instance_id: next_run_id(instance_id),
                input: input.clone(),
            },
            Outcome::ContinuedAsNew(input),
        ),
        Err(e) => {
            let failure = e.to_failure();
            (
                HistoryEvent::WorkflowFailed {
                    failure: failure.clone(),
                },
                Outcome::Failed(failure),
            )
        }
    }
}
