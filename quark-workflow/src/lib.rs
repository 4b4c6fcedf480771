//! # quark-workflow
//!
//! The Quark SDK: durable orchestrations and activities as plain async functions.
//!
//! - [`Orchestration`] and [`Activity`]: what you define (usually with `#[orchestration]` and
//!   `#[activity]`).
//! - [`OrchestrationContext`]: activities (`call`), durable timers (`sleep`), signals
//!   (`wait_for_signal`, with `.timeout`), children (`call_child`), `side_effect`, `now`,
//!   `random`, `uuid`, history-ordered `join`/`select`, `continue_as_new`, `patched`,
//!   cancellation and `history_len`.
//! - The deterministic replay executor and [`process_turn`], the one function that turns a claimed
//!   orchestration task and its history into a [`Commit`](quark_history::Commit).
//! - [`TaskPayload`]: the documented payload of activity and timer tasks, and the commits that
//!   settle them ([`activity_commit`], [`timer_commit`]).

extern crate self as quark_workflow;

mod activity;
mod client;
mod command;
mod context;
mod definition;
mod error;
mod executor;
mod future;
mod registry;
mod replay;
mod runner;
mod state;
mod task;
pub mod testing;
mod turn;

pub use activity::{ActivityContext, ActivityInfo, CancellationToken, HeartbeatSink};
pub use client::{Client, ClientError, Handle, StartOptions};
pub use context::OrchestrationContext;
pub use definition::{Activity, ActivityOptions, Orchestration, RetryPolicy};
pub use error::{ActivityError, Nondeterminism, OrchestrationError};
pub use executor::{Outcome, Replay};
pub use future::{ActivityCall, ChildCall, Join, Select, Signal, SignalTimeout, Sleep};
pub use registry::{Registration, Registry};
pub use replay::{Divergence, ReplayError, ReplayReport, Replayer};
pub use runner::{HISTORY_WARN_EVENTS, Ran, run_task};
pub use task::{ActivityTask, TaskPayload, TimerTask, activity_commit, timer_commit};
pub use turn::{Turn, process_turn};

pub use quark_history;

#[doc(inline)]
pub use quark_workflow_macros::{activity, orchestration};

/// What the macros' generated code names. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::{
        Activity, ActivityContext, ActivityError, ActivityOptions, Client, ClientError, Handle,
        Orchestration, OrchestrationContext, OrchestrationError, Registration, Registry,
        RetryPolicy,
    };
}

#[cfg(test)]
mod context_tests;
#[cfg(test)]
mod executor_tests;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod sim;
