//! The worker: pollers per task kind, a bounded pool each, lease keeping, graceful shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quark_history::{InstanceStatus, TaskKind, WorkerInfo};
use tokio::task::JoinHandle;

use crate::builder::WorkerBuilder;
use crate::handler::Routes;
use crate::metrics::MetricsSnapshot;
use crate::shared::{InFlight, Shared};
use crate::{lease, poller, scheduler};

/// How often the gauges are brought up to date between scrapes.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a worker that runs orchestrations counts the blocked instances of its queues (one
/// indexed `COUNT` in the database).
const BLOCKED_INTERVAL: Duration = Duration::from_secs(5);

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
    pub(crate) shared: Arc<Shared>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) relay: Arc<crate::relay::Relay>,
    pub(crate) runners: Arc<Vec<quark_workflow::runner::Runner>>,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) projections: Arc<Vec<Arc<dyn quark_workflow::projection::RunProjection>>>,
    /// The memory governor's settings, if memory is governed.
    pub(crate) memory: Option<crate::memory::Resolved>,
    /// The placement coordinator's settings, if this worker may coordinate.
    pub(crate) placement: Option<crate::placement::coordinator::PlacementConfig>,
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
    pub fn builder() -> WorkerBuilder<crate::builder::NoStore> {
        WorkerBuilder::default()
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.shared.settings.id
    }

    /// The entities its activities keep live (so that a hot entity's commands do not load it
    /// from the journal each time), with their footprints.
    pub fn live_entities(&self) -> Vec<quark_workflow::entity::LiveEntity> {
        self.runners
            .iter()
            .flat_map(|r| r.live_entities())
            .collect()
    }

    /// The orchestration instances it keeps warm, with their footprints, largest first.
    pub fn live_instances(&self) -> Vec<quark_workflow::runner::LiveInstance> {
        let mut all: Vec<_> = self
            .runners
            .iter()
            .flat_map(|r| r.live_instances())
            .collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.footprint));
        all
    }

    /// The warm state placement may move, as it publishes it: its orchestration runs and its
    /// live entities (named by their stream), largest first.
    fn placeable_state(&self) -> Vec<quark_workflow::runner::LiveInstance> {
        let mut all = self.live_instances();
        all.extend(self.live_entities().into_iter().map(|e| {
            quark_workflow::runner::LiveInstance {
                instance_id: e.stream_id,
                footprint: e.footprint,
                events: e.version,
            }
        }));
        all.sort_by_key(|l| std::cmp::Reverse(l.footprint));
        all
    }

    /// The worker's memory as its governor last saw it: pressure level, circuit breaker, resident
    /// memory and limit.
    pub fn memory(&self) -> crate::memory::MemoryReading {
        self.shared.memory.reading()
    }

    /// The pressure level, as it changes.
    pub fn watch_pressure(&self) -> tokio::sync::watch::Receiver<quark_history::Pressure> {
        self.shared.memory.watch_pressure()
    }

    /// What the worker publishes with its heartbeats: its memory and its warm state.
    pub fn load(&self) -> quark_history::WorkerLoad {
        let mut load = self.shared.memory.load();
        for runner in self.runners.iter() {
            load.cached_instances += runner.cached_instances() as u64;
            load.cached_bytes += runner.cached_bytes() as u64;
            let (entities, bytes) = runner.live_entity_size();
            load.live_entities += entities as u64;
            load.entity_bytes += bytes as u64;
        }
        load
    }

    /// How many tasks of `kind` this worker runs at once, or `None` if it does not serve them.
    pub fn concurrency(&self, kind: TaskKind) -> Option<usize> {
        self.routes.get(&kind).map(|route| route.concurrency)
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
            load: self.load(),
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
        self.publish_catalog().await;
        self.shared
            .committer
            // A commit batch as large as a claim (at least 128): a worker tuned to claim many
            // short tasks at once also settles them together.
            .start_lanes(
                Arc::clone(&self.shared.store) as Arc<dyn quark_history::EventLog>,
                4,
                (self.shared.settings.claim_batch as usize).max(128),
            );
        let mut tasks = Vec::new();
        for kind in self.routes.keys() {
            let (shared, routes) = (Arc::clone(&self.shared), Arc::clone(&self.routes));
            tasks.push(tokio::spawn(poller::run(shared, routes, *kind)));
        }
        #[cfg(feature = "postgres")]
        if let Some(coordinator) = self
            .runners
            .first()
            .and_then(|r| r.coordinator(&self.shared.store))
        {
            tasks.push(tokio::spawn(crate::two_phase::run(
                Arc::clone(&self.shared),
                coordinator,
            )));
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
        // Not aborted at shutdown either: each gives up its lease, so another worker takes over
        // at once.
        let mut leased: Vec<JoinHandle<()>> = self
            .projections
            .iter()
            .map(|p| {
                tokio::spawn(crate::projections::run(
                    Arc::clone(&self.shared),
                    Arc::clone(p),
                ))
            })
            .collect();
        if let Some(placement) = &self.placement {
            leased.push(tokio::spawn(crate::placement::coordinator::run(
                Arc::clone(&self.shared),
                placement.clone(),
            )));
        }
        if let Some(memory) = &self.memory {
            tasks.push(tokio::spawn(crate::memory::governor::run(
                Arc::clone(&self.shared),
                Arc::clone(&self.runners),
                memory.clone(),
            )));
        }
        if !self.runners.is_empty() {
            tasks.push(tokio::spawn(crate::placement::follow::run(
                Arc::clone(&self.shared),
                Arc::clone(&self.runners),
            )));
        }
        let worker = self.clone();
        let keeper = tokio::spawn(lease::keep(
            Arc::clone(&self.shared),
            self.info(),
            Box::new(move || worker.load()),
            Box::new({
                let worker = self.clone();
                move || worker.placeable_state()
            }),
        ));
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
            leased,
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

    /// Publishes the orchestrations and activities this worker runs to the store's catalog, where
    /// a process without the code (`quark serve`) finds the version and queue to start them with.
    /// A failure is logged and does not stop the worker: what it runs is unchanged, and the
    /// catalog keeps the previous registration of each type.
    async fn publish_catalog(&self) {
        let id = self.id().to_string();
        let types: Vec<_> = self
            .runners
            .iter()
            .flat_map(|runner| runner.registry().catalog(&id))
            .collect();
        if types.is_empty() {
            return;
        }
        if let Err(e) = self.shared.store.publish_types(types).await {
            tracing::warn!(worker = %id, error = %e, "could not publish this worker's types to the catalog");
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
    /// The loops that hold a lease (the projections', the placement coordinator's): each
    /// finishes what it is doing and gives up its lease at shutdown.
    leased: Vec<JoinHandle<()>>,
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
        for looping in std::mem::take(&mut self.leased) {
            let abort = looping.abort_handle();
            if tokio::time::timeout_at(deadline, looping).await.is_err() {
                // Its page rolls back with the connection; its lease runs out by itself.
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
        for looping in &self.leased {
            looping.abort();
        }
        self.keeper.abort();
    }
}
