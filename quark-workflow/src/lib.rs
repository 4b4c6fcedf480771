//! # quark-workflow
//!
//! The Quark SDK: durable orchestrations and activities as plain async functions.
//!
//! - [`Orchestration`] and [`Activity`], usually written with [`#[orchestration]`](orchestration)
//!   and [`#[activity]`](activity), which also generate typed client stubs
//!   (`process_order::start(&client, id, input)`) and check orchestration bodies for
//!   nondeterministic calls at compile time.
//! - [`OrchestrationContext`]: activities (`call`), durable timers (`sleep`), signals
//!   (`wait_for` a typed [`Signal`], with `.timeout`), children (`call_child`), `side_effect`, `now`,
//!   `random`, `uuid`, `join`/`select` that resolve in history order, `continue_as_new`,
//!   `patched`, cancellation and `history_len`.
//! - The deterministic replay executor: one pure function from a claimed orchestration task and
//!   its history to a [`Commit`](quark_history::Commit), and the runner around it that drives
//!   any workflow task from its claim to its settle, for the worker and for the test environment
//!   alike (the hidden `runner` module, with the task payloads: plumbing for runtimes).
//! - [`JobWorkflow`]: a DAG of jobs (activities) with dependencies, parallel stages, results
//!   passed from parents to children and a failure rule, run durably by the built-in
//!   `quark.job_workflow` orchestration.
//! - [`Client`] and typed [`Handle`]s; [`testing::TestEnv`], an in-process engine on in-memory
//!   SQLite with a virtual clock; [`Replayer`], which checks recorded histories against new code.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//!
//! use quark_workflow::testing::TestEnv;
//! use quark_workflow::{
//!     ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry,
//!     activity, orchestration,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Payment {
//!     card: String,
//!     cents: u64,
//! }
//!
//! #[activity(retry(max_attempts = 3, initial = "1s", max = "30s"), start_to_close = "30s")]
//! async fn charge_card(_ctx: ActivityContext, payment: Payment) -> Result<String, ActivityError> {
//!     Ok(format!("charged {} to {}", payment.cents, payment.card))
//! }
//!
//! #[activity]
//! async fn refund(_ctx: ActivityContext, receipt: String) -> Result<(), ActivityError> {
//!     let _ = receipt;
//!     Ok(())
//! }
//!
//! #[orchestration(version = 1)]
//! async fn process_order(
//!     ctx: OrchestrationContext,
//!     payment: Payment,
//! ) -> Result<String, OrchestrationError> {
//!     let receipt = ctx.call(charge_card, &payment).await?;
//!     // Wait up to a day for a human; the timer survives restarts and deploys.
//!     let approved = ctx
//!         .wait_for_signal::<bool>("approve")
//!         .timeout(Duration::from_secs(24 * 3600))
//!         .await?;
//!     if approved != Some(true) {
//!         ctx.call(refund, &receipt).await?;
//!         return Err(OrchestrationError::failed("not approved"));
//!     }
//!     Ok(receipt)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new()
//!     .register(process_order)
//!     .register(charge_card)
//!     .register(refund);
//! let env = TestEnv::new(registry).await?;
//! let payment = Payment { card: "4242".into(), cents: 500 };
//! let order = process_order::start(env.client(), "order-1", payment).await?;
//! order.signal("approve", &true).await?;
//! assert_eq!(order.result().await?, "charged 500 to 4242");
//! # Ok(())
//! # }
//! ```
//!
//! ## Determinism
//!
//! An orchestration is replayed from its history after every interruption, so its code must make
//! the same `ctx` calls in the same order on every replay. `#[orchestration]` rejects the usual
//! culprits at compile time (the clock, sleeping, spawning, randomness, the environment, file and
//! network I/O, unbiased `select!`, iterating a `HashMap`/`HashSet`); at run time a command
//! that differs from the recorded one stops the turn with a [`Nondeterminism`] error naming
//! both sides and their call sites. Change running code behind [`OrchestrationContext::patched`].

