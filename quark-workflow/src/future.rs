//! The futures `ctx` calls return.
//!
//! A command's future is ready once the executor has delivered the history event that resolves it.
//! The executor delivers events one at a time, in history order, and polls the orchestration after
//! each, so what the code observes depends only on the history, never on polling order.

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use quark_history::{CommandId, Payload};
use serde::de::DeserializeOwned;

use crate::command::caller;
use crate::context::OrchestrationContext;
use crate::error::OrchestrationError;
use crate::state::{Resolution, Shared};

/// The untyped future of one command.
#[derive(Debug)]
pub(crate) struct CommandFuture {
    state: Shared,
    id: CommandId,
    done: bool,
}

impl CommandFuture {
    pub(crate) fn new(state: &Shared, id: CommandId) -> Self {
        // A command waited on again (after its first future returned `Cancelled`) has a future
        // again.
        if let Ok(mut st) = state.try_borrow_mut()
            && let Some(slot) = st.slots.get_mut(&id)
        {
            slot.orphaned = false;
        }
        CommandFuture {
            state: state.clone(),
            id,
            done: false,
        }
    }

    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Result<Resolution, OrchestrationError>> {
        let mut st = self.state.borrow_mut();
        if let Some(n) = &st.nondeterminism {
            return Poll::Ready(Err(n.clone().into()));
        }
        let Some(slot) = st.slots.get_mut(&self.id) else {
            return Poll::Pending;
        };
        if let Some(result) = slot.result.clone() {
            // The slot stays while the future lives: `select` polls every branch and keeps the
            // losers, which may be ready already and are polled again later. It goes when the
            // future is dropped.
            let at = slot.resolved_at;
            st.stamp = st.stamp.max(at);
            self.done = true;
            return Poll::Ready(Ok(result));
        }
        slot.waker = Some(cx.waker().clone());
        // Not `done`: a timer that returns `Cancelled` never fired, and dropping it records
        // `TimerCancelled`.
        if let Some(reason) = st.take_cancel() {
            return Poll::Ready(Err(OrchestrationError::Cancelled { reason }));
        }
        Poll::Pending
    }

    /// Marks an unfinished timer abandoned: the turn records `TimerCancelled`.
    fn abandon(&mut self) {
        if self.done {
            return;
        }
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        if st.turn_over {
            return;
        }
        if let Some(slot) = st.slots.get_mut(&self.id) {
            slot.abandoned = true;
        }
    }
}

impl Drop for CommandFuture {
    /// Nobody waits for the command any more: a settled command's slot goes; an unsettled one
    /// loses its waker (so that a run waiting on nothing else is seen to be stuck) and goes once
    /// the command settles.
    fn drop(&mut self) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        if st.turn_over {
            return;
        }
        let Some(slot) = st.slots.get_mut(&self.id) else {
            return;
        };
        if slot.result.is_some() {
            st.slots.remove(&self.id);
        } else {
            slot.waker = None;
            slot.orphaned = true;
        }
    }
}

fn decode<T: DeserializeOwned>(p: &Payload) -> Result<T, OrchestrationError> {
    p.decode().map_err(OrchestrationError::payload)
}

/// The future of [`OrchestrationContext::call`]: the activity's output or its final failure.
#[derive(Debug)]
#[must_use = "an activity call does nothing unless awaited"]
pub struct ActivityCall<T> {
    inner: Result<CommandFuture, Option<OrchestrationError>>,
    activity: Cow<'static, str>,
    _out: PhantomData<fn() -> T>,
}

impl<T> ActivityCall<T> {
    pub(crate) fn new(cmd: CommandFuture, activity: impl Into<Cow<'static, str>>) -> Self {
        ActivityCall {
            inner: Ok(cmd),
            activity: activity.into(),
            _out: PhantomData,
        }
    }

    pub(crate) fn failed(e: OrchestrationError) -> Self {
        ActivityCall {
            inner: Err(Some(e)),
            activity: Cow::Borrowed(""),
            _out: PhantomData,
        }
    }

    /// The id of the command, unless the call failed before it was issued.
    pub(crate) fn command(&self) -> Option<CommandId> {
        self.inner.as_ref().ok().map(|cmd| cmd.id)
    }
}

impl<T: DeserializeOwned> Future for ActivityCall<T> {
    type Output = Result<T, OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let cmd = match &mut this.inner {
            Ok(cmd) => cmd,
            Err(e) => {
                return Poll::Ready(Err(e.take().unwrap_or(OrchestrationError::Failed(
                    "activity call polled after completion".into(),
                ))));
            }
        };
        cmd.poll_raw(cx).map(|r| match r? {
            Resolution::Value(p) => decode(&p),
            Resolution::Failed(failure) => Err(OrchestrationError::Activity {
                activity: this.activity.to_string(),
                failure,
            }),
        })
    }
}

/// The future of [`OrchestrationContext::call_child`]: the child's output or its failure.
#[derive(Debug)]
#[must_use = "a child call does nothing unless awaited"]
pub struct ChildCall<T> {
    inner: Result<CommandFuture, Option<OrchestrationError>>,
    instance_id: String,
    _out: PhantomData<fn() -> T>,
}

