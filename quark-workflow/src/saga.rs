//! Sagas: undo what succeeded, newest first, when a later step fails.
//!
//! A [`Saga`] is a list of compensating activities kept by the orchestration. After each step that
//! succeeded, [`add`](Saga::add) the activity that undoes it, with its input (encoded at once, from
//! values the orchestration already holds, so replay derives the same list). When a later step
//! fails, the orchestration is cancelled or the saga's deadline passes, the compensations run in
//! reverse order (or all at once, [`parallel`](Saga::parallel)), then the original error is
//! returned.
//!
//! Nothing here adds a kind of history event: a compensation is an ordinary activity call, the
//! backoff between its attempts an ordinary durable timer, and the deadline one more timer raced
//! with the steps in history order. So a saga replays like any other orchestration code, and a
//! crash mid-compensation resumes it.
//!
//! Each compensation first gets its activity's own retry policy; when that runs out, the saga
//! calls it again, after a backoff, under [`compensation_retry`](Saga::compensation_retry). When
//! that runs out too, or at once on a terminal error, the saga is *stuck*: it fails with [`OrchestrationError::SagaStuck`], whose
//! recorded failure carries a [`StuckCompensation`] marker that `quark saga stuck` lists. A stuck
//! saga never reports success.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::FutureExt;
use quark_history::{CallSite, Failure, Payload};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::command::caller;
use crate::context::OrchestrationContext;
use crate::definition::{Activity, ActivityOptions, RetryPolicy};
use crate::error::OrchestrationError;
use crate::future::{ActivityCall, CommandFuture, Sleep};

/// The `kind` of a [`StuckCompensation`] in a failure's details.
pub const STUCK_KIND: &str = "saga_stuck";

/// A list of compensating activities, run in reverse order when the work they undo must be undone.
///
/// Create one with [`OrchestrationContext::saga`]. Cheap to clone: clones share the list.
///
/// ```
/// # use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, activity, orchestration};
/// # #[activity] async fn reserve(_c: ActivityContext, o: String) -> Result<String, ActivityError> { Ok(o) }
/// # #[activity] async fn release(_c: ActivityContext, r: String) -> Result<(), ActivityError> { Ok(()) }
/// # #[activity] async fn charge(_c: ActivityContext, o: String) -> Result<String, ActivityError> { Ok(o) }
/// # #[activity] async fn refund(_c: ActivityContext, p: String) -> Result<(), ActivityError> { Ok(()) }
/// # #[activity] async fn ship(_c: ActivityContext, o: String) -> Result<String, ActivityError> { Ok(o) }
/// #[orchestration]
/// async fn order(ctx: OrchestrationContext, id: String) -> Result<String, OrchestrationError> {
///     ctx.saga()
///         .deadline(std::time::Duration::from_secs(3600))
///         .run(|saga| async move {
///             let reservation = ctx.call(reserve, &id).await?;
///             saga.add(release, &reservation)?;
///             // The same in one line: run the step, and register its undo if it succeeded.
///             let _payment = saga.step(charge, &id, refund, |payment| payment.clone()).await?;
///             ctx.call(ship, &id).await
///         })
///         .await
/// }
/// ```
#[derive(Clone)]
pub struct Saga {
    ctx: OrchestrationContext,
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    compensations: Vec<Compensation>,
    /// The deadline, and where it was set (the timer's call site in the history).
    deadline: Option<(Duration, CallSite)>,
    retry: RetryPolicy,
    parallel: bool,
}

/// One registered compensation: an activity, its encoded input, and where it was added.
#[derive(Clone)]
struct Compensation {
    activity: &'static str,
    input: Payload,
    options: ActivityOptions,
    site: CallSite,
}

impl fmt::Debug for Saga {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        let names: Vec<_> = inner.compensations.iter().map(|c| c.activity).collect();
        f.debug_struct("Saga")
            .field("compensations", &names)
            .field("deadline", &inner.deadline.as_ref().map(|(d, _)| d))
            .field("retry", &inner.retry)
            .field("parallel", &inner.parallel)
            .finish()
    }
}

impl Saga {
    /// The default [`compensation_retry`](Self::compensation_retry): 10 more rounds, from 10 s up
    /// to 10 min apart (about 40 minutes of backoff in all), on top of the activity's own retries.
    pub fn default_retry() -> RetryPolicy {
        RetryPolicy::new(10, Duration::from_secs(10), Duration::from_secs(600))
    }

