//! The errors an orchestration and an activity see and return.
//!
//! - [`OrchestrationError`] is what every `ctx.*` future and every orchestration returns.
//! - [`ActivityError`] is the opaque error of an activity: any error converts into a *retryable*
//!   one with `?`, and [`ActivityError::terminal`] opts out of retries.
//! - [`Nondeterminism`] is its own kind: the code no longer matches its recorded history. It is
//!   never retried and never fails the instance; the turn is dead-lettered until the code is fixed.

use std::fmt;

use quark_history::{CallSite, CommandId, Failure, Payload};

/// Why an orchestration (or one of its `ctx` calls) did not produce a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestrationError {
    /// An activity failed for good (a terminal error, or its retries ran out). Handle it, or
    /// return it to fail the orchestration.
    #[error("activity `{activity}` failed: {}", failure.message)]
    Activity {
        /// The activity's registered name.
        activity: String,
        /// Why.
        failure: Failure,
    },
    /// A child orchestration failed, was cancelled or was terminated.
    #[error("child orchestration `{instance_id}` failed: {}", failure.message)]
    Child {
        /// The child's instance id.
        instance_id: String,
        /// Why.
        failure: Failure,
    },
    /// Cancellation was requested. The orchestration may run compensation and then return this
    /// error, which ends the instance as cancelled.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// The reason the caller gave.
        reason: String,
    },
    /// The code no longer matches its history. Fix the code (or guard the change with
    /// `ctx.patched`) and re-drive the dead-lettered task.
    #[error(transparent)]
    Nondeterminism(Box<Nondeterminism>),
    /// A value could not be encoded or decoded (an input, an output, a signal). Check that the
    /// types on both sides agree.
    #[error("payload: {0}")]
    Payload(String),
    /// The orchestration's own failure, with a message.
    #[error("{0}")]
    Failed(String),
    /// A saga's compensation failed after all its retries: the saga's work is only partly undone.
    /// Fix the cause and finish the undo by hand; `quark saga stuck` lists these instances.
    #[error("{0}")]
    SagaStuck(Box<crate::saga::StuckCompensation>),
    /// A saga did not finish within its deadline; it compensated. Retry the business operation,
    /// or give the saga more time.
    #[error("saga deadline of {deadline:?} passed")]
    SagaDeadline {
        /// The deadline the saga was given.
        deadline: std::time::Duration,
    },
    /// A [`ctx.timeout`](crate::OrchestrationContext::timeout) ran out: its durable timer fired
    /// (in history order) before the future it guarded was ready.
    #[error("timed out after {after:?}")]
    TimedOut {
        /// The time the future was given.
        after: std::time::Duration,
    },
    /// Not a failure: returned by [`continue_as_new`](crate::OrchestrationContext::continue_as_new),
    /// it ends this run and starts a new one with `input`.
    #[error("continued as new")]
    ContinueAsNew {
        /// The new run's input.
        input: Payload,
    },
}

impl From<Nondeterminism> for OrchestrationError {
    fn from(n: Nondeterminism) -> Self {
        OrchestrationError::Nondeterminism(Box::new(n))
    }
}

impl OrchestrationError {
    /// The orchestration's own failure.
    pub fn failed(message: impl fmt::Display) -> Self {
        OrchestrationError::Failed(message.to_string())
    }

    /// The failure recorded in the history when an orchestration ends with this error.
    pub fn to_failure(&self) -> Failure {
        match self {
            OrchestrationError::Activity { failure, .. }
            | OrchestrationError::Child { failure, .. } => Failure {
                message: self.to_string(),
                retryable: false,
                details: failure.details.clone(),
            },
            OrchestrationError::SagaStuck(stuck) => Failure {
                message: self.to_string(),
                retryable: false,
                // Through a `Value`: its keys come out sorted, as the history stores them, so the
                // replayed failure equals the recorded one byte for byte.
                details: serde_json::to_value(stuck)
                    .ok()
                    .and_then(|v| Payload::json(&v).ok()),
            },
            other => Failure::terminal(other.to_string()),
        }
    }

    pub(crate) fn payload(e: impl fmt::Display) -> Self {
        OrchestrationError::Payload(e.to_string())
    }
}

