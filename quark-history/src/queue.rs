//! The shared queue: orchestration turns, activities, timers, jobs and outbox work, one table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::jobs::UniqueKey;

/// What a task asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskKind {
    /// Run a turn of an orchestration. At most one per instance exists at a time; enqueuing another
    /// while one is pending merges them, and while one is leased marks it to run again.
    Orchestration,
    /// Run an activity.
    Activity,
    /// Fire a durable timer.
    Timer,
    /// Run a durable job.
    Job,
    /// Relay outbox messages.
    Outbox,
    /// Answer a query to an orchestration instance, or validate and start an update of it.
    Request,
}

impl TaskKind {
    /// Every kind.
    pub const ALL: [TaskKind; 6] = [
        TaskKind::Orchestration,
        TaskKind::Activity,
        TaskKind::Timer,
        TaskKind::Job,
        TaskKind::Outbox,
        TaskKind::Request,
    ];

    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Orchestration => "orchestration",
            TaskKind::Activity => "activity",
            TaskKind::Timer => "timer",
            TaskKind::Job => "job",
            TaskKind::Outbox => "outbox",
            TaskKind::Request => "request",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown task kind `{s}`"))
    }
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// What to do.
    pub kind: TaskKind,
    /// The queue; workers serve named queues.
    pub queue: String,
    /// The instance it belongs to (required for orchestration tasks).
    pub instance_id: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// Not claimable before this time (`None`: now).
    pub visible_at: Option<Timestamp>,
    /// The worker that should run it, if it is alive and claims in time.
    pub affinity: Option<String>,
    /// Opaque bytes for the worker.
    pub payload: Vec<u8>,
    /// Enqueue it already claimed by this worker, for this long: the worker that creates a task it
    /// can run at once skips the round trip through the queue. The lease is attempt 1, and expires
    /// like any other if the worker dies. Ignored for orchestration tasks.
    pub lease_to: Option<(String, Duration)>,
    /// A unique key (jobs): see [`UniqueKey`].
    pub unique: Option<UniqueKey>,
    /// A concurrency key and its limit (jobs): at most that many tasks of the key are ready,
    /// scheduled, running or waiting for a retry at a time; the others wait for a slot, highest
    /// priority and oldest first.
    pub concurrency: Option<(String, u32)>,
    /// The W3C trace context (`traceparent`) of the span that created it: the span that runs it
    /// continues that trace. At most [`MAX_TRACEPARENT`] bytes.
    pub traceparent: Option<String>,
}

/// The longest `traceparent` a task or message may carry, in bytes (the W3C header of today's
/// version is 55).
pub const MAX_TRACEPARENT: usize = 256;

/// Whether a store takes `traceparent` as a task's trace context: at most [`MAX_TRACEPARENT`]
/// printable ASCII characters, no spaces.
pub fn is_storable_traceparent(traceparent: &str) -> bool {
    traceparent.len() <= MAX_TRACEPARENT && traceparent.bytes().all(|b| b.is_ascii_graphic())
}

impl NewTask {
    /// A task of `kind` on `queue`, visible now, priority 0.
    pub fn new(kind: TaskKind, queue: impl Into<String>) -> Self {
        NewTask {
            kind,
            queue: queue.into(),
            instance_id: None,
            priority: 0,
            visible_at: None,
            affinity: None,
            payload: Vec::new(),
            lease_to: None,
            unique: None,
            concurrency: None,
            traceparent: None,
        }
    }

    /// An orchestration task for `instance_id`.
    pub fn orchestration(queue: impl Into<String>, instance_id: impl Into<String>) -> Self {
        NewTask {
            instance_id: Some(instance_id.into()),
            ..NewTask::new(TaskKind::Orchestration, queue)
        }
    }

    /// Sets the instance.
    pub fn instance(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Makes it visible only at `at`.
    pub fn visible_at(mut self, at: Timestamp) -> Self {
        self.visible_at = Some(at);
        self
    }

    /// Prefers `worker`.
    pub fn affinity(mut self, worker: impl Into<String>) -> Self {
        self.affinity = Some(worker.into());
        self
    }

    /// Sets a unique key.
    pub fn unique(mut self, key: UniqueKey) -> Self {
        self.unique = Some(key);
        self
    }

    /// Sets a concurrency key: at most `limit` tasks of `key` run at a time.
    pub fn concurrency(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.concurrency = Some((key.into(), limit));
        self
    }

    /// Sets the trace context it continues (a W3C `traceparent`).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Whether enqueuing it needs more than a plain insert.
    #[cfg(feature = "postgres")]
    pub(crate) fn is_plain(&self) -> bool {
        self.unique.is_none()
    }
}

/// Proof of holding a task: the fencing token that completion, failure and lease extension check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The task.
    pub task_id: i64,
    /// How many times the task has been claimed, this claim included. A later claim has a larger
    /// attempt, so a zombie holding an older one cannot commit.
    pub attempt: u32,
    /// The worker holding it.
    pub worker: String,
}

