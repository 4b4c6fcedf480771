//! The test environment: orchestrations and activities in-process, on an in-memory SQLite store,
//! under a virtual clock.
//!
//! [`TestEnv`] plays the worker. It drives every task through the same
//! runner as the worker does, one at a time: the same turns, activity
//! attempts (timeouts, heartbeat timeouts, panics, cancellation), job checkpoints, warm
//! continuations and handling of refused commits. An activity a turn schedules runs right after
//! that turn's commit, as on a worker with a free slot. When nothing is runnable it moves its
//! [`ManualClock`] straight to the next timer or retry, so a 30-day timer takes milliseconds.
//! Activities can be replaced by mocks.
//!
//! ```
//! # use std::time::Duration;
//! use quark_workflow::testing::TestEnv;
//! use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry};
//!
//! #[quark_workflow::activity]
//! async fn charge_card(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
//!     Ok(format!("charged {cents}"))
//! }
//!
//! #[quark_workflow::orchestration]
//! async fn order(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
//!     ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
//!     ctx.call(charge_card, &cents).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = TestEnv::new(Registry::new().register(order).register(charge_card)).await?;
//! env.mock_activity::<charge_card>(|cents| Ok(format!("mocked {cents}")));
//! let handle = order::start(env.client(), "order-1", 500).await?;
//! assert_eq!(handle.result().await?, "mocked 500");
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{
    ClaimRequest, ClaimedMessage, ClaimedTask, Clock, Commit, Committed, Delivery, Destination,
    FailAction, InstanceStatus, Lease, ManualClock, NewTask, OutboxClaim, Payload, Settle,
    SqliteStore, Store, StoreConfig, StoreTx, TaskKind, Timestamp,
};
use tokio::sync::watch;

use crate::activity::ActivityInfo;
use crate::client::{Client, ClientError, Driver};
use crate::definition::Activity;
use crate::error::ActivityError;
use crate::registry::Registry;
use crate::runner::outbox::{
    DeliveryError, DeliveryPolicy, Destinations, deliver_signal, deliver_to_instance, run_key,
    windows,
};
use crate::runner::{
    HistoryWarning, Host, HostRef, LiveInstance, RunEvent, Runner, Settled, WarmLimits,
};

/// Where the virtual clock starts: 2026-01-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);

/// The worker id the test environment claims and leases tasks under.
pub const TEST_WORKER: &str = "quark-test-env";

/// How long the test environment's leases last, in virtual time (a worker's default).
const LEASE: Duration = Duration::from_secs(30);

/// A heartbeat an activity sent: who, and its progress.
pub type Heartbeat = (ActivityInfo, Option<Payload>);

/// A callback for `callback:<name>` outbox destinations (see [`TestEnv::outbox_callback`]).
pub type OutboxCallback = Arc<dyn Fn(&ClaimedMessage) -> Result<(), DeliveryError> + Send + Sync>;

/// An in-process engine for tests. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestEnv {
    inner: Arc<Inner>,
    client: Client,
}

#[derive(Debug)]
struct Inner {
    clock: ManualClock,
    /// The runner of the registry's code (replaced, with the same warm cache, when a test mocks
    /// an activity).
    runner: Mutex<Runner>,
    book: Arc<Book>,
    /// One driver at a time.
    running: tokio::sync::Mutex<()>,
}

/// What the environment keeps track of while tasks run, shared with each task's host.
struct Book {
    store: Arc<dyn Store>,
    /// Times at which a task becomes visible (timers, retries): where the clock jumps to.
    wake_at: Mutex<BTreeSet<Timestamp>>,
    /// Queues served beyond the registry's.
    queues: Mutex<BTreeSet<String>>,
    /// The registry's queues.
    registry_queues: BTreeSet<String>,
    /// Tasks a commit created already leased to the environment, to run next.
    here: Mutex<VecDeque<ClaimedTask>>,
    /// Heartbeats activities sent, in order.
    heartbeats: Mutex<Vec<Heartbeat>>,
    /// Callbacks for `callback:<name>` destinations.
    callbacks: Mutex<HashMap<String, OutboxCallback>>,
    /// Messages for destinations outside the environment, recorded instead of sent.
    sent: Mutex<Vec<ClaimedMessage>>,
    /// What the runner noted, in order (a worker counts these in its metrics).
    events: Mutex<Vec<RunEvent>>,
}