/// The code asked for something other than what its history recorded.
///
/// It names the recorded event (its sequence number, what it was and where the code made the call
/// when it was recorded) and what the code asks for now, with its call site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nondeterminism: {}", self.describe())]
#[non_exhaustive]
pub struct Nondeterminism {
    /// The command id where the code and the history part.
    pub command: CommandId,
    /// The recorded event's sequence number, if the history holds one.
    pub seq: Option<u64>,
    /// What the history holds, e.g. `ActivityScheduled(charge_card)`.
    pub expected: String,
    /// Where the recorded command was made.
    pub expected_site: Option<CallSite>,
    /// What the code asks for now, e.g. `TimerCreated`.
    pub actual: String,
    /// Where the code asks for it.
    pub actual_site: Option<CallSite>,
}

impl Nondeterminism {
    fn describe(&self) -> String {
        let mut s = match self.seq {
            Some(seq) => format!("event {seq} was {}", self.expected),
            None => format!("command {} was {}", self.command, self.expected),
        };
        if let Some(site) = &self.expected_site {
            s.push_str(&format!(" from {site}"));
        }
        s.push_str(&format!("; the code now {}", self.actual));
        if let Some(site) = &self.actual_site {
            s.push_str(&format!(" at {site}"));
        }
        s
    }
}

/// Why an activity attempt failed: opaque, retryable unless marked [`terminal`](Self::terminal).
///
/// Any `std::error::Error` converts into a retryable `ActivityError`, so `?` works in activities:
///
/// ```
/// # use quark_workflow::ActivityError;
/// fn parse(s: &str) -> Result<u32, ActivityError> {
///     let n: u32 = s.parse()?; // a retryable error
///     if n == 0 {
///         return Err(ActivityError::message("zero is not a valid amount").terminal());
///     }
///     Ok(n)
/// }
/// assert!(parse("x").unwrap_err().is_retryable());
/// assert!(!parse("0").unwrap_err().is_retryable());
/// ```
pub struct ActivityError {
    message: String,
    retryable: bool,
    details: Option<Payload>,
}

impl ActivityError {
    /// A retryable error with a message.
    pub fn message(message: impl fmt::Display) -> Self {
        ActivityError {
            message: message.to_string(),
            retryable: true,
            details: None,
        }
    }

    /// Marks the error terminal: the activity is not retried and fails at once.
    pub fn terminal(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// Attaches structured details, recorded with the failure.
    pub fn with_details(mut self, details: Payload) -> Self {
        self.details = Some(details);
        self
    }

    /// Whether a retry could succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn text(&self) -> &str {
        &self.message
    }

    /// The failure as recorded in the history.
    pub fn to_failure(&self) -> Failure {
        Failure {
            message: self.message.clone(),
            retryable: self.retryable,
            details: self.details.clone(),
        }
    }
}

// `ActivityError` deliberately does not implement `std::error::Error`: that is what lets every
// error type convert into it (the blanket impl below would otherwise overlap with `From<T> for T`).
impl<E: std::error::Error + Send + Sync + 'static> From<E> for ActivityError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ActivityError::message(message)
    }
}

impl fmt::Debug for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .finish()
    }
}

impl fmt::Display for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.retryable {
            f.write_str(" (terminal)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_converts_into_a_retryable_activity_error() {
        let e: ActivityError = "x".parse::<u8>().unwrap_err().into();
        assert!(e.is_retryable());
        assert!(!e.terminal().is_retryable());
    }

    #[test]
    fn a_nondeterminism_error_names_both_sides_and_their_call_sites() {
        let site = |line| CallSite {
            file: "src/order.rs".into(),
            line,
            column: 9,
        };
        let e = Nondeterminism {
            command: 2,
            seq: Some(3),
            expected: "ActivityScheduled(charge_card)".into(),
            expected_site: Some(site(41)),
            actual: "asks for TimerCreated".into(),
            actual_site: Some(site(44)),
        };
        assert_eq!(
            e.to_string(),
            "nondeterminism: event 3 was ActivityScheduled(charge_card) from src/order.rs:41:9; \
             the code now asks for TimerCreated at src/order.rs:44:9"
        );
    }
}
