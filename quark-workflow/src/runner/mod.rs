//! The one task runner: a claimed task, driven from its claim to its settle.
//!
//! Every task of the shared queue that runs workflow code (an orchestration turn, an activity
//! attempt, a timer, a job attempt) goes through [`Runner`], and so does the handling of a commit
//! the store refuses ([`settle()`]); every outbox message goes through [`outbox::run_key`]. Whoever claims tasks is a *driver*: the worker
//! (`quark-worker`, with a real clock, pools, lease keeping and group commit) and the test
//! environment ([`TestEnv`](crate::testing::TestEnv), with a virtual clock, one task at a time).
//! A driver gives each task a [`Host`]: what the runner may ask of its driver while the task runs
//! (commit, run a follow-up task here, heartbeats, cancellation). Nothing about a task's outcome
//! depends on which driver runs it; the drivers differ only in when tasks run and how commits
//! reach the store.
//!
//! The runner keeps instances live ([`live`]): a warm instance's run stays suspended between
//! turns on the runner's orchestration threads, so a turn reads and feeds it only the events it
//! has not seen, instead of replaying the whole history; and an activity whose orchestration is
//! live commits its result together with the turn it unblocks (the warm continuation), one
//! transaction per step.
//!
//! This module is the runtime's plumbing, for `quark-worker` and for whoever builds a runtime of
//! their own; it is hidden from the documentation and may change in any release. What a user
//! configures of it (`WarmLimits`, `HistoryWarning`, `LiveInstance`) is re-exported at the crate's
//! root.

mod activity;
mod committer;
mod crossing;
pub mod live;
mod orchestration;
pub mod outbox;
mod prefetch;
mod request;
mod settle;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::{
    ClaimedTask, Commit, Committed, Lease, NewTask, Payload, Store, StoreTx, TaskKind, Timestamp,
};

use crate::activity::ActivityInfo;
use crate::registry::Registry;

pub use committer::Committer;
pub use live::{Evicted, HistoryWarning, LiveInstance, WarmLimits};
// The SDK's task formats and pure steps, for a runtime: what a task carries, how a turn is taken,
// how an activity's, a timer's or a job's outcome is committed.
pub use crate::executor::{Outcome, Replay};
pub use crate::job::{JobTask, job_commit, job_task, job_task_by_name};
pub use crate::task::{
    ActivityTask, RequestKind, RequestTask, TaskPayload, TimerTask, activity_commit, timer_commit,
};
pub use crate::turn::{Turn, process_turn};
pub use settle::{MAX_CONFLICT_RETRIES, MAX_TURN_RELEASE_DELAY, Settled, release_delay, settle};

/// Histories past this many events get a warning (Temporal warns at 10,240); see
/// [`HistoryWarning`] to change it.
pub const HISTORY_WARN_EVENTS: usize = 10_240;

/// What handling a task came to.
#[derive(Debug)]
#[must_use]
pub enum Handled {
    /// The commit that records the task's outcome; it settles the task's lease. The runner
    /// commits it through the [`Host`] and deals with a refusal.
    Commit(Commit),
    /// The handler already committed its task's outcome itself (through [`Host::commit`] or
    /// [`Host::commit_tx`]); there is nothing left to write.
    Settled,
}

/// Why a handler could not produce a commit. The runner releases the task to be retried after a
/// short backoff; the task's own retry policy is the handler's business and goes into the commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The store failed (a dropped connection, say). Retried.
    #[error(transparent)]
    Store(#[from] quark_history::Error),
    /// The task cannot be processed here (unknown type, undecodable payload). The message says
    /// why; the task is dead-lettered.
    #[error("{0}")]
    Rejected(String),
    /// The task's lease was lost while it ran: another holder runs it now, and nothing this
    /// attempt commits would be accepted. Nothing is written.
    #[error("the lease was lost")]
    LeaseLost,
    /// Anything else. Retried.
    #[error("{0}")]
    Other(String),
}

