//! What the runtime asks of the code that does the work.
//!
//! The worker runtime knows tasks, leases and commits, not orchestrations or jobs. For each task kind
//! it serves, it is given a [`Handler`] that turns a claimed task into the [`Commit`] that records
//! its outcome (settling the task's lease inside it), or commits it itself and says so
//! ([`Handled::Settled`]). The SDK's [`Runner`](quark_workflow::runner::Runner), which runs turns,
//! activities, timers and jobs, is the handler of workflow tasks; the same settle step
//! ([`quark_workflow::runner::settle`]) ends every task, whatever its handler.
//!
//! [`TaskContext`] is the worker's [`Host`]: what a running task may ask of the worker.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use std::sync::Mutex;

use futures::future::BoxFuture;
use quark_history::{
    ClaimedTask, Commit, Committed, Lease, NewTask, Payload, Store, StoreTx, TaskKind, Timestamp,
};
use quark_workflow::ActivityInfo;
use quark_workflow::runner::{Handled, HandlerError, Host, HostRef, RunEvent, Runner, settle};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::Instrument;

use crate::metrics::{Outcome, TaskLabels};
use crate::shared::{InFlight, Shared};

/// Turns a claimed task into the commit that records its outcome.
///
/// Any `Fn(ClaimedTask, TaskContext) -> impl Future<Output = Result<Handled, HandlerError>>` is a
/// handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one task: the commit that settles `task.lease` (completes or fails it), or
    /// [`Handled::Settled`] when the handler committed it itself through
    /// [`TaskContext::commit`]. It may be called again for the same claim when an orchestration
    /// turn's history moved on.
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Handled, HandlerError>>;

    /// Called with each batch of tasks the poller claimed, before any of them runs, so that the
    /// handler can read what they need in one round trip instead of one each (the orchestration
    /// handler reads the batch's histories). It must not fail: a task whose data was not fetched
    /// reads it itself. The default does nothing.
    fn prefetch(&self, tasks: &[ClaimedTask], store: Arc<dyn Store>) -> BoxFuture<'static, ()> {
        let _ = (tasks, store);
        Box::pin(async {})
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(ClaimedTask, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Handled, HandlerError>> {
        Box::pin(self(task, cx))
    }
}

/// Workflow tasks (turns, activities, timers, jobs) run through the SDK's runner, the same one
/// the test environment drives.
impl Handler for Runner {
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> BoxFuture<'static, Result<Handled, HandlerError>> {
        Runner::handle(self, task, Arc::new(cx))
    }

    fn prefetch(&self, tasks: &[ClaimedTask], store: Arc<dyn Store>) -> BoxFuture<'static, ()> {
        Runner::prefetch(self, tasks, store)
    }
}

/// A handler and the pool of slots its tasks run in.
pub(crate) struct Route {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// How many slots it has.
    pub(crate) concurrency: usize,
}

/// The handler of each task kind a worker serves.
pub(crate) type Routes = HashMap<TaskKind, Route>;

/// What a handler may ask of the runtime while it works on a task.
#[derive(Clone)]
pub struct TaskContext {
    shared: Arc<Shared>,
    routes: Arc<Routes>,
    lease: Lease,
    /// The task's queue and kind, for its metrics.
    labels: Arc<TaskLabels>,
    cancelled: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    /// Slots taken by [`run_here`](Self::run_here) for tasks the next commit creates.
    reserved: Arc<Mutex<Vec<Reserved>>>,
    /// The slot this task runs in, until [`run_here`](Self::run_here) hands it on to a task of the
    /// same kind that continues the work.
    own: Arc<Mutex<Option<(TaskKind, OwnedSemaphorePermit)>>>,
    /// Whether the commit that created the task started it here (not claimed from the queue).
    started_here: bool,
    /// The task's instance, if it has one: the sender of what its commits carry to others.
    instance: Option<Arc<str>>,
}

/// A slot set aside for a task that the next commit creates.
struct Reserved {
    kind: TaskKind,
    permit: OwnedSemaphorePermit,
    /// Whether it is the running task's own slot (given back if the commit fails).
    own: bool,
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
    pub(crate) fn new(
        shared: Arc<Shared>,
        routes: Arc<Routes>,
        lease: Lease,
        labels: TaskLabels,
        cancelled: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
        permit: Option<(TaskKind, OwnedSemaphorePermit)>,
    ) -> Self {
        TaskContext {
            shared,
            routes,
            lease,
            labels: Arc::new(labels),
            cancelled,
            stop,
            reserved: Arc::default(),
            own: Arc::new(Mutex::new(permit)),
            started_here: false,
            instance: None,
        }
    }

