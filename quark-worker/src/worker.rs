//! The worker: pollers per task kind, a bounded pool each, lease keeping, graceful shutdown.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{InstanceStatus, Store, TaskKind, WorkerInfo};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::handler::Handler;
use crate::handler::{Route, Routes};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::shared::{InFlight, Settings, Shared};
use crate::{lease, poller, scheduler};

/// Configures a [`Worker`].
pub struct WorkerBuilder {
    store: Option<Arc<dyn Store>>,
    settings: Settings,
    routes: HashMap<TaskKind, (Arc<dyn Handler>, usize)>,
    relay: crate::relay::OutboxRelay,
    /// The runners of [`workflows`](Self::workflows), whose warm instances the gauges count.
    runners: Vec<quark_workflow::runner::Runner>,
    /// What the runners keep live, and when they warn about a long history.
    warm: quark_workflow::runner::WarmLimits,
    history_warning: quark_workflow::runner::HistoryWarning,
    metrics_addr: Option<SocketAddr>,
    /// The id asked for; `None`: the first free `<host>-<n>`.
    id: Option<String>,
    lock_dir: Option<std::path::PathBuf>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("settings", &self.settings)
            .field("kinds", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No store was given.
    #[error("a worker needs a store: call .store(..)")]
    NoStore,
    /// No handler was given and the outbox relay is disabled: the worker would do nothing.
    #[error(
        "a worker needs at least one handler (call .handle(kind, handler, concurrency)) or the outbox relay"
    )]
    NoHandlers,
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// Another process on this host (or another worker in this process) serves this database
    /// under this id. Give each worker its own id, or leave it unset for a free one.
    #[error(
        "worker id `{id}` is in use by another process on this host (its lock {path:?} is held)"
    )]
    IdInUse {
        /// The id.
        id: String,
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// The id's lock file could not be created or locked. Check the lock directory's permissions,
    /// or choose another (`lock_dir`, `--lock-dir`).
    #[error("cannot lock {path:?}: {error}")]
    Lock {
        /// The lock file or its directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
}

impl Default for WorkerBuilder {
    fn default() -> Self {
        WorkerBuilder {
            store: None,
            settings: Settings {
                id: "".into(),
                queues: vec!["default".into()],
                labels: serde_json::Map::new(),
                lease: Duration::from_secs(30),
                heartbeat: Duration::from_secs(10),
                poll_interval: Duration::from_millis(250),
                claim_batch: 64,
                affinity_delay: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(30),
                maintenance: Some(Duration::from_secs(60)),
                schedules: true,
                fault: None,
                transactions: DEFAULT_TRANSACTIONS,
            },
            routes: HashMap::new(),
            relay: crate::relay::OutboxRelay::default(),
            runners: Vec::new(),
            warm: Default::default(),
            history_warning: Default::default(),
            metrics_addr: None,
            id: None,
            lock_dir: None,
        }
    }
}

/// Transactional activities hold a pooled connection from their start to their commit; the
/// PostgreSQL store's pool has 16, and the worker's claims, commits and lease extensions share the
/// other four.
const DEFAULT_TRANSACTIONS: usize = 12;

/// How often the gauges are brought up to date between scrapes.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a worker that runs orchestrations counts the blocked instances of its queues (one
/// indexed `COUNT` in the database).
const BLOCKED_INTERVAL: Duration = Duration::from_secs(5);

impl WorkerBuilder {
    /// The store to work from.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The worker's id: keep it across restarts, so that a restarted worker takes back at once
    /// the tasks it held when it died (default: `<host>-<n>`, the smallest `n` that no live
    /// worker on this host uses for this database, which a restarted worker finds free again).
    ///
    /// An id is held by one worker at a time: [`build`](Self::build) fails with
    /// [`BuildError::IdInUse`] while another on this host holds it, and
    /// [`start`](Worker::start) waits while a worker on another host still heartbeats under it.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Where the ids' lock files live (default: `quark-workers` in the system's temporary
    /// directory). Every worker of a host (of a container) must use the same directory for the
    /// locks to keep its ids apart.
    pub fn lock_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.lock_dir = Some(dir.into());
        self
    }

    /// The queues to serve (default: `default`).
    pub fn queues(mut self, queues: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.settings.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// A placement label (`region`, `zone`, `rack`, ...).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings
            .labels
            .insert(key.into(), serde_json::Value::String(value.into()));
        self
    }

    /// Serves tasks of `kind` with `handler`, running at most `concurrency` at once.
    pub fn handle(mut self, kind: TaskKind, handler: impl Handler, concurrency: usize) -> Self {
        self.routes.insert(kind, (Arc::new(handler), concurrency));
        self
    }

    /// Runs the orchestrations and activities of `registry`: registers the orchestration, activity,
    /// timer and job handlers (concurrency 256, 256, 16 and 32; change them with
    /// [`concurrency`](Self::concurrency)), with a history cache of 10,000 instances. Jobs are
    /// activities enqueued on their own (`Client::enqueue`).
    ///
    /// A slot is held from the claim until the task's outcome is committed, and commits are
    /// grouped: under load most slots wait for a commit rather than run code, so the orchestration
    /// and activity pools are large. Transactional activities are bounded separately, by
    /// [`transactions`](Self::transactions).
    pub fn workflows(mut self, registry: quark_workflow::Registry) -> Self {
        let runner =
            quark_workflow::runner::Runner::with_limits(registry, self.warm, self.history_warning);
        self.runners.push(runner.clone());
        let w = Arc::new(runner);
        [
            (TaskKind::Orchestration, 256),
            (TaskKind::Activity, 256),
            (TaskKind::Timer, 16),
            (TaskKind::Job, 32),
        ]
        .into_iter()
        .fold(self, |builder, (kind, concurrency)| {
            builder.handle_shared(kind, w.clone(), concurrency)
        })
    }

    /// Sets how many tasks of `kind` run at once (the kind must have a handler).
    pub fn concurrency(mut self, kind: TaskKind, n: usize) -> Self {
        if let Some(route) = self.routes.get_mut(&kind) {
            route.1 = n;
        }
        self
    }

    /// Like [`handle`](Self::handle), with a shared handler.
    pub fn handle_shared(
        mut self,
        kind: TaskKind,
        handler: Arc<dyn Handler>,
        concurrency: usize,
    ) -> Self {
        self.routes.insert(kind, (handler, concurrency));
        self
    }

    /// How long a claim holds before it must be renewed (default 30 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How many orchestration instances the worker keeps live, and how much memory (by their
    /// estimated footprints) they may hold: a live instance's next turn feeds its suspended run
    /// only the new events; one that is not live is replayed from its history. Default: 10,000
    /// instances and 256 MiB; `instances: 0` keeps none.
    pub fn warm_limits(mut self, limits: quark_workflow::runner::WarmLimits) -> Self {
        self.warm = limits;
        for runner in &self.runners {
            runner.set_limits(self.warm, self.history_warning);
        }
        self
    }

    /// When an instance's history is long enough to warn about (a log line and the
    /// `quark_long_histories_total` counter, once per live run). Default: 10,240 events or
    /// 10 MiB, as Temporal warns. The answer to the warning is `ctx.continue_as_new`.
    pub fn history_warning(mut self, warning: quark_workflow::runner::HistoryWarning) -> Self {
        self.history_warning = warning;
        for runner in &self.runners {
            runner.set_limits(self.warm, self.history_warning);
        }
        self
    }

    /// How often leases and the worker's registration are renewed (default 10 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.settings.heartbeat = every;
        self
    }

    /// The polling fallback's interval (default 250 ms): the most a timer fires late, and the
    /// longest an idle worker takes to notice work when a wake-up is lost.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.settings.poll_interval = every;
        self
    }

    /// The most tasks one claim takes (default 64).
    pub fn claim_batch(mut self, n: u32) -> Self {
        self.settings.claim_batch = n;
        self
    }

    /// How long a task with another worker's affinity waits before this one takes it (default 1 s).
    pub fn affinity_delay(mut self, delay: Duration) -> Self {
        self.settings.affinity_delay = delay;
        self
    }

    /// How many transactional activities and jobs (`ActivityOptions::transactional`) may hold a
    /// database transaction at once (default 12). Each holds a pooled connection until it commits,
    /// so this stays below the store's pool size (16 for a store from `PostgresStore::connect`);
    /// the others wait for a turn before they begin.
    pub fn transactions(mut self, n: usize) -> Self {
        self.settings.transactions = n;
        self
    }

    /// Runs `hook` at each [`FaultPoint`](crate::FaultPoint) (crash tests only).
    #[doc(hidden)]
    pub fn fault_hook(
        mut self,
        hook: impl Fn(crate::FaultPoint, u32) + Send + Sync + 'static,
    ) -> Self {
        self.settings.fault = Some(crate::fault::FaultHook(Arc::new(hook)));
        self
    }

    /// How long shutdown waits, in all, for the scheduler, the outbox relay and in-flight tasks
    /// before handing the tasks back (default 30 s): one deadline, not one per stage.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// How often this worker purges finished jobs past their retention, expired unique keys and
    /// abandoned cancellations, in batches (default every 60 s; `None`: never, for workers that
    /// leave it to others). Any number of workers may do it at once.
    pub fn maintenance(mut self, every: Option<Duration>) -> Self {
        self.settings.maintenance = every;
        self
    }

    /// Whether this worker fires the store's cron schedules (default: yes). Every worker may:
    /// each tick enqueues its job once however many race for it (see `quark_workflow::Schedule`).
    pub fn schedules(mut self, enabled: bool) -> Self {
        self.settings.schedules = enabled;
        self
    }

    /// How this worker relays the transactional outbox (default: on, with
    /// [`OutboxRelay::new`](crate::OutboxRelay::new)'s settings; [`OutboxRelay::disabled`](crate::OutboxRelay::disabled)
    /// leaves it to other workers). Callbacks for `callback:<name>` destinations are registered
    /// here too.
    pub fn outbox(mut self, relay: crate::relay::OutboxRelay) -> Self {
        self.relay = relay;
        self
    }

    /// Serves `/metrics` (the Prometheus text format), `/healthz` and `/readyz` on `addr` while
    /// the worker runs (port 0: any free port; [`RunningWorker::metrics_addr`] says which).
    ///
    /// The first worker to serve installs `metrics-exporter-prometheus`'s recorder as the
    /// process's [`metrics`] recorder, unless the application installed one before: then the
    /// figures go to that one and `/metrics` serves none. Workers in one process share the
    /// recorder, so their figures add up. `/readyz` answers 200 when the store answers and has
    /// every migration applied, 503 otherwise.
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Builds the worker.
    pub fn build(self) -> Result<Worker, BuildError> {
        let store = self.store.ok_or(BuildError::NoStore)?;
        if self.routes.is_empty() && !self.relay.enabled {
            return Err(BuildError::NoHandlers);
        }
        self.relay.check().map_err(BuildError::Invalid)?;
        let relay = crate::relay::Relay::new(self.relay).map_err(BuildError::Invalid)?;
        let s = &self.settings;
        if s.heartbeat >= s.lease {
            return Err(BuildError::Invalid(format!(
                "the heartbeat ({:?}) must be shorter than the lease ({:?})",
                s.heartbeat, s.lease
            )));
        }
        if s.queues.is_empty() || s.claim_batch == 0 {
            return Err(BuildError::Invalid(
                "a worker needs a queue and a claim batch of at least 1".into(),
            ));
        }
        if s.transactions == 0 {
            return Err(BuildError::Invalid(
                "a worker needs room for at least 1 transaction (`transactions`)".into(),
            ));
        }
        if let Some((kind, _)) = self.routes.iter().find(|(_, (_, c))| *c == 0) {
            return Err(BuildError::Invalid(format!(
                "the concurrency for {kind} tasks is 0"
            )));
        }
        let lock_dir = self
            .lock_dir
            .unwrap_or_else(crate::identity::default_lock_dir);
        let identity = crate::identity::acquire(
            self.id.as_deref(),
            &lock_dir,
            &store.location(),
            self.settings.heartbeat,
        )?;
        let mut settings = self.settings;
        settings.id = identity.id.as_str().into();
        let routes: Routes = self
            .routes
            .into_iter()
            .map(|(kind, (handler, concurrency))| {
                (
                    kind,
                    Route {
                        handler,
                        slots: Arc::new(Semaphore::new(concurrency)),
                        concurrency,
                    },
                )
            })
            .collect();
        Ok(Worker {
            routes: Arc::new(routes),
            relay: Arc::new(relay),
            runners: Arc::new(self.runners),
            metrics_addr: self.metrics_addr,
            shared: Arc::new(Shared {
                committer: crate::committer::Committer::new(),
                transactions: Arc::new(Semaphore::new(settings.transactions)),
                store,
                settings,
                identity,
                superseded: std::sync::atomic::AtomicBool::new(false),
                metrics: Metrics::default(),
                in_flight: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                stopping: watch::channel(false).0,
            }),
        })
    }
}