    pub(crate) fn new(ctx: &OrchestrationContext) -> Self {
        Saga {
            ctx: ctx.clone(),
            inner: Rc::new(RefCell::new(Inner {
                compensations: Vec::new(),
                deadline: None,
                retry: Self::default_retry(),
                parallel: false,
            })),
        }
    }

    /// A saga not finished `d` after [`run`](Self::run) starts compensates and fails with
    /// [`OrchestrationError::SagaDeadline`]. The deadline is a durable timer, raced with the
    /// steps in history order.
    #[track_caller]
    pub fn deadline(self, d: Duration) -> Self {
        self.inner.borrow_mut().deadline = Some((d, caller()));
        self
    }

    /// How often, and how far apart, a compensation whose activity's own retries ran out is
    /// called again before the saga is stuck. `max_attempts` counts activity calls: 1 means the
    /// activity's own retries are all. A terminal error makes the saga stuck at once.
    pub fn compensation_retry(self, retry: RetryPolicy) -> Self {
        self.inner.borrow_mut().retry = retry;
        self
    }

    /// Runs all compensations at once instead of newest first: for undo steps that do not depend
    /// on each other. Every one is retried to the end even when another one is stuck.
    pub fn parallel(self) -> Self {
        self.inner.borrow_mut().parallel = true;
        self
    }

    /// Registers `compensation`, called with `input` if the saga compensates. Call it once the
    /// step it undoes has succeeded. The input is encoded now; an input that cannot be encoded is
    /// an error now, not at compensation time.
    #[track_caller]
    pub fn add<C: Activity>(
        &self,
        compensation: C,
        input: &C::Input,
    ) -> Result<(), OrchestrationError> {
        self.push(compensation, input, C::options(), caller())
    }

    /// Like [`add`](Self::add), with `options` instead of the activity's own (another queue,
    /// more retries per call).
    #[track_caller]
    pub fn add_with<C: Activity>(
        &self,
        compensation: C,
        input: &C::Input,
        options: ActivityOptions,
    ) -> Result<(), OrchestrationError> {
        self.push(compensation, input, options, caller())
    }

    fn push<C: Activity>(
        &self,
        compensation: C,
        input: &C::Input,
        options: ActivityOptions,
        site: CallSite,
    ) -> Result<(), OrchestrationError> {
        let _ = compensation;
        let input = Payload::json(input).map_err(OrchestrationError::payload)?;
        self.inner.borrow_mut().compensations.push(Compensation {
            activity: C::NAME,
            input,
            options,
            site,
        });
        Ok(())
    }

    /// Calls `activity` with `input` and, if it succeeds, registers `compensation` with the input
    /// `undo` makes from its output. Returns the output, or the step's error (the saga does not
    /// compensate by itself: return the error from [`run`](Self::run), or call
    /// [`compensate`](Self::compensate)).
    #[track_caller]
    pub fn step<A, C, U>(
        &self,
        activity: A,
        input: &A::Input,
        compensation: C,
        undo: U,
    ) -> impl Future<Output = Result<A::Output, OrchestrationError>> + use<A, C, U>
    where
        A: Activity,
        C: Activity,
        U: FnOnce(&A::Output) -> C::Input,
    {
        let site = caller();
        let call = self.ctx.call(activity, input);
        let saga = self.clone();
        async move {
            let output = call.await?;
            saga.push(compensation, &undo(&output), C::options(), site)?;
            Ok(output)
        }
    }

    /// How many compensations are registered and not yet run.
    pub fn len(&self) -> usize {
        self.inner.borrow().compensations.len()
    }

    /// Whether no compensation is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the registered compensations: the work is kept (call it once the saga's outcome is
    /// final, when it goes on to steps that must not be undone).
    pub fn clear(&self) {
        self.inner.borrow_mut().compensations.clear();
    }