impl<T> ChildCall<T> {
    pub(crate) fn new(cmd: CommandFuture, instance_id: &str) -> Self {
        ChildCall {
            inner: Ok(cmd),
            instance_id: instance_id.to_string(),
            _out: PhantomData,
        }
    }

    pub(crate) fn failed(e: OrchestrationError, instance_id: &str) -> Self {
        ChildCall {
            inner: Err(Some(e)),
            instance_id: instance_id.to_string(),
            _out: PhantomData,
        }
    }

    /// The child's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

impl<T: DeserializeOwned> Future for ChildCall<T> {
    type Output = Result<T, OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let cmd = match &mut this.inner {
            Ok(cmd) => cmd,
            Err(e) => {
                return Poll::Ready(Err(e.take().unwrap_or(OrchestrationError::Failed(
                    "child call polled after completion".into(),
                ))));
            }
        };
        cmd.poll_raw(cx).map(|r| match r? {
            Resolution::Value(p) => decode(&p),
            Resolution::Failed(failure) => Err(OrchestrationError::Child {
                instance_id: this.instance_id.clone(),
                failure,
            }),
        })
    }
}

/// The future of [`OrchestrationContext::sleep`]. Dropping it before it fires records
/// `TimerCancelled`.
#[derive(Debug)]
#[must_use = "a timer does nothing unless awaited"]
pub struct Sleep {
    cmd: CommandFuture,
}

impl Sleep {
    pub(crate) fn new(cmd: CommandFuture) -> Self {
        Sleep { cmd }
    }

    /// The sequence number of the event that fired the timer, if it fired (without polling it).
    pub(crate) fn fired_at(&self) -> Option<u64> {
        let st = self.cmd.state.borrow();
        let slot = st.slots.get(&self.cmd.id)?;
        slot.result.as_ref().map(|_| slot.resolved_at)
    }
}

impl Future for Sleep {
    type Output = Result<(), OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().cmd.poll_raw(cx).map(|r| r.map(|_| ()))
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cmd.abandon();
    }
}

/// The future of [`OrchestrationContext::wait_for`] and [`OrchestrationContext::wait_for_signal`].
#[derive(Debug)]
#[must_use = "a signal wait does nothing unless awaited"]
pub struct SignalWait<T> {
    ctx: OrchestrationContext,
    name: String,
    _out: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SignalWait<T> {
    pub(crate) fn new(ctx: OrchestrationContext, name: &str) -> Self {
        SignalWait {
            ctx,
            name: name.to_string(),
            _out: PhantomData,
        }
    }

    /// Stops waiting after `d` (a durable timer): the output becomes `Ok(None)`.
    #[track_caller]
    pub fn timeout(self, d: Duration) -> SignalTimeout<T> {
        let id = self.ctx.timer(d, caller());
        let timer = Sleep::new(CommandFuture::new(&self.ctx.state, id));
        SignalTimeout {
            signal: self,
            timer,
        }
    }

    /// A buffered signal, with the sequence number of its event.
    fn take(&self) -> Option<(u64, Result<T, OrchestrationError>)> {
        let mut st = self.ctx.state.borrow_mut();
        let (seq, payload) = st.signals.get_mut(&self.name)?.pop_front()?;
        Some((seq, decode(&payload)))
    }

    fn wait(&self, cx: &mut Context<'_>) {
        self.ctx
            .state
            .borrow_mut()
            .signal_wakers
            .push(cx.waker().clone());
    }
}

impl<T: DeserializeOwned> Future for SignalWait<T> {
    type Output = Result<T, OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some((seq, value)) = self.take() {
            let mut st = self.ctx.state.borrow_mut();
            st.stamp = st.stamp.max(seq);
            return Poll::Ready(value);
        }
        if let Some(reason) = self.ctx.state.borrow_mut().take_cancel() {
            return Poll::Ready(Err(OrchestrationError::Cancelled { reason }));
        }
        self.wait(cx);
        Poll::Pending
    }
}

/// A signal wait with a timeout: `Ok(Some(value))`, or `Ok(None)` once the timer fired first
/// (in history order).
#[derive(Debug)]
#[must_use = "a signal wait does nothing unless awaited"]
pub struct SignalTimeout<T> {
    signal: SignalWait<T>,
    timer: Sleep,
}

impl<T: DeserializeOwned> Future for SignalTimeout<T> {
    type Output = Result<Option<T>, OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let fired_at = {
            let st = this.signal.ctx.state.borrow();
            let slot = st.slots.get(&this.timer.cmd.id);
            slot.filter(|s| s.result.is_some()).map(|s| s.resolved_at)
        };
        let buffered = {
            let st = this.signal.ctx.state.borrow();
            st.signals
                .get(&this.signal.name)
                .and_then(|q| q.front().map(|(seq, _)| *seq))
        };
        match (buffered, fired_at) {
            (Some(s), Some(t)) if t < s => {}
            (Some(_), _) => {
                if let Some((seq, value)) = this.signal.take() {
                    let mut st = this.signal.ctx.state.borrow_mut();
                    st.stamp = st.stamp.max(seq);
                    return Poll::Ready(value.map(Some));
                }
            }
            _ => {}
        }
        match Pin::new(&mut this.timer).poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| None)),
            Poll::Pending => {
                this.signal.wait(cx);
                Poll::Pending
            }
        }
    }
}
