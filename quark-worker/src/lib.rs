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
//! id, instance, attempt) and counters ([`MetricsSnapshot`]).

pub mod backoff;
pub mod cli;
mod committer;
mod handler;
mod lease;
mod metrics;
mod poller;
mod shutdown;
mod worker;
mod workflow;

pub use handler::{Handler, HandlerError, TaskContext};
pub use metrics::MetricsSnapshot;
pub use shutdown::shutdown_signal;
pub use worker::{BuildError, RunningWorker, Worker, WorkerBuilder};