impl std::fmt::Debug for OutboxCallbacks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The names of the registered callbacks, for `Debug`.
struct OutboxCallbacks<'a>(&'a HashMap<String, OutboxCallback>);

impl TestEnv {
    /// An environment running `registry`'s code on a fresh in-memory SQLite store.
    pub async fn new(registry: Registry) -> Result<Self, ClientError> {
        Self::with_limits(registry, WarmLimits::default(), HistoryWarning::default()).await
    }

    /// [`new`](Self::new), keeping instances live within `limits` (`instances: 0` replays every
    /// turn from the history, as a worker that has just started does) and warning about
    /// histories past `warning` (see [`run_events`](Self::run_events)).
    pub async fn with_limits(
        registry: Registry,
        limits: WarmLimits,
        warning: HistoryWarning,
    ) -> Result<Self, ClientError> {
        let clock = ManualClock::new(START);
        let store =
            SqliteStore::in_memory_with(StoreConfig::default().clock(clock.clone())).await?;
        let book = Arc::new(Book {
            store: Arc::new(store),
            wake_at: Mutex::default(),
            queues: Mutex::default(),
            registry_queues: registry.queues(),
            here: Mutex::default(),
            heartbeats: Mutex::default(),
            callbacks: Mutex::default(),
            sent: Mutex::default(),
            events: Mutex::default(),
        });
        let inner = Arc::new(Inner {
            clock,
            runner: Mutex::new(Runner::with_limits(registry, limits, warning)),
            book,
            running: tokio::sync::Mutex::new(()),
        });
        let client = Client::with_driver(inner.book.store.clone(), inner.clone());
        Ok(TestEnv { inner, client })
    }

    /// A client whose `result()` runs the environment until the instance ends.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.book.store
    }

    /// The instances the runner holds live, with their estimated footprints, largest first.
    pub fn live_instances(&self) -> Vec<LiveInstance> {
        self.inner.runner().live_instances()
    }

    /// What the runner noted so far (conflicts, lost leases, long histories), in order.
    pub fn run_events(&self) -> Vec<RunEvent> {
        lock(&self.inner.book.events).clone()
    }

    /// The virtual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.inner.clock
    }

    /// Replaces activity `A` with `mock` from now on.
    pub fn mock_activity<A: Activity>(
        &self,
        mock: impl Fn(A::Input) -> Result<A::Output, ActivityError> + Send + Sync + 'static,
    ) {
        let mut runner = lock(&self.inner.runner);
        let mut registry = runner.registry().clone();
        registry.mock_activity::<A>(mock);
        *runner = runner.with_registry(registry);
    }

    /// Replaces the code the environment runs, as a deploy of new workers would: from now on
    /// turns run `registry`'s orchestrations and attempts its activities (mocks are dropped with
    /// the old registry; the queues served stay those of the first registry and of
    /// [`serve`](Self::serve)). A test of a code change runs the old code, deploys the new one and
    /// carries on against the same histories; a blocked instance goes on once its turn is
    /// re-driven (`env.store().redrive(task_id)`).
    pub fn deploy(&self, registry: Registry) {
        let mut runner = lock(&self.inner.runner);
        *runner = runner.with_registry(registry);
    }

    /// Also serves `queue` (the registry's queues are always served): for instances started
    /// with `StartOptions::queue` or activities called with `call_with` on another queue.
    pub fn serve(&self, queue: impl Into<String>) {
        lock(&self.inner.book.queues).insert(queue.into());
    }

    /// The heartbeats activities have sent so far, with their progress.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        lock(&self.inner.book.heartbeats).clone()
    }

    /// Handles outbox messages for `callback:<name>` destinations with `callback` (an error is a
    /// failed delivery, retried or dead as on a worker).
    pub fn outbox_callback(
        &self,
        name: impl Into<String>,
        callback: impl Fn(&ClaimedMessage) -> Result<(), DeliveryError> + Send + Sync + 'static,
    ) {
        lock(&self.inner.book.callbacks).insert(name.into(), Arc::new(callback));
    }

    /// The outbox messages delivered to destinations outside the environment (HTTP, NATS, ...),
    /// in delivery order: the environment records them instead of sending them. Signals to
    /// instances and registered callbacks are delivered for real.
    pub fn outbox_sent(&self) -> Vec<ClaimedMessage> {
        lock(&self.inner.book.sent).clone()
    }

    /// Runs every task that is runnable now, without moving the clock. Returns how many ran.
    pub async fn run_until_idle(&self) -> Result<usize, ClientError> {
        let _guard = self.inner.running.lock().await;
        self.inner.run_visible().await
    }

    /// Runs every task that is runnable now, like [`run_until_idle`](Self::run_until_idle), and
    /// returns how each ended, in the order they ran.
    pub async fn run_until_idle_settled(&self) -> Result<Vec<(ClaimedTask, Settled)>, ClientError> {
        let _guard = self.inner.running.lock().await;
        self.inner.run_visible_settled().await
    }

    /// Moves the clock forward by `d` and runs what became runnable.
    pub async fn advance(&self, d: std::time::Duration) -> Result<usize, ClientError> {
        self.inner.clock.advance(d);
        self.run_until_idle().await
    }
}

