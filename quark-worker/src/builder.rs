//! Configuring a worker: [`WorkerBuilder`], its defaults and its checks ([`BuildError`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{Store, TaskKind};
use tokio::sync::{Notify, Semaphore, watch};

use crate::handler::Handler;
use crate::handler::{Route, Routes};
use crate::metrics::Metrics;
use crate::shared::{Settings, Shared};
use crate::worker::Worker;

/// Configures a [`Worker`]. [`Worker::builder`] starts one without a store, and only a builder
/// that was given one has [`build`](WorkerBuilder::build): a worker without a store does not
/// compile.
///
/// ```compile_fail
/// # fn demo(registry: quark_workflow::Registry) {
/// let worker = quark_worker::Worker::builder().workflows(registry).build(); // no store
/// # }
/// ```
///
/// The options can be given in any order: each sets its own value, and `build` puts them
/// together (a [`concurrency`](WorkerBuilder::concurrency) given before the handler it is for
/// still applies).
pub struct WorkerBuilder<S = HasStore> {
    store: S,
    settings: Settings,
    /// The handlers, with the concurrency each comes with.
    routes: HashMap<TaskKind, (Arc<dyn Handler>, usize)>,
    /// Concurrency set with [`concurrency`](WorkerBuilder::concurrency): it wins over the
    /// handler's own, whatever the order.
    concurrency: HashMap<TaskKind, usize>,
    relay: crate::relay::OutboxRelay,
    /// The runners of [`workflows`](Self::workflows), whose warm instances the gauges count.
    runners: Vec<quark_workflow::runner::Runner>,
    /// What the runners keep live, and when they warn about a long history.
    warm: quark_workflow::WarmLimits,
    history_warning: quark_workflow::HistoryWarning,
    metrics_addr: Option<SocketAddr>,
    /// The id asked for; `None`: the first free `<host>-<n>`.
    id: Option<String>,
    lock_dir: Option<std::path::PathBuf>,
    /// The projections to run, made once the worker's id (their lease owner) is known.
    projections: Vec<ProjectionFactory>,
    /// How the worker watches its memory; `None`: it does not.
    memory: Option<crate::memory::MemoryConfig>,
    memory_probe: Option<Arc<dyn crate::memory::MemoryProbe>>,
    placement: Option<crate::placement::coordinator::PlacementConfig>,
    /// The namespace whose queues it serves, if any.
    namespace: Option<String>,
    /// The deployment's shards and the name of this worker's, if sharded.
    shard: Option<(quark_history::shards::Shards, String)>,
    /// The databases transactional activities may write in by two-phase commit.
    #[cfg(feature = "postgres")]
    participants: Option<quark_history::two_phase::Participants>,
}

type ProjectionFactory = Box<
    dyn FnOnce(Arc<dyn Store>, &str) -> Arc<dyn quark_workflow::projection::RunProjection> + Send,
>;

/// The state of a [`WorkerBuilder`] not given a store yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

/// The state of a [`WorkerBuilder`] given its store: it can [`build`](WorkerBuilder::build).
#[derive(Clone)]
pub struct HasStore(Arc<dyn Store>);

impl fmt::Debug for HasStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HasStore").field(&self.0.backend()).finish()
    }
}

