//! What the parts of a running worker share: its store and committer, its settings, the tasks in
//! flight, its counters and its stop signal. The pollers, the task runners, the lease keeper, the
//! scheduler, maintenance and the relay all read it; the worker builds it. It depends on none of
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::Store;
use tokio::sync::{Notify, Semaphore, watch};

use crate::metrics::Metrics;

/// How a worker behaves. Built by [`WorkerBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) id: Arc<str>,
    pub(crate) queues: Vec<String>,
    pub(crate) labels: serde_json::Map<String, serde_json::Value>,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) claim_batch: u32,
    pub(crate) affinity_delay: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) maintenance: Option<Duration>,
    pub(crate) schedules: bool,
    pub(crate) fault: Option<crate::fault::FaultHook>,
    /// How many transactional activities and jobs may hold a database transaction at once.
    pub(crate) transactions: usize,
}

/// A task being worked on.
pub(crate) struct InFlight {
    pub(crate) lease: quark_history::Lease,
    pub(crate) labels: crate::metrics::TaskLabels,
    pub(crate) cancel: watch::Sender<bool>,
    /// Set when the task was cancelled by an operator (a cancelled job): it should stop and
    /// settle, unlike `cancel`, after which nothing it commits counts.
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) abort: Option<tokio::task::AbortHandle>,
    /// The commit that settles it is being written or was written: its lease fences that
    /// commit, so a lease that looks lost now is no reason to cancel it (its row is gone once
    /// the commit is written, before the task leaves this map).
    pub(crate) settling: bool,
}

/// State shared by the pollers, the task runners and the lease keeper.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) committer: quark_workflow::runner::Committer,
    /// Turns for transactional activities and jobs to hold a database transaction.
    pub(crate) transactions: Arc<Semaphore>,
    pub(crate) settings: Settings,
    /// The worker's id, held, and this run of it.
    pub(crate) identity: crate::identity::Identity,
    /// Set when another process took the worker's id over: this one stopped by itself.
    pub(crate) superseded: std::sync::atomic::AtomicBool,
    pub(crate) metrics: Metrics,
    /// The memory governor's level and breaker, and its last reading.
    pub(crate) memory: crate::memory::Status,
    /// Who talks to whom through this worker's commits.
    pub(crate) sketch: crate::placement::sketch::Sketch,
    pub(crate) in_flight: Mutex<HashMap<i64, InFlight>>,
    pub(crate) idle: Notify,
    pub(crate) stopping: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<i64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}