/// A test that panicked while holding a lock poisons it; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn runner(&self) -> Runner {
        lock(&self.runner).clone()
    }

    async fn run_visible(&self) -> Result<usize, ClientError> {
        Ok(self.run_visible_settled().await?.len())
    }

    /// Claims and runs tasks until none is runnable at the clock's time. A task a commit leased
    /// to the environment runs before anything is claimed again.
    async fn run_visible_settled(&self) -> Result<Vec<(ClaimedTask, Settled)>, ClientError> {
        let mut ran = Vec::new();
        let mut batch = VecDeque::new();
        loop {
            let here = lock(&self.book.here).pop_front();
            let started_here = here.is_some();
            let task = match here.or_else(|| batch.pop_front()) {
                Some(task) => task,
                None => {
                    let claimed = self
                        .book
                        .store
                        .claim(
                            ClaimRequest::new(TEST_WORKER, self.book.served())
                                .limit(16)
                                .lease(LEASE),
                        )
                        .await?;
                    if claimed.is_empty() {
                        if self.relay().await? == 0 {
                            return Ok(ran);
                        }
                        continue;
                    }
                    self.runner()
                        .prefetch(&claimed, Arc::clone(&self.book.store))
                        .await;
                    batch.extend(claimed);
                    continue;
                }
            };
            let settled = self.execute(task.clone(), started_here).await;
            ran.push((task, settled));
        }
    }

    /// Delivers the outbox messages that are due, each key's run through the runner's delivery
    /// loop as a worker's relay does. Returns how many keys it ran.
    async fn relay(&self) -> Result<usize, ClientError> {
        // A worker's defaults.
        let policy = DeliveryPolicy::new(
            12,
            (Duration::from_secs(1), Duration::from_secs(300)),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        let claimed = self
            .book
            .store
            .claim_outbox(
                OutboxClaim::new(TEST_WORKER)
                    .limit(64)
                    .window(policy.window)
                    .window_bytes(policy.window_bytes)
                    .lease(policy.lease),
            )
            .await?;
        let windows = windows(claimed);
        let keys = windows.len();
        let settled = |_: &ClaimedMessage, delivery: &Delivery| {
            if let Delivery::Retry { at, .. } = delivery {
                lock(&self.book.wake_at).insert(*at);
            }
        };
        for window in windows {
            let store = self.book.store.as_ref();
            run_key(store, &*self.book, &policy, window, &|| false, &settled).await;
        }
        Ok(keys)
    }

    /// Runs one claimed task with the shared runner.
    async fn execute(&self, task: ClaimedTask, started_here: bool) -> Settled {
        let host: HostRef = Arc::new(TestHost {
            book: Arc::clone(&self.book),
            lease: task.lease.clone(),
            stop: watch::channel(false).0,
            started_here,
        });
        self.runner().run(task, host).await
    }

    /// Why `instance_id` cannot move: a dead task of its own, or nothing left to wait for.
    async fn stuck(&self, instance_id: &str) -> ClientError {
        let dead = self
            .book
            .store
            .list_dead(None, 1000)
            .await
            .unwrap_or_default();
        let reason = dead
            .into_iter()
            .rev()
            .find(|d| d.instance_id.as_deref() == Some(instance_id))
            .map(|d| d.error)
            .unwrap_or_else(|| "it waits for a signal (or a task on a queue nobody serves)".into());
        ClientError::Stuck {
            id: instance_id.to_string(),
            reason,
        }
    }
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("store", &self.store)
            .field("wake_at", &self.wake_at)
            .field("callbacks", &OutboxCallbacks(&lock(&self.callbacks)))
            .finish_non_exhaustive()
    }
}

