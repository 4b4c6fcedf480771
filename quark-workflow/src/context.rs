//! The orchestration's handle on the world: every durable step goes through it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use quark_history::{HistoryEvent, Payload, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::combinator::{Join, Select};
use crate::command::{Command, caller, describe_event, event_site};
use crate::definition::{Activity, Orchestration};
use crate::error::{Nondeterminism, OrchestrationError};
use crate::future::{ActivityCall, ChildCall, CommandFuture, SignalWait, Sleep};
use crate::state::{Cancel, Shared, State};
use crate::task::{ActivityTask, TaskPayload, TimerTask};

/// What an orchestration uses instead of the clock, the network, threads and randomness.
///
/// Every method that returns a future issues a *command*: on first execution it is recorded in the
/// history and runs (an activity task, a durable timer, a child); on replay the recorded result is
/// returned. The command is issued when the method is called, not when the future is first
/// polled: `let a = ctx.call(x, &i); let b = ctx.call(y, &j);` schedules both at once, and a
/// future that is never awaited still ran. Cheap to clone; it cannot leave the orchestration's
/// thread.
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) state: Shared,
}

impl fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("OrchestrationContext")
            .field("instance_id", &s.instance_id)
            .field("seq", &s.seq)
            .finish_non_exhaustive()
    }
}

impl OrchestrationContext {
    pub(crate) fn new(instance_id: &str, queue: &str) -> Self {
        OrchestrationContext {
            state: Rc::new(RefCell::new(State::new(instance_id, queue))),
        }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.state.borrow().instance_id.clone()
    }

    /// `name` (an instance's id) in this instance's namespace: a plain name is qualified with
    /// it, a qualified one is kept (see [`quark_history::qualify`]).
    fn in_namespace(&self, name: &str) -> String {
        let st = self.state.borrow();
        quark_history::qualify(run_namespace(&st.instance_id, &st.queue), name)
    }

    /// The number of history events processed so far: grows with every step. Keep histories
    /// short: past about 10,000 events or 10 MB (the worker warns), end the run with
    /// [`continue_as_new`](Self::continue_as_new) and carry the state over in its input.
    pub fn history_len(&self) -> u64 {
        self.state.borrow().seq
    }

    /// The approximate encoded size, in bytes, of the history events processed so far (payloads
    /// and strings, plus a fixed part per event). See [`history_len`](Self::history_len).
    pub fn history_size(&self) -> u64 {
        self.state.borrow().history_bytes
    }

    /// The deterministic "now": the recorded time of the history event being processed.
    pub fn now(&self) -> Timestamp {
        self.state.borrow().now
    }

    /// Whether the code is re-executing what its history already records (a later decision of
    /// the code is in the history). Use it to keep logs and metrics from repeating on replay;
    /// never to decide what to do.
    pub fn is_replaying(&self) -> bool {
        let st = self.state.borrow();
        st.last_decision > st.seq
    }

    /// Whether cancellation was requested (the code saw it, or will at its next await).
    pub fn is_cancel_requested(&self) -> bool {
        self.state.borrow().cancel != Cancel::None
    }

    /// Calls activity `A` with `input`. Passing an input of another type does not compile.
    #[track_caller]
    pub fn call<A: Activity>(&self, activity: A, input: &A::Input) -> ActivityCall<A::Output> {
        let site = caller();
        self.schedule(activity, input, A::options(), site)
    }

    /// Calls activity `A` with `input` under `options` instead of the activity's own (another
    /// queue, a tighter timeout, more retries).
    #[track_caller]
    pub fn call_with<A: Activity>(
        &self,
        activity: A,
        input: &A::Input,
        options: crate::ActivityOptions,
    ) -> ActivityCall<A::Output> {
        let site = caller();
        self.schedule(activity, input, options, site)
    }

    fn schedule<A: Activity>(
        &self,
        activity: A,
        input: &A::Input,
        options: crate::ActivityOptions,
        site: quark_history::CallSite,
    ) -> ActivityCall<A::Output> {
        let _ = activity;
        let payload = match Payload::json(input) {
            Ok(p) => p,
            Err(e) => return ActivityCall::failed(OrchestrationError::payload(e)),
        };
        self.schedule_named(Cow::Borrowed(A::NAME), payload, options, site)
    }

    /// Calls the activity registered as `name` with an already encoded `input`, under `options`
    /// (which, unlike [`call`](Self::call), are not looked up: the caller passes the activity's
    /// own, or overrides). For code that only knows activities by name, like the job workflow
    /// orchestration; the output is decoded as `T` (`serde_json::Value` keeps it untyped).
    #[track_caller]
    pub(crate) fn call_by_name<T>(
        &self,
        name: &str,
        input: Payload,
        options: crate::ActivityOptions,
    ) -> ActivityCall<T> {
        let site = caller();
        self.schedule_named(Cow::Owned(name.to_string()), input, options, site)
    }