    /// Runs `body` with this saga. If `body` returns an error (a step failed, or cancellation was
    /// requested and `body` returned [`OrchestrationError::Cancelled`]) or the deadline passes
    /// first, the registered compensations run and the original error (or
    /// [`OrchestrationError::SagaDeadline`]) is returned; if a compensation is stuck,
    /// [`OrchestrationError::SagaStuck`] is returned instead, naming it and the original error.
    /// On success nothing compensates and the list is cleared.
    ///
    /// Nondeterminism and `continue_as_new` pass through without compensating.
    pub async fn run<T, F, Fut>(self, body: F) -> Result<T, OrchestrationError>
    where
        F: FnOnce(Saga) -> Fut,
        Fut: Future<Output = Result<T, OrchestrationError>>,
    {
        let deadline = self.inner.borrow().deadline.clone();
        let outcome = match deadline {
            None => body(self.clone()).await,
            Some((d, site)) => {
                // Issued before the first step, so its command id never depends on the body.
                let timer =
                    Sleep::new(CommandFuture::new(&self.ctx.state, self.ctx.timer(d, site)));
                let steps = body(self.clone()).map(Raced::Body).boxed_local();
                let timer = timer.map(Raced::Deadline).boxed_local();
                match self.ctx.select([steps, timer]).await.1 {
                    Raced::Body(r) => r,
                    Raced::Deadline(Ok(())) => {
                        Err(OrchestrationError::SagaDeadline { deadline: d })
                    }
                    Raced::Deadline(Err(e)) => Err(e),
                }
            }
        };
        match outcome {
            Ok(v) => {
                self.clear();
                Ok(v)
            }
            Err(
                e @ (OrchestrationError::Nondeterminism(_)
                | OrchestrationError::ContinueAsNew { .. }),
            ) => Err(e),
            Err(e) => {
                self.compensate_because(&e.to_string()).await?;
                Err(e)
            }
        }
    }

    /// Runs the registered compensations now (newest first, or at once if
    /// [`parallel`](Self::parallel)) and empties the list. `Ok` once every one succeeded;
    /// [`OrchestrationError::SagaStuck`] if one never did.
    pub async fn compensate(&self) -> Result<(), OrchestrationError> {
        self.compensate_because("compensate() was called").await
    }

    async fn compensate_because(&self, cause: &str) -> Result<(), OrchestrationError> {
        let (mut list, retry, parallel) = {
            let mut inner = self.inner.borrow_mut();
            let list = std::mem::take(&mut inner.compensations);
            (list, inner.retry, inner.parallel)
        };
        list.reverse();
        if parallel {
            let runs = list
                .iter()
                .map(|c| compensate_one(&self.ctx, c, retry).boxed_local());
            let results = self.ctx.join(runs).await;
            let mut first_stuck = None;
            for r in results {
                match r {
                    Ok(()) => {}
                    Err(Failed::Fatal(e)) => return Err(e),
                    Err(Failed::Stuck(s)) => {
                        first_stuck.get_or_insert(s);
                    }
                }
            }
            return match first_stuck {
                None => Ok(()),
                Some(s) => Err(stuck(s, cause, Vec::new())),
            };
        }
        for (i, c) in list.iter().enumerate() {
            match compensate_one(&self.ctx, c, retry).await {
                Ok(()) => {}
                Err(Failed::Fatal(e)) => return Err(e),
                Err(Failed::Stuck(s)) => {
                    // Older steps may depend on this one being undone first: stop here.
                    let skipped = list[i + 1..].iter().map(|c| c.activity.to_string());
                    return Err(stuck(s, cause, skipped.collect()));
                }
            }
        }
        Ok(())
    }
}

enum Raced<T> {
    Body(Result<T, OrchestrationError>),
    Deadline(Result<(), OrchestrationError>),
}

enum Failed {
    /// Nondeterminism or an undecodable payload: not the compensation's fault, never retried.
    Fatal(OrchestrationError),
    /// Every attempt failed: `(activity, input, attempts, last failure)`.
    Stuck((String, Payload, u32, Failure)),
}

fn stuck(
    (compensation, input, attempts, last_error): (String, Payload, u32, Failure),
    cause: &str,
    skipped: Vec<String>,
) -> OrchestrationError {
    OrchestrationError::SagaStuck(Box::new(StuckCompensation {
        kind: STUCK_KIND.to_string(),
        compensation,
        input: input.decode().unwrap_or(serde_json::Value::Null),
        attempts,
        last_error: last_error.message,
        cause: cause.to_string(),
        skipped,
    }))
}

