//! Polling a run's code: the orchestration, then its running update handlers, while something
//! woke them, with a panic caught as its message and a bound on code that wakes itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use futures::future::LocalBoxFuture;
use quark_history::Payload;

use super::{Executor, Flag};
use crate::error::OrchestrationError;

impl Executor {
    /// Polls the code (the orchestration, then each running update handler, in acceptance
    /// order) while something woke it. A handler that returns issues its `UpdateCompleted`.
    pub(super) fn poll(&mut self) -> Result<(), String> {
        let mut polls = 0u32;
        while self.flag.0.load(Ordering::SeqCst) {
            polls += 1;
            if polls > MAX_POLLS_PER_EVENT {
                return Err(format!(
                    "the orchestration woke itself {MAX_POLLS_PER_EVENT} times without waiting on \
                     a `ctx` future"
                ));
            }
            poll_root(&mut self.root, &mut self.result, &self.flag, &self.waker)?;
            if self.root.is_none() {
                // The run returned: what its updates were doing ends with it.
                self.updates.clear();
                return Ok(());
            }
            let mut cx = Context::from_waker(&self.waker);
            let mut i = 0;
            while i < self.updates.len() {
                let fut = &mut self.updates[i].future;
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fut.as_mut().poll(&mut cx)
                }));
                match polled {
                    Ok(Poll::Pending) => i += 1,
                    Ok(Poll::Ready(result)) => {
                        let done = self.updates.remove(i);
                        let command = crate::command::Command::UpdateCompleted {
                            update_id: done.update_id,
                            result: result.map_err(|e| e.to_failure()),
                        };
                        self.ctx
                            .state
                            .borrow_mut()
                            .issue(command, done.site, |_| None);
                    }
                    Err(panic) => {
                        let done = self.updates.remove(i);
                        std::mem::forget(done.future);
                        return Err(format!(
                            "update `{}`'s handler panicked: {}",
                            done.update_id,
                            panic_message(panic.as_ref())
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A panic's message, with a hint when it comes from a Tokio future awaited in the
/// orchestration (they need a runtime that orchestration code does not run on).
pub(super) fn panic_hint(message: String) -> String {
    let tokio = message.contains("Tokio") || message.contains("reactor");
    if tokio {
        format!(
            "{message} (orchestration code runs on Quark's deterministic executor, not on a \
             Tokio runtime: use `ctx.sleep`, `ctx.timeout` and `ctx` futures instead of \
             `tokio::time` and `tokio::task`)"
        )
    } else {
        message
    }
}

/// How often the orchestration may be polled for one history event.
pub(super) const MAX_POLLS_PER_EVENT: u32 = 10_000;

/// Polls the orchestration while something woke it. A panic in the user's code is caught and
/// returned as its message: the turn is abandoned, not the worker.
pub(super) fn poll_root(
    root: &mut Option<LocalBoxFuture<'static, Result<Payload, OrchestrationError>>>,
    result: &mut Option<Result<Payload, OrchestrationError>>,
    flag: &Flag,
    waker: &Waker,
) -> Result<(), String> {
    let mut cx = Context::from_waker(waker);
    if flag.0.swap(false, Ordering::SeqCst) {
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
