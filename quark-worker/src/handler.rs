//! What the runtime asks of the code that does the work.
//!
//! The worker runtime knows tasks, leases and commits, not orchestrations or jobs. For each task kind
//! it serves, it is given a [`Handler`] that turns a claimed task into the [`Commit`] that records
//! its outcome (settling the task's lease inside it). The orchestration turn, the activity runner,
//! the timer and the job runner are handlers.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{ClaimedTask, Commit, Lease, Store, Timestamp};
use tokio::sync::watch;

/// Why a handler could not produce a commit. The runtime releases the task to be retried after a
/// short backoff; the task's own retry policy is the handler's business and goes into the commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The store failed (a dropped connection, say). Retried.
    #[error(transparent)]
    Store(#[from] quark_history::Error),
    /// The task cannot be processed by this worker (unknown type, undecodable payload). The
    /// message says why; the task is dead-lettered.
    #[error("{0}")]
    Rejected(String),
    /// Anything else. Retried.
    #[error("{0}")]
    Other(String),
}

/// Turns a claimed task into the commit that records its outcome.
///
/// Any `Fn(ClaimedTask, TaskContext) -> impl Future<Output = Result<Commit, HandlerError>>` is a
/// handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one task. The returned commit must settle `task.lease` (complete or fail it). It may
    /// be called again for the same claim when an orchestration turn's history moved on.
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Commit, HandlerError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(ClaimedTask, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Commit, HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Commit, HandlerError>> {
        Box::pin(self(task, cx))
    }
}

/// What a handler may ask of the runtime while it works on a task.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) lease: Lease,
    pub(crate) lease_for: Duration,
    pub(crate) cancelled: watch::Receiver<bool>,
    pub(crate) worker_id: Arc<str>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("lease", &self.lease)
            .field("cancelled", &*self.cancelled.borrow())
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The store the task came from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The lease the task is held under.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The id of the worker running the task.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Extends the lease now (the runtime also extends it on its own schedule). Fails with
    /// `LeaseLost` if the task was taken over; the work should then stop.
    pub async fn heartbeat(&self) -> quark_history::Result<Timestamp> {
        self.store.extend_lease(&self.lease, self.lease_for).await
    }

    /// Whether the task was cancelled: its lease was lost, or the worker is shutting down past its
    /// grace period.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the task is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        // An error means the runtime dropped the sender: the task is gone either way.
        let _ = rx.wait_for(|c| *c).await;
    }
}