/// Calls one compensation until it succeeds or `retry` runs out.
async fn compensate_one(
    ctx: &OrchestrationContext,
    c: &Compensation,
    retry: RetryPolicy,
) -> Result<(), Failed> {
    let mut attempt = 1;
    loop {
        let mut call: ActivityCall<IgnoredAny> = ctx.schedule_named(
            c.activity.into(),
            c.input.clone(),
            c.options.clone(),
            c.site.clone(),
        );
        let result = loop {
            let id = call.command();
            match (call.await, id) {
                // Cancellation requested while compensating: the compensation still has to
                // finish. Wait on the same command again (cancellation is reported only once).
                (Err(OrchestrationError::Cancelled { .. }), Some(id)) => {
                    call = ActivityCall::new(CommandFuture::new(&ctx.state, id), c.activity);
                }
                (other, _) => break other,
            }
        };
        let failure = match result {
            Ok(_) => return Ok(()),
            Err(OrchestrationError::Activity { failure, .. }) => failure,
            Err(e) => return Err(Failed::Fatal(e)),
        };
        // A terminal error says no retry can help: stuck at once, for a person to look at.
        let next = if failure.retryable {
            retry.delay_after(attempt)
        } else {
            None
        };
        let Some(delay) = next else {
            return Err(Failed::Stuck((
                c.activity.to_string(),
                c.input.clone(),
                attempt,
                failure,
            )));
        };
        let timer = Sleep::new(CommandFuture::new(
            &ctx.state,
            ctx.timer(delay, c.site.clone()),
        ));
        match timer.await {
            // A cancellation seen here only cuts the backoff short.
            Ok(()) | Err(OrchestrationError::Cancelled { .. }) => {}
            Err(e) => return Err(Failed::Fatal(e)),
        }
        attempt += 1;
    }
}

/// A stuck saga, as recorded in the details of the orchestration's failure: what `quark saga
/// stuck` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StuckCompensation {
    /// Always [`STUCK_KIND`]: tells this marker from other details.
    pub kind: String,
    /// The compensating activity that never succeeded.
    pub compensation: String,
    /// Its input, as JSON.
    pub input: serde_json::Value,
    /// How many times the saga called it (each call with the activity's own retries).
    pub attempts: u32,
    /// Its last error.
    pub last_error: String,
    /// Why the saga was compensating (the original error).
    pub cause: String,
    /// Older compensations that did not run because this one is stuck, newest first.
    pub skipped: Vec<String>,
}

impl StuckCompensation {
    /// The marker in a recorded failure, if it is a stuck saga's.
    pub fn from_failure(failure: &Failure) -> Option<Self> {
        let s: Self = failure.details.as_ref()?.decode().ok()?;
        (s.kind == STUCK_KIND).then_some(s)
    }
}

impl fmt::Display for StuckCompensation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saga stuck: compensation `{}` failed {} time(s), last error: {}; compensating for: {}",
            self.compensation, self.attempts, self.last_error, self.cause
        )?;
        if !self.skipped.is_empty() {
            write!(f, "; not run: {}", self.skipped.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> StuckCompensation {
        StuckCompensation {
            kind: STUCK_KIND.into(),
            compensation: "release".into(),
            input: serde_json::json!({"id": 7}),
            attempts: 3,
            last_error: "down".into(),
            cause: "declined".into(),
            skipped: vec!["refund".into()],
        }
    }

    #[test]
    fn a_stuck_failure_round_trips_through_its_details() {
        let failure = OrchestrationError::SagaStuck(Box::new(marker())).to_failure();
        assert!(!failure.retryable);
        assert_eq!(
            failure.message,
            "saga stuck: compensation `release` failed 3 time(s), last error: down; \
             compensating for: declined; not run: refund"
        );
        assert_eq!(StuckCompensation::from_failure(&failure), Some(marker()));
    }

    #[test]
    fn other_failures_are_not_taken_for_stuck_sagas() {
        let plain = OrchestrationError::failed("no").to_failure();
        assert_eq!(StuckCompensation::from_failure(&plain), None);
        let mut other = marker();
        other.kind = "something_else".into();
        let lookalike = Failure {
            message: "x".into(),
            retryable: false,
            details: Some(Payload::json(&other).unwrap()),
        };
        assert_eq!(StuckCompensation::from_failure(&lookalike), None);
        let unrelated = Failure {
            details: Some(Payload::json(&serde_json::json!({"code": 4})).unwrap()),
            ..lookalike
        };
        assert_eq!(StuckCompensation::from_failure(&unrelated), None);
    }

    #[test]
    fn the_default_retry_backs_off_for_about_forty_minutes() {
        let p = Saga::default_retry();
        let total: Duration = (1..p.max_attempts).filter_map(|a| p.delay_after(a)).sum();
        assert_eq!(total, Duration::from_secs(2430));
    }
}