    pub(crate) fn schedule_named<T>(
        &self,
        name: Cow<'static, str>,
        payload: Payload,
        options: crate::ActivityOptions,
        site: quark_history::CallSite,
    ) -> ActivityCall<T> {
        let mut st = self.state.borrow_mut();
        // An activity's own queue is its namespace's, as the instance is.
        let queue = match &options.queue {
            Some(queue) => quark_history::qualify(run_namespace(&st.instance_id, &st.queue), queue),
            None => st.queue.clone(),
        };
        let (instance_id, orchestration_queue, now) =
            (st.instance_id.clone(), st.queue.clone(), st.now);
        let command = Command::Activity {
            name: name.to_string(),
            input: payload.clone(),
            queue: queue.clone(),
        };
        let id = st.issue(command, site, |command| {
            let task = ActivityTask {
                instance_id,
                command,
                activity: name.to_string(),
                input: payload,
                orchestration_queue,
                scheduled_at: now,
                options,
            };
            Some(TaskPayload::activity_task(task, &queue))
        });
        drop(st);
        ActivityCall::new(CommandFuture::new(&self.state, id), name)
    }

    /// A durable timer: resolves `d` after the current history time, surviving restarts.
    #[track_caller]
    pub fn sleep(&self, d: Duration) -> Sleep {
        let site = caller();
        Sleep::new(CommandFuture::new(&self.state, self.timer(d, site)))
    }

    /// A durable timer that fires at `at` (at once, if `at` is not after the current history
    /// time).
    #[track_caller]
    pub fn sleep_until(&self, at: Timestamp) -> Sleep {
        let site = caller();
        let d = at.since(self.now());
        Sleep::new(CommandFuture::new(&self.state, self.timer(d, site)))
    }

    pub(crate) fn timer(&self, d: Duration, site: quark_history::CallSite) -> u64 {
        let mut st = self.state.borrow_mut();
        let fire_at = st.now + d;
        let (instance_id, queue) = (st.instance_id.clone(), st.queue.clone());
        st.issue(Command::Timer { fire_at }, site, |command| {
            Some(TaskPayload::timer_task(TimerTask {
                instance_id,
                command,
                fire_at,
                orchestration_queue: queue,
            }))
        })
    }

    /// Waits for the next `signal` (declared once as a [`Signal`](crate::Signal) constant, which
    /// the sender uses too). Signals that arrive before anyone waits are buffered. Add
    /// [`.timeout(d)`](SignalWait::timeout) to stop waiting.
    pub fn wait_for<T: DeserializeOwned>(&self, signal: crate::Signal<T>) -> SignalWait<T> {
        SignalWait::new(self.clone(), signal.name())
    }

    /// Waits for the next signal called `name` and decodes it as `T`: an untyped
    /// [`wait_for`](Self::wait_for). Signals that arrive before anyone waits are buffered. Add
    /// [`.timeout(d)`](SignalWait::timeout) to stop waiting.
    pub fn wait_for_signal<T: DeserializeOwned>(&self, name: &str) -> SignalWait<T> {
        SignalWait::new(self.clone(), name)
    }

    /// Sends `signal` with `value` to orchestration `instance_id`, which receives it through
    /// `ctx.wait_for(signal)`: the typed [`signal`](Self::signal).
    #[track_caller]
    pub fn send<T: Serialize>(
        &self,
        instance_id: &str,
        signal: crate::Signal<T>,
        value: &T,
    ) -> Result<(), OrchestrationError> {
        let site = caller();
        self.signal_at(instance_id, signal.name(), value, site)
    }

    /// Sends signal `name` with `value` to orchestration `instance_id`.
    ///
    /// The send is recorded in this history (`SignalSent`) and the signal is appended to the
    /// receiver's history in the same commit as the turn that sent it: it arrives exactly once,
    /// and after the turn's other effects are written. A replay sends nothing again. If the
    /// receiver is warm on this worker, its next turn runs at once and commits with this one
    /// (local delivery). A signal to an instance that has ended, or that does not exist, is
    /// dropped (logged, and counted as `quark_signals_dropped_total` on a worker); the sender
    /// goes on.
    #[track_caller]
    pub fn signal<T: Serialize>(
        &self,
        instance_id: &str,
        name: &str,
        value: &T,
    ) -> Result<(), OrchestrationError> {
        let site = caller();
        self.signal_at(instance_id, name, value, site)
    }