    /// Gives up the task's slot, if it still has it (the task has ended).
    pub(crate) fn release_slot(&self) {
        drop(self.own_slot().take());
    }

    fn own_slot(&self) -> std::sync::MutexGuard<'_, Option<(TaskKind, OwnedSemaphorePermit)>> {
        self.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store the task came from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The lease the task is held under.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The id of the worker running the task.
    pub fn worker_id(&self) -> &str {
        &self.shared.settings.id
    }

    /// Extends the lease now (the runtime also extends it on its own schedule). Fails with
    /// `LeaseLost` if the task was taken over; the work should then stop.
    pub async fn heartbeat(&self) -> quark_history::Result<Timestamp> {
        self.shared
            .store
            .extend_lease(&self.lease, self.shared.settings.lease)
            .await
    }

    /// Whether the task was cancelled: its lease was lost, or the worker is shutting down past its
    /// grace period.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Asks to run `task` on this worker right after the commit that creates it, without a trip
    /// through the queue: if this worker serves its kind and queue and has a free slot, the slot is
    /// reserved and the task is enqueued already leased to this worker. Returns whether it will.
    ///
    /// A task of the running task's own kind takes over the running task's slot, which the commit
    /// would free anyway: a chain of activities, each continuing its orchestration and scheduling
    /// the next, holds one slot, not two while each commit is in flight.
    pub fn run_here(&self, task: &mut NewTask) -> bool {
        let shared = &self.shared;
        let now = shared.store.config().clock.now();
        if task.kind == TaskKind::Orchestration
            || shared.is_stopping()
            || !shared.settings.queues.contains(&task.queue)
            || task.visible_at.is_some_and(|at| at > now)
        {
            return false;
        }
        let Some(route) = self.routes.get(&task.kind) else {
            return false;
        };
        let handed_on = {
            let mut own = self.own_slot();
            match own.take() {
                Some((kind, permit)) if kind == task.kind => Some(permit),
                other => {
                    *own = other;
                    None
                }
            }
        };
        let reserved = match handed_on {
            Some(permit) => Reserved {
                kind: task.kind,
                permit,
                own: true,
            },
            None => match Arc::clone(&route.slots).try_acquire_owned() {
                Ok(permit) => Reserved {
                    kind: task.kind,
                    permit,
                    own: false,
                },
                Err(_) => return false,
            },
        };
        self.reserved().push(reserved);
        task.lease_to = Some((shared.settings.id.to_string(), shared.settings.lease));
        true
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, Vec<Reserved>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits `commit` and starts the tasks it created for this worker with
    /// [`run_here`](Self::run_here). A handler that commits its task's outcome itself returns
    /// [`Handled::Settled`]; the runtime commits whatever else it returns the same way.
    pub async fn commit(&self, mut commit: Commit) -> quark_history::Result<Committed> {
        quark_workflow::trace_context::stamp_commit(&mut commit);
        let shared = &self.shared;
        let me = shared.settings.id.as_ref();
        let here: Vec<(usize, NewTask)> = commit
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.lease_to.as_ref().is_some_and(|(w, _)| w == me))
            .map(|(i, t)| (i, t.clone()))
            .collect();
        let outcome = Outcome::of(commit.settle.as_ref());
        let settles = self.settling(&commit);
        let started = shared.store.config().clock.now();
        if let Some(instance) = &self.instance {
            shared.sketch.record_commit(instance, &commit, started);
        }
        let result = shared.committer.commit(commit).await;
        if settles && result.is_err() {
            self.mark_settling(false);
        }
        self.committed(started);
        let mut reserved = std::mem::take(&mut *self.reserved());
        let committed = match result {
            Ok(committed) => committed,
            Err(e) => {
                // Nothing will run here: the running task keeps its own slot, the others go back.
                if let Some(own) = reserved.into_iter().find(|r| r.own) {
                    *self.own_slot() = Some((own.kind, own.permit));
                }
                return Err(e);
            }
        };
        if let Some(outcome) = outcome {
            shared.metrics.settled(outcome, &self.labels);
        }
        let now = shared.store.config().clock.now();
        for (i, task) in here {
            let Some(slot) = reserved.iter().position(|r| r.kind == task.kind) else {
                continue;
            };
            let permit = reserved.swap_remove(slot).permit;
            let claimed = ClaimedTask {
                lease: Lease {
                    task_id: committed.task_ids[i],
                    attempt: 1,
                    worker: me.to_string(),
                },
                kind: task.kind,
                queue: task.queue,
                instance_id: task.instance_id,
                priority: task.priority,
                created_at: now,
                visible_at: now,
                lease_expires_at: now + shared.settings.lease,
                payload: task.payload,
                traceparent: task.traceparent,
            };
            shared.metrics.claimed(&claimed, now);
            spawn_task(shared, &self.routes, claimed, permit, true);
        }
        Ok(committed)
    }