/// A worker: claims tasks from the shared queue and runs them through its handlers.
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn quark_history::Store>, handler: impl quark_worker::Handler) -> anyhow::Result<()> {
/// use quark_history::TaskKind;
/// let worker = quark_worker::Worker::builder()
///     .store(store)
///     .queues(["default"])
///     .handle(TaskKind::Job, handler, 16)
///     .build()?;
/// let running = worker.start().await?;
/// quark_worker::shutdown_signal().await;
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    routes: Arc<Routes>,
    relay: Arc<crate::relay::Relay>,
    runners: Arc<Vec<quark_workflow::runner::Runner>>,
    metrics_addr: Option<SocketAddr>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.shared.settings.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder with the defaults.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.shared.settings.id
    }

    /// The worker's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Brings the gauges (slots in use, warm instances) up to date.
    fn report_gauges(&self) {
        let slots = self.routes.iter().map(|(kind, route)| {
            (
                *kind,
                route
                    .concurrency
                    .saturating_sub(route.slots.available_permits()),
            )
        });
        let cached = self.runners.iter().map(|r| r.cached_instances()).sum();
        let bytes = self.runners.iter().map(|r| r.cached_bytes()).sum();
        self.shared.metrics.gauges(slots, cached, bytes);
    }

    /// Brings the gauge of blocked instances up to date: the database's count for each queue
    /// this worker serves.
    async fn report_blocked(&self) {
        match self
            .shared
            .store
            .count_instances(InstanceStatus::Blocked)
            .await
        {
            Ok(counts) => self
                .shared
                .metrics
                .blocked(&self.shared.settings.queues, &counts),
            Err(e) => tracing::debug!(error = %e, "could not count the blocked instances"),
        }
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.shared.settings.id.to_string(),
            queues: self.shared.settings.queues.clone(),
            labels: serde_json::Value::Object(self.shared.settings.labels.clone()).to_string(),
            heartbeat_at: self.shared.store.config().clock.now(),
        }
    }

    /// Registers the worker and starts its pollers and lease keeper (and its metrics endpoint, if
    /// it has an address).
    pub async fn start(&self) -> Result<RunningWorker, quark_history::Error> {
        let endpoint = match self.metrics_addr {
            Some(addr) => {
                let worker = self.clone();
                let refresh: crate::endpoint::Refresh = Arc::new(move || worker.report_gauges());
                let store = Arc::clone(&self.shared.store);
                Some(
                    crate::endpoint::serve(addr, store, refresh)
                        .await
                        .map_err(|e| {
                            quark_history::Error::Invalid(format!(
                                "cannot serve metrics on {addr}: {e}"
                            ))
                        })?,
                )
            }
            None => None,
        };
        self.register().await?;
        self.shared
            .committer
            // A commit batch as large as a claim (at least 128): a worker tuned to claim many
            // short tasks at once also settles them together.
            .start_lanes(
                &self.shared.store,
                4,
                (self.shared.settings.claim_batch as usize).max(128),
            );
        let mut tasks = Vec::new();
        for kind in self.routes.keys() {
            let (shared, routes) = (Arc::clone(&self.shared), Arc::clone(&self.routes));
            tasks.push(tokio::spawn(poller::run(shared, routes, *kind)));
        }
        if let Some(every) = self.shared.settings.maintenance {
            tasks.push(tokio::spawn(crate::maintenance::run(
                Arc::clone(&self.shared),
                every,
            )));
            tasks.push(tokio::spawn(crate::relay::housekeeping(
                Arc::clone(&self.shared),
                self.relay.config().clone(),
                every,
            )));
        }
        let scheduler = self
            .shared
            .settings
            .schedules
            .then(|| tokio::spawn(scheduler::run(Arc::clone(&self.shared))));
        // Not aborted at shutdown like the pollers: it finishes the deliveries in flight (so
        // they are not sent again after their lease expires) and hands back the rest.
        let relay = self.relay.config().enabled.then(|| {
            tokio::spawn(crate::relay::run(
                Arc::clone(&self.shared),
                Arc::clone(&self.relay),
            ))
        });
        let keeper = tokio::spawn(lease::keep(Arc::clone(&self.shared), self.info()));
        tasks.push(tokio::spawn(lease::reap(Arc::clone(&self.shared))));
        // The gauges follow the worker between scrapes too, for a recorder that is not scraped
        // through the endpoint (an application's own).
        let worker = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(GAUGE_INTERVAL);
            loop {
                tick.tick().await;
                worker.report_gauges();
            }
        }));
        if !self.runners.is_empty() {
            // Blocked instances wait for an operator (fixed code, then a re-drive): the gauge
            // that an alert watches.
            let worker = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(BLOCKED_INTERVAL);
                loop {
                    tick.tick().await;
                    worker.report_blocked().await;
                }
            }));
        }
        tracing::info!(worker = %self.id(), queues = ?self.shared.settings.queues, "worker started");
        Ok(RunningWorker {
            worker: self.clone(),
            endpoint,
            pollers: tasks,
            scheduler,
            relay,
            keeper,
        })
    }

    /// Registers this run of the worker's id. A run of the id that died is replaced and its
    /// leases are taken back at once; one that still heartbeats from another host is waited for,
    /// however long: taking its id would take its tasks from under it. A store error worth
    /// retrying is retried after a heartbeat; any other ends the start.
    async fn register(&self) -> Result<(), quark_history::Error> {
        let shared = &self.shared;
        loop {
            match shared
                .store
                .register_worker(self.info(), &shared.identity.run)
                .await
            {
                Ok(registered) => {
                    if registered.replaced {
                        tracing::info!(
                            worker = %self.id(),
                            reclaimed = registered.reclaimed,
                            "replaced the registration of a dead run of this worker; its leases are claimable again"
                        );
                    }
                    return Ok(());
                }
                Err(quark_history::Error::WorkerIdInUse {
                    scope, expires_in, ..
                }) => {
                    tracing::warn!(
                        worker = %self.id(),
                        other = %scope,
                        ?expires_in,
                        "another process still heartbeats under this worker id; waiting for it to stop"
                    );
                    // Its registration may be renewed meanwhile: ask again no later than one of
                    // our heartbeats, and no sooner than a few milliseconds.
                    let wait = expires_in
                        .min(shared.settings.heartbeat)
                        .max(std::time::Duration::from_millis(10));
                    tokio::time::sleep(wait).await;
                }
                // A locked SQLite file (another process is in a write, or stopped in one), a
                // dropped connection: the registration is tried again, as patiently as a live
                // holder is waited for.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        worker = %self.id(),
                        error = %e,
                        "could not register this worker; trying again"
                    );
                    tokio::time::sleep(shared.settings.heartbeat).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(
        &self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), quark_history::Error> {
        let running = self.start().await?;
        signal.await;
        running.shutdown().await;
        Ok(())
    }
}

/// A started worker. Drop it or call [`shutdown`](Self::shutdown) to stop.
#[derive(Debug)]
pub struct RunningWorker {
    worker: Worker,
    endpoint: Option<crate::endpoint::Endpoint>,
    pollers: Vec<JoinHandle<()>>,
    scheduler: Option<JoinHandle<()>>,
    relay: Option<JoinHandle<()>>,
    keeper: JoinHandle<()>,
}

impl RunningWorker {
    /// The worker.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Resolves if the worker stops by itself: another process registered its id (a restart of
    /// it, while this one was thought dead). It has stopped claiming and cancelled its tasks,
    /// whose leases were taken back; call [`shutdown`](Self::shutdown) and exit.
    pub async fn taken_over(&self) {
        let shared = &self.worker.shared;
        shared.stopped().await;
        if !shared.is_superseded() {
            // A graceful stop: not this.
            std::future::pending::<()>().await;
        }
    }

    /// Where its metrics and health endpoint listens, if it has one (see
    /// [`WorkerBuilder::metrics_addr`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().map(|e| e.addr)
    }

    /// Stops claiming, lets in-flight tasks finish within the grace period, hands the rest back by
    /// releasing their leases, and deregisters the worker.
    pub async fn shutdown(mut self) {
        let shared = &self.worker.shared;
        // `send_replace`, not `send`: `send` stores nothing when no task happens to be waiting
        // on the channel, and then a loop that checks it later would never see the stop.
        shared.stopping.send_replace(true);
        for poller in &self.pollers {
            poller.abort();
        }
        // One deadline for every stage: a scheduler or relay slow to stop leaves the tasks in
        // hand less time, instead of adding a grace period of its own.
        let deadline = tokio::time::Instant::now() + shared.settings.shutdown_grace;
        if let Some(mut scheduler) = self.scheduler.take() {
            // It stops at once when idle, or after the fire it is committing (a fire is one
            // transaction: cut short, it leaves nothing behind).
            if tokio::time::timeout_at(deadline, &mut scheduler)
                .await
                .is_err()
            {
                scheduler.abort();
            }
        }
        if let Some(relay) = self.relay.take() {
            let abort = relay.abort_handle();
            if tokio::time::timeout_at(deadline, relay).await.is_err() {
                tracing::warn!(
                    "outbox deliveries still running after the grace period; their messages will be re-sent"
                );
                abort.abort();
            }
        }
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                let idle = shared.idle.notified();
                if shared.in_flight().is_empty() {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok();
        self.keeper.abort();
        if !drained {
            let left: Vec<InFlight> = shared.in_flight().drain().map(|(_, f)| f).collect();
            tracing::warn!(
                count = left.len(),
                "shutdown grace over; handing tasks back"
            );
            for task in left {
                let _ = task.cancel.send(true);
                if let Some(abort) = task.abort {
                    abort.abort();
                }
                lease::hand_back(shared, task.lease).await;
            }
        }
        // A stopped worker holds no slots and no warm instances.
        shared.metrics.clear_gauges();
        if let Err(e) = shared
            .store
            .retire_run(&shared.settings.id, &shared.identity.run)
            .await
        {
            tracing::warn!(error = %e, "could not deregister; the registration expires by itself");
        }
        tracing::info!(worker = %shared.settings.id, "worker stopped");
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        for poller in &self.pollers {
            poller.abort();
        }
        if let Some(scheduler) = &self.scheduler {
            scheduler.abort();
        }
        if let Some(relay) = &self.relay {
            relay.abort();
        }
        self.keeper.abort();
    }
}