/// The environment delivers signals to its own instances and calls its registered callbacks; it
/// records messages for anywhere else (see [`TestEnv::outbox_sent`]).
impl Destinations for Book {
    fn deliver<'a>(
        &'a self,
        store: &'a dyn Store,
        m: &'a ClaimedMessage,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            match &m.destination {
                Destination::Signal { instance, name } => {
                    deliver_signal(store, instance, name, m).await
                }
                Destination::Instance { instance } => deliver_to_instance(store, instance, m).await,
                Destination::Callback { name } => {
                    let callback = lock(&self.callbacks).get(name).cloned();
                    match callback {
                        Some(callback) => callback(m),
                        None => Err(DeliveryError::retry(format!(
                            "no callback `{name}` is registered on the test environment"
                        ))),
                    }
                }
                _ => {
                    lock(&self.sent).push(m.clone());
                    Ok(())
                }
            }
        })
    }
}

impl Book {
    fn served(&self) -> Vec<String> {
        let mut queues = self.registry_queues.clone();
        queues.extend(lock(&self.queues).iter().cloned());
        queues.into_iter().collect()
    }

    /// Notes when the tasks `commit` enqueues or releases for later become visible.
    fn note_wakes(&self, commit: &Commit) {
        let mut wake = lock(&self.wake_at);
        wake.extend(commit.tasks.iter().filter_map(|t| t.visible_at));
        if let Some(Settle::Fail(_, FailAction::Retry { at, .. })) = &commit.settle {
            wake.insert(*at);
        }
    }

    /// Queues the tasks `commit` leased to the environment (see [`Host::run_here`]) to run next.
    fn take_here(&self, tasks: Vec<(usize, NewTask)>, committed: &Committed, now: Timestamp) {
        let mut here = lock(&self.here);
        for (i, task) in tasks {
            here.push_back(ClaimedTask {
                lease: Lease {
                    task_id: committed.task_ids[i],
                    attempt: 1,
                    worker: TEST_WORKER.to_string(),
                },
                kind: task.kind,
                queue: task.queue,
                instance_id: task.instance_id,
                priority: task.priority,
                created_at: now,
                visible_at: now,
                lease_expires_at: now + LEASE,
                payload: task.payload,
                traceparent: task.traceparent,
            });
        }
    }
}

/// The test environment's side of one task.
struct TestHost {
    book: Arc<Book>,
    lease: Lease,
    stop: watch::Sender<bool>,
    started_here: bool,
}