/// A claimed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    /// The lease to complete it with.
    pub lease: Lease,
    /// What to do.
    pub kind: TaskKind,
    /// Its queue.
    pub queue: String,
    /// Its instance, if any.
    pub instance_id: Option<String>,
    /// Its priority.
    pub priority: i32,
    /// When it was first enqueued.
    pub created_at: Timestamp,
    /// When it became claimable: its `visible_at` just before this claim (its enqueue or delay,
    /// a retry's backoff, a lost lease's expiry). The claim time minus this is its queue wait.
    pub visible_at: Timestamp,
    /// Until when the lease holds unless extended.
    pub lease_expires_at: Timestamp,
    /// Opaque bytes for the worker.
    pub payload: Vec<u8>,
    /// The trace context it was created in (see [`NewTask::traceparent`]).
    pub traceparent: Option<String>,
}

/// A request for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming worker's id.
    pub worker: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<TaskKind>,
    /// At most this many tasks.
    pub limit: u32,
    /// How long the lease holds before it must be extended.
    pub lease: Duration,
    /// How long a task with another worker's affinity waits before this worker may take it. A task
    /// whose affinity worker has no live registration, is under memory pressure, or does not
    /// serve the task's queue (an entity command routed to an entity's home that serves other
    /// queues) is free at once.
    pub affinity_delay: Duration,
    /// How old a worker's last heartbeat may be before it counts as gone.
    pub worker_ttl: Duration,
}

impl ClaimRequest {
    /// A claim by `worker` on `queues` with defaults: 64 tasks, 30 s lease, 1 s affinity delay,
    /// 30 s worker liveness.
    pub fn new(
        worker: impl Into<String>,
        queues: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ClaimRequest {
            worker: worker.into(),
            queues: queues.into_iter().map(Into::into).collect(),
            kinds: Vec::new(),
            limit: 64,
            lease: Duration::from_secs(30),
            affinity_delay: Duration::from_secs(1),
            worker_ttl: Duration::from_secs(30),
        }
    }

    /// Sets the batch size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Sets the lease length.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Only these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = TaskKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Sets the affinity delay.
    pub fn affinity_delay(mut self, delay: Duration) -> Self {
        self.affinity_delay = delay;
        self
    }
}

/// What to do with a task whose attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailAction {
    /// Release it to run again at `at` (a retry with backoff, or a plain reschedule).
    Retry {
        /// When it becomes claimable again.
        at: Timestamp,
        /// The error of this attempt, kept on the task for operators.
        error: Option<String>,
    },
    /// Move it to the dead-letter list, where it can be listed and re-driven.
    Dead {
        /// Why it died.
        error: String,
    },
}

/// A task in the dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadTask {
    /// The task id (kept when re-driven).
    pub task_id: i64,
    /// What it was.
    pub kind: TaskKind,
    /// Its queue.
    pub queue: String,
    /// Its instance, if any.
    pub instance_id: Option<String>,
    /// How many times it was claimed.
    pub attempts: u32,
    /// Why it died.
    pub error: String,
    /// When it died.
    pub died_at: Timestamp,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A live worker's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its id.
    pub id: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Labels (region, zone, rack, ...), as JSON text.
    pub labels: String,
    /// When it last heartbeated.
    pub heartbeat_at: Timestamp,
    /// What it reported of its memory and warm state with that heartbeat.
    pub load: WorkerLoad,
}

/// A worker's communication sketch as it last published it (see `quark_worker::placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSketch {
    /// The worker.
    pub worker_id: String,
    /// The sketch, encoded by the worker.
    pub sketch: Vec<u8>,
    /// When it was published.
    pub published_at: Timestamp,
}

/// A move of an instance from one worker to another ([`Store::move_affinities`]).
///
/// [`Store::move_affinities`]: crate::Store::move_affinities
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AffinityMove {
    /// The instance.
    pub instance: String,
    /// The worker it should have now; the move happens only if it does.
    pub from: String,
    /// The worker it moves to.
    pub to: String,
}