    /// Writes `commit` in `tx` and commits both (see
    /// [`Store::commit_tx`](quark_history::Store::commit_tx)): for a handler that wrote its own rows
    /// in the transaction. It bypasses the batching committer, since the transaction is the
    /// handler's. A handler that commits this way returns [`Handled::Settled`].
    pub async fn commit_tx(
        &self,
        tx: quark_history::StoreTx,
        mut commit: Commit,
    ) -> quark_history::Result<Committed> {
        quark_workflow::trace_context::stamp_commit(&mut commit);
        let shared = &self.shared;
        let outcome = Outcome::of(commit.settle.as_ref());
        self.fault(crate::fault::FaultPoint::BeforeTransactionalCommit);
        let settles = self.settling(&commit);
        let started = shared.store.config().clock.now();
        let committed = shared.store.commit_tx(tx, commit).await;
        if settles && committed.is_err() {
            self.mark_settling(false);
        }
        self.committed(started);
        let committed = committed?;
        self.fault(crate::fault::FaultPoint::AfterTransactionalCommit);
        if let Some(outcome) = outcome {
            shared.metrics.settled(outcome, &self.labels);
        }
        Ok(committed)
    }

    /// Whether `commit` settles this task; if it does, the task is marked as settling from now
    /// on (the lease keeper leaves it alone).
    fn settling(&self, commit: &Commit) -> bool {
        let settles = commit
            .settle
            .as_ref()
            .is_some_and(|s| s.lease().task_id == self.lease.task_id);
        if settles {
            self.mark_settling(true);
        }
        settles
    }

    fn mark_settling(&self, on: bool) {
        if let Some(f) = self.shared.in_flight().get_mut(&self.lease.task_id) {
            f.settling = on;
        }
    }

    /// Records the time of a commit that began at `started`, whether it succeeded or not.
    fn committed(&self, started: Timestamp) {
        let took = self.shared.store.config().clock.now().since(started);
        self.shared.metrics.committed(self.labels.kind, took);
    }

    /// Runs the fault hook at `point`, if the worker has one (crash tests).
    pub(crate) fn fault(&self, point: crate::fault::FaultPoint) {
        if let Some(hook) = &self.shared.settings.fault {
            (hook.0)(point, self.lease.attempt);
        }
    }

    /// Records progress for the task (a job) under its lease.
    pub async fn report_progress(
        &self,
        progress: quark_history::Progress,
    ) -> quark_history::Result<()> {
        self.shared
            .store
            .report_progress(&self.lease, progress)
            .await
    }