impl TestHost {
    fn leased_here(commit: &Commit) -> Vec<(usize, NewTask)> {
        commit
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.lease_to.as_ref().is_some_and(|(w, _)| w == TEST_WORKER))
            .map(|(i, t)| (i, t.clone()))
            .collect()
    }
}

impl Host for TestHost {
    fn store(&self) -> &Arc<dyn Store> {
        &self.book.store
    }

    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, quark_history::Result<Committed>> {
        Box::pin(async move {
            let here = Self::leased_here(&commit);
            self.book.note_wakes(&commit);
            let committed = self.book.store.commit(commit).await?;
            let now = self.book.store.config().clock.now();
            self.book.take_here(here, &committed, now);
            Ok(committed)
        })
    }

    fn commit_tx(
        &self,
        tx: StoreTx,
        commit: Commit,
    ) -> BoxFuture<'_, quark_history::Result<Committed>> {
        Box::pin(async move {
            let here = Self::leased_here(&commit);
            self.book.note_wakes(&commit);
            let committed = self.book.store.commit_tx(tx, commit).await?;
            let now = self.book.store.config().clock.now();
            self.book.take_here(here, &committed, now);
            Ok(committed)
        })
    }

    fn note(&self, event: RunEvent) {
        lock(&self.book.events).push(event);
    }

    fn run_here(&self, task: &mut NewTask) -> bool {
        let now = self.book.store.config().clock.now();
        if task.kind == TaskKind::Orchestration
            || task.visible_at.is_some_and(|at| at > now)
            || !self.book.served().contains(&task.queue)
        {
            return false;
        }
        task.lease_to = Some((TEST_WORKER.to_string(), LEASE));
        true
    }

    fn started_here(&self) -> bool {
        self.started_here
    }

    fn heartbeat(&self, info: &ActivityInfo, progress: Option<Payload>) {
        lock(&self.book.heartbeats).push((info.clone(), progress));
        // As a worker's lease keeper does, learn from the lease whether the task was cancelled.
        let (store, lease, stop) = (
            Arc::clone(&self.book.store),
            self.lease.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            if let Err(quark_history::Error::CancelRequested { .. }) =
                store.extend_lease(&lease, LEASE).await
            {
                stop.send_replace(true);
            }
        });
    }

    fn cancelled(&self) -> BoxFuture<'static, ()> {
        // One driver, a clock that stands still while a task runs: a lease is never lost here.
        Box::pin(std::future::pending())
    }

    fn stop_requested(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.stop.subscribe();
        Box::pin(async move {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

impl Driver for Inner {
    fn step(&self) -> BoxFuture<'_, Result<bool, ClientError>> {
        Box::pin(async move {
            let _guard = self.running.lock().await;
            if self.run_visible().await? > 0 {
                return Ok(true);
            }
            let now = self.clock.now();
            let next = {
                let mut wake = lock(&self.book.wake_at);
                let later = wake.split_off(&(now + std::time::Duration::from_micros(1)));
                let next = later.first().copied();
                *wake = later;
                next
            };
            match next {
                Some(at) => {
                    self.clock.set(at);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn drive<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            let _guard = self.running.lock().await;
            loop {
                self.run_visible().await?;
                let record = self
                    .book
                    .store
                    .get_instance(instance_id)
                    .await?
                    .ok_or_else(|| ClientError::NotFound(instance_id.to_string()))?;
                // A blocked instance cannot move until its turn is re-driven: the client reports
                // it as blocked.
                if record.status.is_closed() || record.status == InstanceStatus::Blocked {
                    return Ok(());
                }
                let now = self.clock.now();
                let next = {
                    let mut wake = lock(&self.book.wake_at);
                    let later = wake.split_off(&(now + std::time::Duration::from_micros(1)));
                    let next = later.first().copied();
                    *wake = later;
                    next
                };
                match next {
                    Some(at) => self.clock.set(at),
                    None => return Err(self.stuck(instance_id).await),
                }
            }
        })
    }
}