    fn signal_at<T: Serialize>(
        &self,
        instance_id: &str,
        name: &str,
        value: &T,
        site: quark_history::CallSite,
    ) -> Result<(), OrchestrationError> {
        // A plain name is an instance of this one's namespace.
        let instance_id = &self.in_namespace(instance_id);
        if *instance_id == self.instance_id() {
            return Err(OrchestrationError::failed(format!(
                "`{instance_id}` sends signal `{name}` to itself; a run's own state needs no signal"
            )));
        }
        let payload = Payload::json(value).map_err(OrchestrationError::payload)?;
        let command = Command::Signal {
            instance_id: instance_id.to_string(),
            name: name.to_string(),
            payload,
        };
        self.state.borrow_mut().issue(command, site, |_| None);
        Ok(())
    }

    /// Starts child orchestration `O` under the id `{this id}:{command id}` and waits for its output.
    #[track_caller]
    pub fn call_child<O: Orchestration>(&self, child: O, input: &O::Input) -> ChildCall<O::Output> {
        let id = format!(
            "{}:{}",
            self.instance_id(),
            self.state.borrow().next_command
        );
        self.call_child_with_id(child, &id, input)
    }

    /// Starts child orchestration `O` under `instance_id` and waits for its output.
    #[track_caller]
    pub fn call_child_with_id<O: Orchestration>(
        &self,
        child: O,
        instance_id: &str,
        input: &O::Input,
    ) -> ChildCall<O::Output> {
        let _ = child;
        let site = caller();
        let instance_id = &self.in_namespace(instance_id);
        let input = match Payload::json(input) {
            Ok(p) => p,
            Err(e) => return ChildCall::failed(OrchestrationError::payload(e), instance_id),
        };
        let command = Command::Child {
            instance_id: instance_id.to_string(),
            instance_type: O::NAME.to_string(),
            version: O::VERSION,
            input,
        };
        let id = self.state.borrow_mut().issue(command, site, |_| None);
        ChildCall::new(CommandFuture::new(&self.state, id), instance_id)
    }

