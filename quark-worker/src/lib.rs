//! # quark-worker
//!
//! The runtime that runs Quark's work, and the `quark` binary.
//!
//! A [`Worker`] serves named queues of the shared task queue in a
//! [`Store`](quark_history::Store). For each task kind it has a [`Handler`] and a concurrency limit;
//! a poller per kind claims as many tasks as it has free slots, in batches, and sleeps on the
//! store's wake-ups (with polling as the fallback) when there is nothing to do. Each task runs on its
//! own tokio task and ends in one atomic commit. Leases are renewed on a heartbeat; a task whose
//! lease was lost is cancelled, and a zombie's commit is refused by the store. Shutdown stops
//! claiming, waits for in-flight work up to a grace period, and hands the rest back.
//!
//! Features: batched claims, per-kind bounded pools, lease keeping, exponential backoff with jitter
//! for infrastructure errors, dead-lettering of rejected tasks, `tracing` spans per task (kind, task
//! id, instance, attempt), and metrics through the `metrics` crate (counters, histograms and
//! gauges labelled by queue and task kind) that [`WorkerBuilder::metrics_addr`] serves in the
//! Prometheus format beside `/healthz` and `/readyz`; [`MetricsSnapshot`] reads a worker's
//! counters in process.
//!
//! Every worker also relays the transactional outbox ([`OutboxRelay`], on by default): messages
//! written with a commit are delivered in order per key to Quark signals, `http://` webhooks,
//! NATS JetStream or registered callbacks, with retries, a dead state and the same idempotency
//! key on every re-send.
//!
//! For orchestrations, [`WorkerBuilder::workflows`] registers the handlers that run a
//! `quark_workflow::Registry`: turns through the SDK's `process_turn`, activities under their
//! timeouts, timers. A turn's activities run on the worker that scheduled them when it has a free
//! slot, and an activity's result is committed together with the turn it unblocks, so a warm
//! instance advances one transaction per step. Concurrent commits share transactions.
//!
//! Every worker also fires the store's cron schedules (`quark_workflow::Schedule`; turn it off with
//! [`WorkerBuilder::schedules`]): a compare-and-set on each schedule's next tick makes every tick
//! enqueue its job exactly once, however many workers race for it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use quark_history::{SqliteStore, Store};
//! use quark_workflow::{
//!     ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
//!     orchestration,
//! };
//!
//! #[activity(retry(max_attempts = 5, initial = "1s", max = "1m"))]
//! async fn greet(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
//!     Ok(format!("hello, {name}"))
//! }
//!
//! #[orchestration]
//! async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
//!     ctx.sleep(Duration::from_secs(1)).await?;
//!     ctx.call(greet, &name).await
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let store: Arc<dyn Store> = Arc::new(SqliteStore::open("quark.db").await?);
//!     let worker = quark_worker::Worker::builder()
//!         .store(Arc::clone(&store))
//!         .workflows(Registry::new().register(welcome).register(greet))
//!         .build()?;
//!     let running = worker.start().await?;
//!
//!     let client = quark_workflow::Client::new(store);
//!     let handle = welcome::start(&client, "welcome-ada", "Ada".to_string()).await?;
//!     println!("{}", handle.result().await?);
//!
//!     running.shutdown().await;
//!     Ok(())
//! }
//! ```

mod builder;
#[cfg(feature = "cli")]
pub mod cli;
mod endpoint;
mod fault;
mod handler;
mod identity;
mod lease;
mod maintenance;
pub mod memory;
mod metrics;
pub mod placement;
mod poller;
mod projections;
pub mod relay;
pub mod sagas;
mod scheduler;
#[cfg(feature = "service")]
pub mod service;
mod shared;
mod shutdown;
#[cfg(feature = "postgres")]
pub mod two_phase;
mod worker;

pub use builder::{BuildError, HasStore, NoStore, WorkerBuilder};
#[doc(hidden)]
pub use fault::FaultPoint;
pub use handler::{Handler, TaskContext};
pub use memory::{LeakDetection, MemoryConfig, MemoryProbe, MemoryReading, Thresholds};
pub use metrics::{MetricsSnapshot, ReplayCauses};
pub use quark_workflow::runner::{Handled, HandlerError};
pub use relay::{DeliveryError, OutboxRelay};
pub use shutdown::{ShutdownSignals, shutdown_signal};
pub use worker::{RunningWorker, Worker};
