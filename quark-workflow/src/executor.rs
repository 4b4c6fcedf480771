//! The deterministic replay executor.
//!
//! [`replay`] runs orchestration code against a history with no I/O: it delivers the events one at
//! a time, in history order, and polls the orchestration's future (on this thread, with its own
//! waker) after each event that can wake it. Commands the code issues are matched against the
//! recorded ones by command id; whatever the code asks for beyond the history comes back as new
//! events, tasks and children. A live turn and a replay of the same history are the same
//! computation, so replaying any prefix of a history never re-emits a command the prefix holds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::future::LocalBoxFuture;
use quark_history::{Failure, HistoryEvent, NewInstance, NewTask, Payload, RecordedEvent};

use crate::command::{describe_event, event_site, is_command_event, same_payload};
use crate::context::OrchestrationContext;
use crate::error::{Nondeterminism, OrchestrationError};
use crate::registry::ErasedOrchestration;
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
        }
    }
}

#[derive(Debug, Default)]
struct Flag(AtomicBool);

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
    let ctx = OrchestrationContext::new(instance_id, queue, history);
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut root: Option<LocalBoxFuture<'static, Result<Payload, OrchestrationError>>> = None;
    let mut result: Option<Result<Payload, OrchestrationError>> = None;
    let mut started: Option<(String, u32)> = None;
    let mut closed = false;

    for rec in history {
        {
            let mut st = ctx.state.borrow_mut();
            st.seq = rec.seq;
            st.now = rec.recorded_at;
        }
        match &rec.event {
            HistoryEvent::WorkflowStarted {
                input,
                instance_type,
                version,
                ..
            } => {
                started = Some((instance_type.clone(), *version));
                root = Some(orchestration.start(ctx.clone(), input));
                flag.wake_by_ref();
            }
            ev if is_command_event(ev) => check_issued(&ctx, rec, result.is_some()),
            HistoryEvent::ActivityCompleted {
                command, output, ..
            }
            | HistoryEvent::ChildCompleted { command, output } => {
                resolve(&ctx, *command, Resolution::Value(output.clone()))
            }
            HistoryEvent::ActivityFailed {
                command, failure, ..
            }
            | HistoryEvent::ChildFailed { command, failure } => {
                resolve(&ctx, *command, Resolution::Failed(failure.clone()))
            }
            HistoryEvent::TimerFired { command } => {
                resolve(&ctx, *command, Resolution::Value(Payload::unit()))
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
            HistoryEvent::CancelRequested { reason } => {
                let mut st = ctx.state.borrow_mut();
                if st.cancel == Cancel::None {
                    st.cancel = Cancel::Requested(reason.clone());
                    st.cancel_seq = rec.seq;
                }
                st.wake_all();
            }
            HistoryEvent::WorkflowTerminated { .. } => {
                closed = true;
                break;
            }
            ev if ev.closing_status().is_some() => {
                check_closing(&ctx, rec, result.as_ref(), instance_id);
                closed = true;
                break;
            }
            // TimerCancelled, and kinds this build does not know: nothing to deliver.
            _ => {}
        }
        if ctx.state.borrow().nondeterminism.is_some() {
            break;
        }
        if let Err(message) = poll_root(&mut root, &mut result, &flag, &waker) {
            ctx.state.borrow_mut().turn_over = true;
            return Replay::nothing(Outcome::Panicked(message), BTreeMap::new());
        }
    }

    let mut state = ctx.state.borrow_mut();
    let patches = std::mem::take(&mut state.patches);
    if let Some(n) = state.nondeterminism.take() {
        state.turn_over = true;
        drop(state);
        drop(root);
        return Replay::nothing(Outcome::Nondeterminism(n), patches);
    }
    if closed {
        state.turn_over = true;
        drop(state);
        drop(root);
        return Replay::nothing(Outcome::Closed, patches);
    }
    let (mut new_events, tasks, mut children) = state.drain_new();
    let notices = state.cancel_notices();
    state.turn_over = true;
    drop(state);
    drop(root);
    let outcome = match result {
        None => Outcome::Waiting,
        Some(result) => {
            let (event, outcome) = closing(result, instance_id);
            if let (
                HistoryEvent::ContinuedAsNew {
                    new_instance_id,
                    input,
                },
                Some((ty, version)),
            ) = (&event, started)
            {
                let mut next = NewInstance::new(new_instance_id, ty, input.clone());
                next.version = version;
                next.queue = queue.to_string();
                next.continued_from = Some(instance_id.to_string());
                children.push(next);
            }
            new_events.push(event);
            outcome
        }
    };
    Replay {
        new_events,
        tasks,
        children,
        outcome,
        patches,
        notices,
    }
}

/// How often the orchestration may be polled for one history event.
const MAX_POLLS_PER_EVENT: u32 = 10_000;

/// Polls the orchestration while something woke it. A panic in the user's code is caught and
/// returned as its message: the turn is abandoned, not the worker.
fn poll_root(
    root: &mut Option<LocalBoxFuture<'static, Result<Payload, OrchestrationError>>>,
    result: &mut Option<Result<Payload, OrchestrationError>>,
    flag: &Flag,
    waker: &Waker,
) -> Result<(), String> {
    let mut cx = Context::from_waker(waker);
    let mut polls = 0u32;
    while flag.0.swap(false, Ordering::SeqCst) {
        // Code that wakes itself forever (a busy `yield_now` loop) would hold the worker.
        polls += 1;
        if polls > MAX_POLLS_PER_EVENT {
            return Err(format!(
                "the orchestration woke itself {MAX_POLLS_PER_EVENT} times without waiting on \
                 a `ctx` future"
            ));
        }
        let Some(fut) = root.as_mut() else {
            return Ok(());
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(&mut cx)));
        match polled {
            Ok(Poll::Ready(r)) => {
                *result = Some(r);
                *root = None;
                return Ok(());
            }
            Ok(Poll::Pending) => {}
            Err(panic) => {
                // Its state is unknown after a panic: forget it rather than run its destructors.
                if let Some(fut) = root.take() {
                    std::mem::forget(fut);
                }
                return Err(panic_message(panic.as_ref()));
            }
        }
    }
    Ok(())
}

/// The message of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_string())
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
    if st.slots.contains_key(&id) {
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