extern crate self as quark_workflow;

mod activity;
pub mod backoff;
mod client;
mod combinator;
mod command;
mod connection;
mod context;
mod definition;
pub mod entity;
mod error;
mod executor;
mod future;
mod job;
mod job_workflow;
mod participant;
mod past;
pub mod projection;
mod registry;
mod replay;
mod request;
mod request_client;
#[doc(hidden)]
pub mod runner;
mod saga;
mod schedule;
mod sharded_client;
mod signal;
mod state;
mod task;
#[cfg(feature = "sqlite")]
pub mod testing;
pub mod trace_context;
mod turn;

pub use activity::{
    ActivityContext, ActivityEffects, ActivityInbox, ActivityInfo, ActivityOutbox,
    CancellationToken, HeartbeatSink, JobControl, ProgressSink,
};
pub use client::{Client, ClientError, DEFAULT_RESULT_LOOK_EVERY, StartOptions};
pub use combinator::{Join, Select, Timeout};
pub use connection::{Connection, Handle, WorkflowClient, start as start_orchestration};
pub use context::OrchestrationContext;
pub use definition::{Activity, ActivityOptions, Orchestration, RetryPolicy};
pub use error::{ActivityError, Nondeterminism, OrchestrationError};
pub use future::{ActivityCall, ChildCall, SignalTimeout, SignalWait, Sleep};
pub use job::{EnqueuedJob, JobId, JobOptions};
pub use job_workflow::{
    JOB_WORKFLOW, Job, JobInput, JobReport, JobSpec, JobStepState, JobWorkflow, JobWorkflowBuilder,
    JobWorkflowError, JobWorkflowHandle, JobWorkflowReport, JobWorkflowRunError, OnFailure,
    RunJobWorkflow,
};
pub use past::{Pending, PendingTimer, SignalsSeen, WorkflowAt, workflow_at};
/// The missed-tick policy of a [`Schedule`] and what the store keeps of a schedule.
pub use quark_history::{Missed, ScheduleRecord, Upserted};
pub use registry::{ProjectionFactory, Registration, Registry};
pub use replay::{Divergence, ReplayError, ReplayReport, Replayer};
pub use request::{Query, Update, UpdateDeclared};
pub use runner::{HISTORY_WARN_EVENTS, HistoryWarning, LiveInstance, WarmLimits};
pub use saga::{STUCK_KIND, Saga, StuckCompensation};
pub use schedule::{LATE_TICK_GRACE, Schedule, ScheduleError};
pub use sharded_client::ShardedClient;
pub use signal::Signal;

pub use quark_history;

mod macros;
pub use macros::{activity, orchestration};

/// What an application using Quark writes against, in one import:
///
/// ```
/// use quark_workflow::prelude::*;
///
/// #[activity]
/// async fn greet(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
///     Ok(format!("hello, {name}"))
/// }
///
/// #[orchestration]
/// async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
///     ctx.call(greet, &name).await
/// }
///
/// let registry: Registry = Registry::new().register(greet).register(welcome);
/// # let _ = registry;
/// ```
///
/// The runtime's plumbing (task payloads, commits, the turn function) is in the hidden
/// `quark_workflow::runner` module, for those who build a runtime of their own.
pub mod prelude {
    pub use crate::{
        ActivityContext, ActivityError, Client, ClientError, Handle, Job, JobId, JobOptions,
        JobWorkflow, OnFailure, OrchestrationContext, OrchestrationError, Query, Registry,
        Replayer, RetryPolicy, Saga, Schedule, Signal, StartOptions, Update, activity,
        orchestration,
    };
}

/// What the macros' generated code names. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::{
        Activity, ActivityContext, ActivityError, ActivityOptions, Client, ClientError, Handle,
        JobId, JobOptions, Orchestration, OrchestrationContext, OrchestrationError, Registration,
        Registry, RetryPolicy, WorkflowClient, start_orchestration,
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
