//! `join` and `select` over `ctx` futures, resolving in history order.
//!
//! Both poll every branch, always in argument order, on every wake-up: nothing depends on which
//! branch woke the orchestration (unlike `futures::future::join_all`, which changes strategy above
//! 30 futures). `select` picks, among the branches that are ready, the one that consumed the
//! earliest history event, so the winner is the same on every replay whatever the polling order.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::OrchestrationError;
use crate::future::Sleep;
use crate::state::Shared;

/// The future of [`OrchestrationContext::join`](crate::OrchestrationContext::join).
#[must_use = "a join does nothing unless awaited"]
pub struct Join<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future> std::fmt::Debug for Join<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("len", &self.futures.len())
            .finish_non_exhaustive()
    }
}

// The outputs are never pinned; the futures are boxed.
impl<F: Future> Unpin for Join<F> {}

impl<F: Future> Join<F> {
    pub(crate) fn new(futures: impl IntoIterator<Item = F>) -> Self {
        let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let outputs = futures.iter().map(|_| None).collect();
        Join { futures, outputs }
    }
}

impl<F: Future> Future for Join<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Always every branch, always in argument order: nothing depends on which one woke us.
        for (slot, out) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(f) = slot
                && let Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *out = Some(v);
                *slot = None;
            }
        }
        if this.outputs.iter().all(Option::is_some) {
            Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    }
}

/// The future of [`OrchestrationContext::select`](crate::OrchestrationContext::select).
#[must_use = "a select does nothing unless awaited"]
pub struct Select<F: Future> {
    state: Shared,
    futures: Vec<Pin<Box<F>>>,
}

impl<F: Future> std::fmt::Debug for Select<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Select")
            .field("len", &self.futures.len())
            .finish_non_exhaustive()
    }
}

impl<F: Future> Select<F> {
    pub(crate) fn new(state: Shared, futures: impl IntoIterator<Item = F>) -> Self {
        let futures = futures.into_iter().map(Box::pin).collect();
        Select { state, futures }
    }
}

impl<F: Future> Future for Select<F> {
    type Output = (usize, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outer = std::mem::take(&mut this.state.borrow_mut().stamp);
        // The winner is the ready branch that consumed the earliest event; ties go to the first.
        let mut best: Option<(u64, usize, F::Output)> = None;
        for (i, f) in this.futures.iter_mut().enumerate() {
            this.state.borrow_mut().stamp = 0;
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                let stamp = this.state.borrow().stamp;
                if best.as_ref().is_none_or(|(s, _, _)| stamp < *s) {
                    best = Some((stamp, i, v));
                }
            }
        }
        let mut st = this.state.borrow_mut();
        match best {
            Some((stamp, i, v)) => {
                st.stamp = outer.max(stamp);
                Poll::Ready((i, v))
            }
            None => {
                st.stamp = outer;
                Poll::Pending
            }
        }
    }
}

/// The future of [`OrchestrationContext::timeout`](crate::OrchestrationContext::timeout).
#[must_use = "a timeout does nothing unless awaited"]
pub struct Timeout<F: Future> {
    state: Shared,
    future: Pin<Box<F>>,
    /// The durable timer; dropped (and cancelled in the history) once the future wins.
    timer: Option<Sleep>,
    after: std::time::Duration,
}

impl<F: Future> std::fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Timeout<F> {
    pub(crate) fn new(state: Shared, future: F, timer: Sleep, after: std::time::Duration) -> Self {
        Timeout {
            state,
            future: Box::pin(future),
            timer: Some(timer),
            after,
        }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, OrchestrationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outer = std::mem::take(&mut this.state.borrow_mut().stamp);
        // Like `select`: when both are ready, the one whose event came first in the history wins.
        // The timer is only looked at while the future is ready, so that a cancellation goes to
        // the future (which may be a `ctx` call that must see it), not to the timer.
        let fired_at = this.timer.as_ref().and_then(Sleep::fired_at);
        let result = match this.future.as_mut().poll(cx) {
            Poll::Ready(v) => {
                let at = std::mem::take(&mut this.state.borrow_mut().stamp);
                match fired_at {
                    Some(t) if t < at => {
                        Some((t, Err(OrchestrationError::TimedOut { after: this.after })))
                    }
                    _ => Some((at, Ok(v))),
                }
            }
            Poll::Pending => match this.timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
                Some(Poll::Ready(r)) => {
                    let t = this.state.borrow().stamp;
                    let out = r.and(Err(OrchestrationError::TimedOut { after: this.after }));
                    Some((t, out))
                }
                _ => None,
            },
        };
        let mut st = this.state.borrow_mut();
        match result {
            Some((at, out)) => {
                st.stamp = outer.max(at);
                drop(st);
                // The timer is no longer needed: dropping it records `TimerCancelled`.
                this.timer = None;
                Poll::Ready(out)
            }
            None => {
                st.stamp = outer;
                Poll::Pending
            }
        }
    }
}