impl AffinityMove {
    /// A move of `instance` from worker `from` to worker `to`.
    pub fn new(
        instance: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> AffinityMove {
        AffinityMove {
            instance: instance.into(),
            from: from.into(),
            to: to.into(),
        }
    }
}

/// Where a running instance (or an entity's stream) is: the worker of its affinity, and its queue
/// ([`Store::affinities`]).
///
/// [`Store::affinities`]: crate::Store::affinities
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placed {
    /// The instance.
    pub instance: String,
    /// The worker that ran its last turn, or that a move gave it to.
    pub worker: String,
    /// The queue its turns go to (empty for an entity's stream).
    pub queue: String,
}

/// A lease on a role that one holder at a time plays ([`Store::lead`]). Whatever the holder does
/// under the role is fenced on the epoch, which grows each time the role changes hands.
///
/// [`Store::lead`]: crate::Store::lead
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    /// The role.
    pub role: String,
    /// Who holds it.
    pub holder: String,
    /// Which tenure: 1 for the first holder, one more at each change of hands.
    pub epoch: u64,
    /// When the lease expires unless renewed, by the store's clock.
    pub expires_at: Timestamp,
}

/// How close a worker is to its memory limit, as it reports it. Each level includes what the ones
/// below it do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Pressure {
    /// Below the warning threshold.
    #[default]
    Normal,
    /// Past the warning threshold: the worker keeps no new warm state, and other workers may
    /// take the tasks of instances it keeps warm at once (its affinity is handed away).
    Warning,
    /// Past the critical threshold: the worker evicts warm state.
    Critical,
    /// Past the reject threshold: the worker claims nothing until it recovers, and sheds its
    /// warm state.
    Reject,
}

impl Pressure {
    /// Every level, lowest first.
    pub const ALL: [Pressure; 4] = [
        Pressure::Normal,
        Pressure::Warning,
        Pressure::Critical,
        Pressure::Reject,
    ];

    /// The level as stored: 0 for normal up to 3 for reject.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The level stored as `n`; an unknown (newer) level reads as the highest.
    pub fn from_i16(n: i16) -> Pressure {
        match n {
            i16::MIN..=0 => Pressure::Normal,
            1 => Pressure::Warning,
            2 => Pressure::Critical,
            _ => Pressure::Reject,
        }
    }

    /// Its name: `normal`, `warning`, `critical`, `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Warning => "warning",
            Pressure::Critical => "critical",
            Pressure::Reject => "reject",
        }
    }
}

impl fmt::Display for Pressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker's memory and warm state, as published with its heartbeats. Zero where it does not
/// measure (a registration made without a worker, or before these figures existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Its pressure level.
    pub pressure: Pressure,
    /// Its resident memory, smoothed, in bytes.
    pub rss_bytes: u64,
    /// The memory limit its thresholds are fractions of, in bytes.
    pub memory_limit: u64,
    /// Orchestration instances it keeps warm.
    pub cached_instances: u64,
    /// Their estimated footprint, in bytes.
    pub cached_bytes: u64,
    /// Entities it keeps live.
    pub live_entities: u64,
    /// Their footprint, in bytes.
    pub entity_bytes: u64,
}

/// Counts of tasks on a queue, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Claimable now or later, not leased, not held.
    pub pending: u64,
    /// Held under a live lease.
    pub leased: u64,
    /// In the dead-letter list.
    pub dead: u64,
    /// Held back: paused jobs and jobs waiting for a concurrency slot.
    pub held: u64,
    /// Whether the queue is paused.
    pub paused: bool,
}

/// One run of a worker process under its worker id: what [`Store::register_worker`] records so
/// that a restart with the same id takes back the leases of the run before it at once, and so that
/// two live processes with one id never share its leases unnoticed.
///
/// [`Store::register_worker`]: crate::Store::register_worker
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Incarnation {
    /// Unique to this run (a fresh UUID).
    pub token: String,
    /// Where the id is held exclusively: a registration of the same id from the same scope
    /// belongs to a process that has died, because the caller holds a lock that only one live
    /// process in the scope can hold (the worker's lock file: its host, container and lock
    /// directory).
    pub scope: String,
    /// How often this run heartbeats. A registration whose last heartbeat is older than twice
    /// its interval is dead: its leases are released to other workers.
    pub heartbeat: Duration,
}

impl Incarnation {
    /// A run with a fresh token.
    pub fn new(scope: impl Into<String>, heartbeat: Duration) -> Self {
        Incarnation {
            token: uuid::Uuid::now_v7().to_string(),
            scope: scope.into(),
            heartbeat,
        }
    }
}

/// What [`Store::register_worker`](crate::Store::register_worker) found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Registered {
    /// Whether it replaced the registration of an earlier run of the same id.
    pub replaced: bool,
    /// Leases held under the id by earlier runs, expired so that they are claimable at once.
    /// Their attempts stay fenced: the next claim is a new attempt, and the old one can no longer
    /// commit, extend or fail.
    pub reclaimed: u64,
}

/// A worker whose heartbeats stopped, as [`Store::reap_workers`](crate::Store::reap_workers)
/// removed it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reaped {
    /// Its id.
    pub worker_id: String,
    /// How many of its leases were expired.
    pub released: u64,
}