    /// Runs `f` once and records its value; replays return the recorded value without running it.
    #[track_caller]
    pub fn side_effect<T, F>(&self, f: F) -> Result<T, OrchestrationError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let site = caller();
        let next = self.state.borrow().next_command;
        let recorded = self.state.borrow().recorded.get(&next).cloned();
        let value = match recorded {
            Some((_, HistoryEvent::SideEffectRecorded { value, .. })) => value,
            // Not recorded yet (run it), or recorded as something else (`issue` reports that).
            _ => Payload::json(&f()).map_err(OrchestrationError::payload)?,
        };
        let out = value.decode::<T>();
        let mut st = self.state.borrow_mut();
        st.issue(Command::SideEffect { value }, site, |_| None);
        out.map_err(OrchestrationError::payload)
    }

    /// A random number, recorded as a side effect.
    #[track_caller]
    pub fn random(&self) -> u64 {
        let site = caller();
        let fresh = self.state.borrow_mut().entropy();
        self.recorded_value(fresh, site)
    }

    /// A UUID (version 7, timestamped with [`now`](Self::now)), recorded as a side effect.
    #[track_caller]
    pub fn uuid(&self) -> uuid::Uuid {
        let site = caller();
        let (hi, lo) = {
            let mut st = self.state.borrow_mut();
            (st.entropy(), st.entropy())
        };
        let mut bytes = [0u8; 10];
        bytes[..8].copy_from_slice(&hi.to_le_bytes());
        bytes[8..].copy_from_slice(&lo.to_le_bytes()[..2]);
        let millis = u64::try_from(self.now().as_micros() / 1000).unwrap_or(0);
        let fresh = uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid();
        self.recorded_value(fresh, site)
    }

    /// A side effect whose fresh value is already computed; a recorded value that no longer
    /// decodes is a divergence.
    fn recorded_value<T: Serialize + DeserializeOwned + Clone>(
        &self,
        fresh: T,
        site: quark_history::CallSite,
    ) -> T {
        let next = self.state.borrow().next_command;
        let recorded = self.state.borrow().recorded.get(&next).cloned();
        let (value, decoded) = match &recorded {
            Some((_, HistoryEvent::SideEffectRecorded { value, .. })) => {
                (value.clone(), value.decode::<T>().ok())
            }
            _ => (
                Payload::json(&fresh).unwrap_or_else(|_| Payload::unit()),
                None,
            ),
        };
        let mut st = self.state.borrow_mut();
        let id = st.issue(Command::SideEffect { value }, site.clone(), |_| None);
        match (recorded, decoded) {
            (Some((seq, event)), None) if st.nondeterminism.is_none() => {
                st.diverge(Nondeterminism {
                    command: id,
                    seq: Some(seq),
                    expected: format!("{} (of another type)", describe_event(&event)),
                    expected_site: event_site(&event),
                    actual: format!("asks for a {}", std::any::type_name::<T>()),
                    actual_site: Some(site),
                });
                fresh
            }
            (_, Some(v)) => v,
            _ => fresh,
        }
    }

    /// Whether to take the new branch of a change made while instances were running.
    ///
    /// An instance that reaches this point under new code records a `PatchMarker` and gets `true`
    /// from then on; an old history, recorded before the change, has no marker here and gets
    /// `false`, so it replays the old branch. Old histories keep their command ids: a `false`
    /// answer issues no command.
    #[track_caller]
    pub fn patched(&self, patch: &str) -> bool {
        let site = caller();
        let mut st = self.state.borrow_mut();
        let next = st.next_command;
        let old_branch = match st.recorded.get(&next) {
            Some((_, HistoryEvent::PatchMarker { patch: p, .. })) => p != patch,
            // Old code issued something else here: it ran without the patch.
            Some(_) => true,
            // Old code went on past this point (it recorded later commands, or ended) without
            // asking for anything here.
            None => st.last_decision > st.seq,
        };
        st.note_patch(patch, old_branch);
        if old_branch {
            return false;
        }
        st.issue(
            Command::Patch {
                patch: patch.to_string(),
            },
            site,
            |_| None,
        );
        true
    }

    /// Ends this run and starts a new one of the same orchestration with `input` and an empty
    /// history. Return its result: `return ctx.continue_as_new(&next);`
    pub fn continue_as_new<I: Serialize, T>(&self, input: &I) -> Result<T, OrchestrationError> {
        match Payload::json(input) {
            Ok(input) => Err(OrchestrationError::ContinueAsNew { input }),
            Err(e) => Err(OrchestrationError::payload(e)),
        }
    }

    /// A new, empty [`Saga`](crate::Saga): register a compensating activity after each step
    /// that succeeded; they run newest first when a later step fails, the orchestration is
    /// cancelled or the saga's deadline passes.
    pub fn saga(&self) -> crate::Saga {
        crate::Saga::new(self)
    }

    /// Waits for all `futures`; outputs in argument order.
    pub fn join<F: std::future::Future>(&self, futures: impl IntoIterator<Item = F>) -> Join<F> {
        Join::new(futures)
    }

    /// Waits for two futures of different types and returns both outputs:
    /// `let (shipped, emailed) = ctx.join2(ctx.call(ship, &id), ctx.call(email, &to)).await;`.
    /// Both commands were issued when `ctx.call` was called, so the order in which the two are
    /// polled cannot change the history.
    pub fn join2<A: std::future::Future, B: std::future::Future>(
        &self,
        a: A,
        b: B,
    ) -> futures::future::Join<A, B> {
        futures::future::join(a, b)
    }

    /// Like [`join2`](Self::join2), for three futures.
    pub fn join3<A: std::future::Future, B: std::future::Future, C: std::future::Future>(
        &self,
        a: A,
        b: B,
        c: C,
    ) -> futures::future::Join3<A, B, C> {
        futures::future::join3(a, b, c)
    }

    /// Waits for `future` for at most `after` of history time, with a durable timer: `Ok` with
    /// its output if it is ready first, `Err(OrchestrationError::TimedOut)` if the timer fires
    /// first (in history order, so a replay decides the same). This is the deterministic
    /// `tokio::time::timeout`, which cannot work in an orchestration (no Tokio timer drives it).
    /// Once the future wins, the timer is cancelled.
    ///
    /// `let charged = ctx.timeout(Duration::from_secs(30), ctx.call(charge, &order)).await??;`
    #[track_caller]
    pub fn timeout<F: std::future::Future>(
        &self,
        after: Duration,
        future: F,
    ) -> crate::combinator::Timeout<F> {
        let site = caller();
        let timer = Sleep::new(CommandFuture::new(&self.state, self.timer(after, site)));
        crate::combinator::Timeout::new(self.state.clone(), future, timer, after)
    }

    /// Waits for the first of `futures` in *history* order: when several are ready, the one whose
    /// result was recorded first wins, whatever the polling order. Returns its index and output;
    /// the others are dropped.
    pub fn select<F: std::future::Future>(
        &self,
        futures: impl IntoIterator<Item = F>,
    ) -> Select<F> {
        Select::new(self.state.clone(), futures)
    }
}

/// The namespace a run works in: its id's, when its queue is in the same namespace. Both are set
/// when it starts in a namespace (by a namespace's token, worker or parent); an instance whose id
/// merely holds `::` (named so before namespaces existed) but whose queue does not works in none,
/// so its replays issue the commands its history recorded.
fn run_namespace<'a>(instance_id: &'a str, queue: &str) -> Option<&'a str> {
    let ns = quark_history::namespace_of(instance_id)?;
    (quark_history::namespace_of(queue) == Some(ns) && quark_history::check_namespace(ns).is_ok())
        .then_some(ns)
}