/// What happened to a task, for a driver's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEvent {
    /// A commit was refused because the lease had been lost.
    LeaseLost,
    /// A turn is redone because its history moved on while it ran.
    Conflict,
    /// An instance's history passed the warning bounds ([`HistoryWarning`]), once per run.
    LongHistory,
    /// A child's end or a signal continued its receiver's warm run here, in the sender's commit,
    /// without a trip through the queue (local delivery).
    DeliveredHere,
    /// A turn sent a signal (`ctx.send`) to an instance that has ended or does not exist: it was
    /// dropped.
    SignalDropped,
    /// A turn sent a signal to an instance on another shard: it went into the outbox, whose
    /// relay delivers it there.
    SignalAcrossShards,
    /// A turn or an activity sent news to an instance on another shard (a child's start, a
    /// child's end for its parent, a notice for a child, an entity command's result for its
    /// orchestration): it went into the outbox, whose relay delivers it there.
    NewsAcrossShards,
    /// A turn's entity command went to its entity's shard, through the outbox, to run there.
    EntityAcrossShards,
    /// A turn (or a query) found its instance's run not warm here and rebuilt it by replaying a
    /// history its code had run on before (a cache miss: the instance was evicted, moved, or
    /// last ran elsewhere), for the reason given.
    Replayed(Miss),
    /// A turn's entity command was sent to the worker where its entity is live (the stream's
    /// home) instead of running here.
    EntityRouted,
}

/// Why a turn could not feed its instance's warm run and replayed the history instead (see
/// [`RunEvent::Replayed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Miss {
    /// No run of the instance is kept here: it was never here, was evicted, or was dropped when
    /// the instance moved away.
    NotWarm,
    /// The turn's history was read ahead (prefetched) from the start while no run was kept,
    /// and a run appeared meanwhile.
    ReadAhead,
    /// The run has a commit of its own in flight (its last turn is not confirmed yet).
    Busy,
    /// The run is behind or ahead of the history: events it has not seen were appended by
    /// another worker or by a commit it was not told of.
    Behind,
    /// The run, fed the new events, found they disagree with what it had decided.
    Stale,
}

impl Miss {
    /// Its name, as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::NotWarm => "not_warm",
            Miss::ReadAhead => "read_ahead",
            Miss::Busy => "busy",
            Miss::Behind => "behind",
            Miss::Stale => "stale",
        }
    }
}

/// What the runner asks of the driver of one task. The worker's `TaskContext` is one; the test
/// environment has its own.
pub trait Host: Send + Sync + 'static {
    /// The store the task came from.
    fn store(&self) -> &Arc<dyn Store>;

    /// The lease the task is held under.
    fn lease(&self) -> &Lease;

    /// Commits `commit` (a driver may group it with other commits) and starts the tasks it
    /// created that [`run_here`](Self::run_here) reserved.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, quark_history::Result<Committed>>;

    /// Writes `commit` inside `tx` and commits both (a transactional activity's result).
    fn commit_tx(
        &self,
        tx: StoreTx,
        commit: Commit,
    ) -> BoxFuture<'_, quark_history::Result<Committed>>;

    /// Asks to run `task` right after the commit that creates it, without a trip through the
    /// queue; if the driver agrees it leases the task to itself (`task.lease_to`) and returns
    /// `true`.
    fn run_here(&self, task: &mut NewTask) -> bool;

    /// Whether this task was started here by the commit that created it (see
    /// [`run_here`](Self::run_here)) rather than claimed from the queue. Only such an activity's
    /// result proves written, to the live run, the commit of its own turn. The default: claimed.
    fn started_here(&self) -> bool {
        false
    }

    /// An activity sent a heartbeat.
    fn heartbeat(&self, info: &ActivityInfo, progress: Option<Payload>);

    /// Resolves when the task's lease is lost (or the driver gives up on it): stop, commit
    /// nothing.
    fn cancelled(&self) -> BoxFuture<'static, ()>;

    /// Resolves when an operator asks the task to stop (a cancelled job, an activity of an ended
    /// instance): the attempt should end and settle.
    fn stop_requested(&self) -> BoxFuture<'static, ()>;

    /// Waits for a turn to hold a database transaction (a transactional activity or job); the
    /// turn lasts as long as the returned guard. The default has no bound.
    fn transaction_turn(&self) -> BoxFuture<'_, Option<Box<dyn Send>>> {
        Box::pin(async { None })
    }

    /// Counts what happened (for metrics). The default ignores it.
    fn note(&self, event: RunEvent) {
        let _ = event;
    }
}

/// A shared handle on a task's host.
pub type HostRef = Arc<dyn Host>;