    /// Whether an operator asked the task to stop (a cancelled job). Unlike
    /// [`is_cancelled`](Self::is_cancelled), the lease still holds: stop the work and return the
    /// commit that settles the task; the store records the job as cancelled.
    pub fn is_stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when an operator asks the task to stop (see
    /// [`is_stop_requested`](Self::is_stop_requested)); never, otherwise.
    pub async fn stop_requested(&self) {
        let mut rx = self.stop.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the task is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        // An error means the runtime dropped the sender: the task is gone either way.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Runs `task` on its own tokio task, holding `permit` (a slot of its kind's pool) until it is done
/// or hands the slot on to a task that continues its work (see [`TaskContext::run_here`]).
pub(crate) fn spawn_task(
    shared: &Arc<Shared>,
    routes: &Arc<Routes>,
    task: ClaimedTask,
    permit: tokio::sync::OwnedSemaphorePermit,
    started_here: bool,
) {
    let Some(route) = routes.get(&task.kind) else {
        tracing::error!(kind = %task.kind, "no handler for a task this worker holds");
        return;
    };
    let handler = Arc::clone(&route.handler);
    let (cancel, cancelled) = watch::channel(false);
    let (stop, stop_requested) = watch::channel(false);
    let task_id = task.lease.task_id;
    shared.in_flight().insert(
        task_id,
        InFlight {
            lease: task.lease.clone(),
            labels: TaskLabels::of(&task),
            cancel,
            stop,
            abort: None,
            settling: false,
        },
    );
    let span = tracing::info_span!(
        "task",
        "otel.name" = %format_args!("quark {}", task.kind),
        worker = %shared.settings.id,
        kind = %task.kind,
        task_id,
        instance = task.instance_id.as_deref().unwrap_or(""),
        attempt = task.lease.attempt,
    );
    quark_workflow::trace_context::continue_from(&span, task.traceparent.as_deref());
    let mut cx = TaskContext::new(
        Arc::clone(shared),
        Arc::clone(routes),
        task.lease.clone(),
        TaskLabels::of(&task),
        cancelled,
        stop_requested,
        Some((task.kind, permit)),
    );
    cx.started_here = started_here;
    cx.instance = task.instance_id.as_deref().map(Arc::from);
    let shared2 = Arc::clone(shared);
    let join = tokio::spawn(
        async move {
            execute(&*handler, &task, &cx).await;
            cx.release_slot();
            if shared2.in_flight().remove(&task_id).is_some() {
                shared2.idle.notify_waiters();
            }
        }
        .instrument(span),
    );
    if let Some(entry) = shared.in_flight().get_mut(&task_id) {
        entry.abort = Some(join.abort_handle());
    }
}

/// Runs a task's handler and settles it: the settle step the test environment runs too.
async fn execute(handler: &dyn Handler, task: &ClaimedTask, cx: &TaskContext) {
    let host: HostRef = Arc::new(cx.clone());
    let clock = &cx.shared.store.config().clock;
    let started = clock.now();
    settle(task, &host, || handler.handle(task.clone(), cx.clone())).await;
    cx.shared
        .metrics
        .ran(&cx.labels, clock.now().since(started));
}

/// The worker's side of a running task, as the runner sees it.
impl Host for TaskContext {
    fn store(&self) -> &Arc<dyn Store> {
        TaskContext::store(self)
    }

    fn lease(&self) -> &Lease {
        TaskContext::lease(self)
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, quark_history::Result<Committed>> {
        Box::pin(TaskContext::commit(self, commit))
    }

    fn commit_tx(
        &self,
        tx: StoreTx,
        commit: Commit,
    ) -> BoxFuture<'_, quark_history::Result<Committed>> {
        Box::pin(TaskContext::commit_tx(self, tx, commit))
    }

    fn run_here(&self, task: &mut NewTask) -> bool {
        TaskContext::run_here(self, task)
    }

    fn started_here(&self) -> bool {
        self.started_here
    }

    /// An activity's heartbeat extends the lease at once (the lease keeper also extends it on its
    /// own schedule).
    fn heartbeat(&self, _info: &ActivityInfo, _progress: Option<Payload>) {
        let cx = self.clone();
        tokio::spawn(async move {
            if let Err(e) = TaskContext::heartbeat(&cx).await {
                tracing::debug!(error = %e, "activity heartbeat could not extend the lease");
            }
        });
    }

    fn cancelled(&self) -> BoxFuture<'static, ()> {
        let cx = self.clone();
        Box::pin(async move { TaskContext::cancelled(&cx).await })
    }

    fn stop_requested(&self) -> BoxFuture<'static, ()> {
        let cx = self.clone();
        Box::pin(async move { TaskContext::stop_requested(&cx).await })
    }

    /// Waits for a turn to hold a database transaction (see
    /// [`WorkerBuilder::transactions`](crate::WorkerBuilder::transactions)).
    fn transaction_turn(&self) -> BoxFuture<'_, Option<Box<dyn Send>>> {
        Box::pin(async move {
            let permit = Arc::clone(&self.shared.transactions)
                .acquire_owned()
                .await
                .ok()?;
            Some(Box::new(permit) as Box<dyn Send>)
        })
    }

    fn note(&self, event: RunEvent) {
        let metrics = &self.shared.metrics;
        match event {
            RunEvent::LeaseLost => metrics.lease_lost(&self.labels),
            RunEvent::Conflict => metrics.conflict(&self.labels),
            RunEvent::LongHistory => metrics.long_history(&self.labels),
            RunEvent::DeliveredHere => metrics.delivered_here(&self.labels),
            RunEvent::SignalDropped => metrics.signal_dropped(&self.labels),
            RunEvent::SignalAcrossShards => metrics.signal_across_shards(&self.labels),
            RunEvent::NewsAcrossShards => metrics.news_across_shards(&self.labels),
            RunEvent::EntityAcrossShards => metrics.entity_across_shards(&self.labels),
            RunEvent::Replayed(why) => metrics.replayed(&self.labels, why),
            RunEvent::EntityRouted => metrics.entity_routed(&self.labels),
            _ => {}
        }
    }
}