impl<S> fmt::Debug for WorkerBuilder<S> {
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

impl Default for WorkerBuilder<NoStore> {
    fn default() -> Self {
        WorkerBuilder {
            store: NoStore,
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
            concurrency: HashMap::new(),
            relay: crate::relay::OutboxRelay::default(),
            runners: Vec::new(),
            warm: Default::default(),
            history_warning: Default::default(),
            metrics_addr: None,
            id: None,
            lock_dir: None,
            projections: Vec::new(),
            memory: Some(crate::memory::MemoryConfig::default()),
            memory_probe: None,
            placement: Some(crate::placement::coordinator::PlacementConfig::default()),
            namespace: None,
            shard: None,
            #[cfg(feature = "postgres")]
            participants: None,
        }
    }
}

/// Transactional activities hold a pooled connection from their start to their commit; the
/// PostgreSQL store's pool has 16, and the worker's claims, commits and lease extensions share the
/// other four.
const DEFAULT_TRANSACTIONS: usize = 12;

impl<S> WorkerBuilder<S> {
    /// The store to work from (given again, the last one counts).
    pub fn store(self, store: Arc<dyn Store>) -> WorkerBuilder<HasStore> {
        WorkerBuilder {
            store: HasStore(store),
            settings: self.settings,
            routes: self.routes,
            concurrency: self.concurrency,
            relay: self.relay,
            runners: self.runners,
            warm: self.warm,
            history_warning: self.history_warning,
            metrics_addr: self.metrics_addr,
            id: self.id,
            lock_dir: self.lock_dir,
            projections: self.projections,
            memory: self.memory,
            memory_probe: self.memory_probe,
            placement: self.placement,
            namespace: self.namespace,
            shard: self.shard,
            #[cfg(feature = "postgres")]
            participants: self.participants,
        }
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

    /// Lets the workflows' transactional activities write in these PostgreSQL databases as well
    /// (`ActivityContext::participant`): their writes there commit with the activity's result
    /// by two-phase commit, and this worker finishes what crashed coordinators left prepared
    /// (every few seconds; see `quark tx in-doubt`). Every worker must name the same
    /// participants. Needs [`workflows`](Self::workflows).
    #[cfg(feature = "postgres")]
    pub fn participants(mut self, participants: quark_history::two_phase::Participants) -> Self {
        self.participants = Some(participants);
        self
    }

    /// Makes this worker one of shard `name`'s workers in a sharded deployment: its store must
    /// be that shard's. Signals its instances send to instances on other shards go through the
    /// outbox, and its relay delivers outbox signals into their instance's shard. (To serve
    /// several shards, run a worker per shard; see `quark worker --shard`.)
    pub fn shard(mut self, shards: quark_history::shards::Shards, name: &str) -> Self {
        // An unknown name is refused by `build`.
        self.shard = Some((shards, name.to_owned()));
        self
    }

    /// Serves namespace `namespace`: each queue this worker serves is its namespace's
    /// (`orders` is `acme::orders`). Its instances' children, signals by a plain id and
    /// activities' own queues stay in their namespace by themselves.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The queues to serve (default: `default`).
    pub fn queues(mut self, queues: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.settings.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// A label: where the worker is (`region`, `zone`, `rack`), which placement uses, or
    /// anything else an operator wants to see in `quark worker list`. A topology label that is
    /// empty, misspelt (`Zone`, `az`, `dc`) or without its wider level (a `rack` without a
    /// `zone`) fails [`build`](WorkerBuilder::build).
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
        // The registry's projections run here too (`Registry::projection`).
        for make in registry.projections().values() {
            let make = Arc::clone(make);
            self.projections
                .push(Box::new(move |store, owner| make(store, owner)));
        }
        // `build` sets its limits again, so that `warm_limits` and `history_warning` apply
        // whether they come before this call or after it.
        let runner =
            quark_workflow::runner::Runner::with_limits(registry, self.warm, self.history_warning);
        self.runners.push(runner.clone());
        let w = Arc::new(runner);
        [
            (TaskKind::Orchestration, 256),
            (TaskKind::Activity, 256),
            (TaskKind::Timer, 16),
            (TaskKind::Job, 32),
            (TaskKind::Request, 16),
        ]
        .into_iter()
        .fold(self, |builder, (kind, concurrency)| {
            builder.handle_shared(kind, w.clone(), concurrency)
        })
    }

    /// Sets how many tasks of `kind` run at once, before or after the handler is given; the kind
    /// must have a handler by [`build`](WorkerBuilder::build).
    pub fn concurrency(mut self, kind: TaskKind, n: usize) -> Self {
        self.concurrency.insert(kind, n);
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
    pub fn warm_limits(mut self, limits: quark_workflow::WarmLimits) -> Self {
        self.warm = limits;
        self
    }

    /// How the worker watches its memory and acts on its pressure (see [`crate::memory`]). On by
    /// default: the limit is the control group's or the machine's, the thresholds 70/85/95 %.
    /// A limit above the machine's memory or the control group's, or thresholds out of order,
    /// fail [`build`](WorkerBuilder::build) with a message that says which.
    pub fn memory(mut self, config: crate::memory::MemoryConfig) -> Self {
        self.memory = Some(config);
        self
    }

    /// Turns the memory governor off: the worker keeps what [`warm_limits`](Self::warm_limits)
    /// allows whatever its memory, and claims whatever its memory.
    pub fn without_memory_governor(mut self) -> Self {
        self.memory = None;
        self
    }

    /// How the placement coordinator works (see [`crate::placement::coordinator`]). On by
    /// default: every worker may coordinate, one at a time does, and it moves instances between
    /// the workers that serve their queue for locality every 30 s and at once to relieve a
    /// worker under memory pressure.
    pub fn placement(mut self, config: crate::placement::coordinator::PlacementConfig) -> Self {
        self.placement = Some(config);
        self
    }

    /// This worker never coordinates placement (others may still move its instances).
    pub fn without_placement(mut self) -> Self {
        self.placement = None;
        self
    }

    /// Where the memory governor reads memory from (default: [`crate::memory::ProcProbe`]).
    pub fn memory_probe(mut self, probe: impl crate::memory::MemoryProbe) -> Self {
        self.memory_probe = Some(Arc::new(probe));
        self
    }

    /// When an instance's history is long enough to warn about (a log line and the
    /// `quark_long_histories_total` counter, once per live run). Default: 10,240 events or
    /// 10 MiB, as Temporal warns. The answer to the warning is `ctx.continue_as_new`.
    pub fn history_warning(mut self, warning: quark_workflow::HistoryWarning) -> Self {
        self.history_warning = warning;
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

    /// Runs projection `projection` on this worker: page by page while it has events to apply,
    /// looking again every poll interval once it is up to date. One worker at a time applies it
    /// (the lease, owned by the worker's id); the others stand by and take over when that
    /// worker stops or its lease runs out. A building version becomes the active one when it
    /// has caught up. Counted in `quark_projection_events_total`; its lag is the gauge
    /// `quark_projection_behind_seconds`.
    pub fn projection<P: quark_workflow::projection::Projection>(mut self, projection: P) -> Self {
        self.projections.push(Box::new(move |store, owner| {
            Arc::new(quark_workflow::projection::Projector::new(store, projection).owner(owner))
        }));
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
    /// the worker runs (port 0: any free port; [`RunningWorker::metrics_addr`](crate::RunningWorker::metrics_addr) says which).
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
}

impl WorkerBuilder<HasStore> {
    /// Builds the worker.
    pub fn build(mut self) -> Result<Worker, BuildError> {
        let store = self.store.0;
        if let Some(ns) = &self.namespace {
            quark_history::check_namespace(ns).map_err(BuildError::Invalid)?;
            self.settings.queues = self
                .settings
                .queues
                .iter()
                .map(|q| quark_history::qualify(Some(ns), q))
                .collect();
        }
        if let Some(kind) = self
            .concurrency
            .keys()
            .find(|kind| !self.routes.contains_key(kind))
        {
            return Err(BuildError::Invalid(format!(
                "a concurrency is set for {kind} tasks, which have no handler"
            )));
        }
        for runner in &self.runners {
            runner.set_limits(self.warm, self.history_warning);
        }
        #[cfg(feature = "postgres")]
        if let Some(participants) = self.participants.take() {
            if self.runners.is_empty() {
                return Err(BuildError::Invalid(
                    "participants are for the transactional activities of workflows: this worker \
                     runs none (call `workflows`)"
                        .into(),
                ));
            }
            for runner in &self.runners {
                runner.set_participants(participants.clone());
            }
        }
        for (kind, n) in self.concurrency {
            if let Some(route) = self.routes.get_mut(&kind) {
                route.1 = n;
            }
        }
        if self.routes.is_empty() && !self.relay.enabled {
            return Err(BuildError::NoHandlers);
        }
        self.relay.check().map_err(BuildError::Invalid)?;
        let mut relay = crate::relay::Relay::new(self.relay).map_err(BuildError::Invalid)?;
        if let Some((shards, name)) = self.shard.take() {
            let Some(position) = shards.map().names().iter().position(|n| *n == name) else {
                return Err(BuildError::Invalid(format!(
                    "shard `{name}` is not in the shard map [{}]",
                    shards.map().names().join(", ")
                )));
            };
            if !Arc::ptr_eq(shards.store(position), &store) {
                return Err(BuildError::Invalid(format!(
                    "a worker of shard `{}` must work from that shard's store",
                    shards.map().names()[position]
                )));
            }
            for runner in &self.runners {
                runner.set_shard(shards.clone(), position);
            }
            relay = relay.with_shards(shards);
        }
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
        crate::placement::topology::Place::from_labels(&s.labels)
            .map_err(|e| BuildError::Invalid(e.to_string()))?;
        if let Some(placement) = &self.placement {
            placement.validate().map_err(BuildError::Invalid)?;
        }
        let memory = match self.memory {
            Some(config) => {
                let probe = self
                    .memory_probe
                    .unwrap_or_else(|| Arc::new(crate::memory::ProcProbe::default()));
                crate::memory::resolve(config, probe).map_err(BuildError::Invalid)?
            }
            None => None,
        };
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
        // One projector per projection version, whether it came from a registry or `projection`.
        let mut projections: Vec<Arc<dyn quark_workflow::projection::RunProjection>> = Vec::new();
        for make in self.projections {
            let p = make(Arc::clone(&store), &settings.id);
            if projections
                .iter()
                .any(|q| (q.name(), q.version()) == (p.name(), p.version()))
            {
                tracing::warn!(
                    projection = p.name(),
                    version = p.version(),
                    "projection added twice (a registry and `projection`); running it once"
                );
                continue;
            }
            projections.push(p);
        }
        Ok(Worker {
            memory,
            placement: self.placement,
            projections: Arc::new(projections),
            routes: Arc::new(routes),
            relay: Arc::new(relay),
            runners: Arc::new(self.runners),
            metrics_addr: self.metrics_addr,
            shared: Arc::new(Shared {
                committer: quark_workflow::runner::Committer::new(),
                transactions: Arc::new(Semaphore::new(settings.transactions)),
                store,
                settings,
                identity,
                superseded: std::sync::atomic::AtomicBool::new(false),
                metrics: Metrics::default(),
                memory: crate::memory::Status::default(),
                sketch: crate::placement::sketch::Sketch::new(
                    crate::placement::sketch::CAPACITY,
                    crate::placement::sketch::HALF_LIFE,
                ),
                in_flight: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                stopping: watch::channel(false).0,
            }),
        })
    }
}