/// Runs the workflow tasks of one registry: orchestration turns, activities, timers and jobs,
/// with the live runs that keep instances warm. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    registry: Arc<Registry>,
    live: Arc<live::LiveInstances>,
    prefetch: Arc<prefetch::Prefetch>,
    /// The live entities activities' commands read (made with the store of the first one).
    entities: Arc<std::sync::OnceLock<crate::entity::Entities>>,
    /// New warm state is turned away (see [`Runner::admit_new`]).
    refusing: Arc<std::sync::atomic::AtomicBool>,
    /// Serializes the updates of each instance on this runner.
    requests: Arc<request::InstanceLocks>,
    /// The databases transactional activities may also write in, by two-phase commit.
    two_phase: Arc<crate::participant::TwoPhaseConfig>,
    /// The deployment's shards and the position of the one this runner's store is, if sharded.
    shard: Arc<std::sync::OnceLock<(quark_history::shards::Shards, usize)>>,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner of `registry`'s code that keeps up to `warm_instances` instances live (and at
    /// most the default [`WarmLimits::bytes`] of them).
    pub fn new(registry: Registry, warm_instances: usize) -> Self {
        let limits = WarmLimits {
            instances: warm_instances,
            ..WarmLimits::default()
        };
        Self::with_limits(registry, limits, HistoryWarning::default())
    }

    /// A runner of `registry`'s code that keeps instances live within `limits`, and warns about
    /// histories past `warning`. Its live runs are spread over one orchestration thread per
    /// core (at most 8).
    pub fn with_limits(registry: Registry, limits: WarmLimits, warning: HistoryWarning) -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let live = Arc::new(live::LiveInstances::new(threads, limits, warning));
        Runner {
            registry: Arc::new(registry),
            prefetch: Arc::new(prefetch::Prefetch::new(Arc::clone(&live))),
            live,
            entities: Arc::default(),
            refusing: Arc::default(),
            requests: Arc::default(),
            two_phase: Arc::default(),
            shard: Arc::default(),
        }
    }

    /// Makes this runner (and its clones) the runner of shard `position` of `shards`: what a
    /// turn sends to an instance on another shard (a signal, a child's start, a child's end for
    /// its parent, a notice for a child) goes through the outbox, which delivers it there once.
    /// Children Quark names (`call_child`) stay with their parent; `call_child_with_id` may
    /// place one anywhere.
    /// Set once: `false` if it was set already.
    pub fn set_shard(&self, shards: quark_history::shards::Shards, position: usize) -> bool {
        self.shard.set((shards, position)).is_ok()
    }

    /// The shard an instance lives on (or will be created on), if it is not this runner's: its
    /// name. No database read unless shards were added (see `Shards::locate`).
    pub(crate) async fn elsewhere(&self, instance_id: &str) -> quark_history::Result<Option<&str>> {
        let Some((shards, here)) = self.shard.get() else {
            return Ok(None);
        };
        let there = shards.locate(instance_id).await?;
        Ok((there != *here).then(|| shards.map().names()[there].as_str()))
    }

    /// Lets this runner's transactional activities (and its clones') write in `participants`
    /// as well (see `ActivityContext::participant`), committed with their results by two-phase
    /// commit. Set once: `false` if they were set already.
    #[cfg(feature = "postgres")]
    pub fn set_participants(&self, participants: quark_history::two_phase::Participants) -> bool {
        self.two_phase.set(participants)
    }

    /// The two-phase commit coordinator of this runner's participants, deciding in `store`'s
    /// log; `None` without participants.
    #[cfg(feature = "postgres")]
    pub fn coordinator(
        &self,
        store: &Arc<dyn quark_history::Store>,
    ) -> Option<quark_history::two_phase::Coordinator> {
        self.two_phase.coordinator(store)
    }

    /// A runner of `registry` that shares this runner's live instances (the test environment
    /// swaps registries when a test mocks an activity; a run started under other code is
    /// replayed anew).
    #[cfg(feature = "sqlite")] // the test environment's, which runs on SQLite
    pub(crate) fn with_registry(&self, registry: Registry) -> Self {
        Runner {
            registry: Arc::new(registry),
            live: Arc::clone(&self.live),
            prefetch: Arc::clone(&self.prefetch),
            entities: Arc::clone(&self.entities),
            refusing: Arc::clone(&self.refusing),
            requests: Arc::clone(&self.requests),
            two_phase: Arc::clone(&self.two_phase),
            shard: Arc::clone(&self.shard),
        }
    }

    /// Changes what the runner keeps live and when it warns about a long history; runs over the
    /// new limits are evicted as instances are next used.
    pub fn set_limits(&self, limits: WarmLimits, warning: HistoryWarning) {
        self.live.set_limits(limits, warning);
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// How many instances the runner holds live now (a driver's gauge).
    pub fn cached_instances(&self) -> usize {
        self.live.len()
    }

    /// The estimated memory the live instances hold, in bytes (a driver's gauge).
    pub fn cached_bytes(&self) -> usize {
        self.live.bytes()
    }

    /// Every live instance with its estimated footprint, largest first.
    pub fn live_instances(&self) -> Vec<LiveInstance> {
        self.live.instances()
    }

    /// The entities the runner's activities keep live, with their footprints.
    pub fn live_entities(&self) -> Vec<crate::entity::LiveEntity> {
        self.entities.get().map(|e| e.live()).unwrap_or_default()
    }

    /// The live entities over `store`, made at first use.
    pub(crate) fn entities(
        &self,
        store: &Arc<dyn quark_history::Store>,
    ) -> crate::entity::Entities {
        self.entities
            .get_or_init(|| {
                let entities = crate::entity::Entities::new(Arc::clone(store));
                entities.admit_new(!self.refusing.load(std::sync::atomic::Ordering::Acquire));
                entities
            })
            .clone()
    }

    /// How many entities the runner's activities keep live, and their footprints in bytes.
    pub fn live_entity_size(&self) -> (usize, usize) {
        self.entities.get().map_or((0, 0), |e| e.live_size())
    }

    /// Keeps no new warm state (`false`): turns of instances not live yet still run, but their
    /// runs are not kept, and entities not live yet are dropped after their commands. What is
    /// live already stays. `true` admits new warm state again. A worker short of memory calls it.
    pub fn admit_new(&self, admit: bool) {
        self.refusing
            .store(!admit, std::sync::atomic::Ordering::Release);
        self.live.admit_new(admit);
        if let Some(entities) = self.entities.get() {
            entities.admit_new(admit);
        }
    }

    /// Evicts warm state to free `bytes` of footprint, orchestrations' runs first, then live
    /// entities: the most bytes freed per unit of locality lost first (a large run seldom used
    /// before a small hot one), the least recently used among ties. A run with a commit in
    /// flight and an entity a command holds are pinned. Their next turns and commands replay
    /// and load again; nothing is lost. Returns what was freed of each.
    pub async fn shed(&self, bytes: usize) -> (Evicted, Evicted) {
        let runs = self.live.evict(self.live.victims(bytes)).await;
        let left = bytes.saturating_sub(runs.bytes);
        let entities = match self.entities.get() {
            Some(e) if left > 0 => e.shed(left),
            _ => Evicted::default(),
        };
        (runs, entities)
    }

    /// Drops the live entities of `streams` that no command holds (another worker is their home
    /// now). Their next commands here, if any, load them again.
    pub fn drop_entities(&self, streams: &[String]) -> Evicted {
        self.entities
            .get()
            .map(|e| e.drop_live(streams))
            .unwrap_or_default()
    }

    /// Whether the entity of `stream` is live here.
    pub(crate) fn entity_is_live(&self, stream: &str) -> bool {
        self.entities.get().is_some_and(|e| e.is_live(stream))
    }

    /// Evicts the runs of `instances` (unless a commit of theirs is in flight): their next turns
    /// replay their histories into new runs.
    pub async fn evict(&self, instances: Vec<String>) -> Evicted {
        self.live.evict(instances).await
    }

    /// Drives `task` to its settle: handles it, commits its outcome and deals with a refused
    /// commit (see [`settle`]).
    pub async fn run(&self, task: ClaimedTask, host: HostRef) -> Settled {
        settle(&task, &host, || {
            self.handle(task.clone(), Arc::clone(&host))
        })
        .await
    }

    /// Handles one task: the commit that records its outcome, or [`Handled::Settled`].
    pub fn handle(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> BoxFuture<'static, Result<Handled, HandlerError>> {
        let runner = self.clone();
        Box::pin(async move {
            match task.kind {
                TaskKind::Orchestration => runner.turn(task, host).await,
                TaskKind::Activity => runner.activity(task, host).await,
                TaskKind::Job => runner.job(task, host).await,
                TaskKind::Request => runner.request(task, host).await,
                TaskKind::Timer => match TaskPayload::from_bytes(&task.payload) {
                    Ok(TaskPayload::Timer(timer)) => {
                        Ok(Handled::Commit(timer_commit(&task, &timer)))
                    }
                    _ => Err(HandlerError::Rejected(
                        "the timer task's payload cannot be decoded".into(),
                    )),
                },
                other => Err(HandlerError::Rejected(format!(
                    "{other} tasks are not workflow tasks"
                ))),
            }
        })
    }

    /// Reads the histories of a batch of claimed turns in one round trip, before they run (each
    /// turn uses what was read for it, or reads its own). Never fails.
    pub fn prefetch(&self, tasks: &[ClaimedTask], store: Arc<dyn Store>) -> BoxFuture<'static, ()> {
        self.prefetch.prefetch(tasks, store)
    }
}

fn now(host: &HostRef) -> Timestamp {
    host.store().config().clock.now()
}
