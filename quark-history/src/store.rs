//! The `Store` trait: the journal and the queue behind one interface, on SQLite or PostgreSQL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::codec::CodecTag;
use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::instance::{
    Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus, NewInstance,
};
use crate::jobs::{JobFilter, JobInfo, JobState, Progress, Purged, QueueSettings, RateLimit};
use crate::journal::{ChainReport, GlobalEvent, GlobalPosition, HistoryRange};
use crate::outbox::{
    ClaimedMessage, Delivery, OutboxClaim, OutboxFilter, OutboxLease, OutboxMessage, OutboxRecord,
    WindowOutcome,
};
use crate::queue::{
    AffinityMove, ClaimRequest, ClaimedTask, DeadTask, Incarnation, Lead, Lease, NewTask, Placed,
    QueueStats, Reaped, Registered, WorkerInfo,
};
use crate::schedule::{Fire, ScheduleRecord, ScheduleSpec, Upserted};
use crate::wakeup::Wakeups;

/// The default limit on one payload or encoded event: 2 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// Settings shared by both backends.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The codec new events are written with (every row records its own).
    pub codec: CodecTag,
    /// The largest payload or encoded event accepted.
    pub max_payload_bytes: usize,
    /// The source of "now" for leases, visibility and timestamps.
    pub clock: Arc<dyn Clock>,
    /// How long completed and cancelled jobs are kept (readable with [`JobStore::job`]) before
    /// [`JobStore::purge_finished`] removes them. Zero: a completed job is deleted at once and leaves
    /// no record, the fastest setting.
    pub finished_job_retention: Duration,
    /// The key that wraps subjects' data keys, for personal data sealed in entity events
    /// ([`SubjectStore`](crate::SubjectStore)). `None`: sealing and opening personal data fail.
    pub master_key: Option<crate::MasterKey>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            codec: CodecTag::Json,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            clock: Arc::new(SystemClock),
            finished_job_retention: Duration::from_secs(24 * 3600),
            master_key: None,
        }
    }
}

impl StoreConfig {
    /// Sets the codec.
    pub fn codec(mut self, codec: CodecTag) -> Self {
        self.codec = codec;
        self
    }

    /// Sets the payload limit.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets the clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the master key that wraps subjects' data keys.
    pub fn master_key(mut self, key: crate::MasterKey) -> Self {
        self.master_key = Some(key);
        self
    }

    /// Sets how long finished jobs are kept.
    pub fn finished_job_retention(mut self, retention: Duration) -> Self {
        self.finished_job_retention = retention;
        self
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// The journal and the queue, and through its supertraits every other capability of a store:
/// [`JobStore`], [`CatalogStore`](crate::CatalogStore), [`TokenStore`](crate::TokenStore), [`RequestStore`](crate::RequestStore), [`DecisionStore`](crate::two_phase::DecisionStore), [`OutboxStore`], [`ScheduleStore`], [`StreamStore`](crate::StreamStore), [`ProjectionStore`](crate::ProjectionStore), [`SubjectStore`](crate::SubjectStore), and the [`EventLog`](crate::EventLog) entities run on. Their methods can be called on a `dyn Store` as its own.
///
/// Every method that writes is one database transaction. Methods return boxed futures so that a
/// `dyn Store` can be chosen at run time from a URL (see [`open`](crate::open)).
pub trait Store:
    JobStore
    + crate::CatalogStore
    + crate::TokenStore
    + crate::RequestStore
    + crate::two_phase::DecisionStore
    + crate::shards::ShardMapStore
    + OutboxStore
    + ScheduleStore
    + crate::StreamStore
    + crate::ProjectionStore
    + crate::SubjectStore
    + crate::EventLog
    + Send
    + Sync
    + fmt::Debug
    + 'static
{
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// The settings.
    fn config(&self) -> &StoreConfig;

    /// Applies the embedded schema migrations (idempotent).
    fn migrate(&self) -> BoxFuture<'_, Result<()>>;

    /// The versions of the embedded migrations the database has not applied (empty: the schema
    /// is current). A worker's readiness check; it fails when the database cannot be reached.
    fn pending_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>>>;

    // -- instances ------------------------------------------------------------------------------

    /// Creates an instance: inserts its row, appends `WorkflowStarted` and enqueues its first
    /// orchestration task, in one transaction.
    fn create_instance(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Created>>;

    /// Creates many instances in one transaction, as [`create_instance`](Self::create_instance)
    /// does one; returns what happened to each, in order. With
    /// [`IdReusePolicy::RejectDuplicate`] a taken id fails the whole batch and creates none; an id
    /// named twice in the batch is refused with [`Error::Invalid`](crate::Error::Invalid).
    fn create_instances(
        &self,
        new: Vec<NewInstance>,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Vec<Created>>>;

    /// One instance, or `None`.
    fn get_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>>;

    /// Instances matching `filter`, newest first.
    fn list_instances(&self, filter: InstanceFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>>>;

    /// How many instances have `status`, per queue of their orchestration tasks (queues with none
    /// are left out): a worker's gauge of blocked instances.
    fn count_instances(
        &self,
        status: InstanceStatus,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, u64>>>;

    // -- the journal ----------------------------------------------------------------------------

    /// Reads part of a history, in sequence order.
    fn read_history<'a>(
        &'a self,
        instance_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>>;

    /// Reads many histories at once: for each `(instance id, sequence number)`, that instance's
    /// events from the sequence number on, in sequence order, in the order asked. A worker reads
    /// the histories of a batch of claimed turns this way, in one round trip where the backend
    /// allows it (PostgreSQL); the default reads them one by one.
    fn read_histories<'a>(
        &'a self,
        from: &'a [(String, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<RecordedEvent>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(from.len());
            for (instance_id, seq) in from {
                out.push(
                    self.read_history(instance_id, HistoryRange::From(*seq))
                        .await?,
                );
            }
            Ok(out)
        })
    }

    /// Reads up to `limit` events after `after` in the global commit order. Never skips an event
    /// that commits later with a smaller position.
    fn read_all(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>>;

    /// Recomputes an instance's hash chain and names the first event that does not match.
    fn verify<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<ChainReport>>;

    // -- the queue and the atomic commit ----------------------------------------------------------

    /// Appends, enqueues and settles in one transaction. See [`Commit`].
    ///
    /// A commit that ends an instance (completes, fails, cancels, terminates or continues it as
    /// new) also drops what the instance still had outstanding, since nobody is left to report to:
    /// its activity and timer tasks that are not running are deleted (pending ones, ones waiting
    /// for a retry, ones enqueued by this very commit), and its running activities are asked to
    /// cancel as a cancelled job is (their next lease extension fails with
    /// [`Error::CancelRequested`](crate::Error::CancelRequested), and their attempt, however it
    /// ends, is not retried). On PostgreSQL, an activity or timer that another transaction adds
    /// while the ending commit runs (a turn that commits just before a terminate) is left alone: it
    /// runs once, and its result is refused like any result for an ended instance.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Committed>>;

    /// Commits many commits, each all or nothing, and returns each one's result in order. The
    /// outcome is as if they were committed one after another in this order; a backend may write
    /// them in one transaction (PostgreSQL does, with set-based statements), which is what makes a
    /// busy worker fast.
    fn commit_many(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(commits.len());
            for commit in commits {
                out.push(self.commit(commit).await);
            }
            out
        })
    }

    /// Begins a transaction on the engine's database, for code that writes its own rows and then
    /// records its outcome with [`commit_tx`](Self::commit_tx): all or nothing. See
    /// [`StoreTx`](crate::StoreTx). On SQLite it holds the single writer until it ends.
    fn begin_tx(&self) -> BoxFuture<'_, Result<crate::StoreTx>>;

    /// Writes `commit` inside `tx` and commits the transaction: the caller's writes in `tx` and
    /// the commit land together or not at all. On any error `tx` is rolled back, so a commit whose
    /// lease was lost takes the caller's writes with it.
    fn commit_tx(&self, tx: crate::StoreTx, commit: Commit) -> BoxFuture<'_, Result<Committed>>;

    /// Enqueues `tasks` inside `tx`, the caller's own transaction ([`begin_tx`](Self::begin_tx)),
    /// without ending it: they exist if and only if it commits (the outbox pattern for jobs).
    /// Returns their ids. Workers hear of them at the commit (see [`send_tx`](Self::send_tx)).
    fn enqueue_tx<'a>(
        &'a self,
        tx: &'a mut crate::StoreTx,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Writes outbox `messages` inside `tx`, the caller's own transaction
    /// ([`begin_tx`](Self::begin_tx)), without ending it: they exist if and only if it commits.
    /// Returns their ids. Relays hear of them at the commit on PostgreSQL (a `NOTIFY` sent in the
    /// transaction); on SQLite, relays in this process are told at once, and one that looks
    /// before the commit finds nothing yet and polls again. End `tx` with
    /// [`StoreTx::commit`](crate::StoreTx::commit), or with [`commit_tx`](Self::commit_tx) and a
    /// commit of its own.
    fn send_tx<'a>(
        &'a self,
        tx: &'a mut crate::StoreTx,
        messages: Vec<crate::OutboxMessage>,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Enqueues tasks in one transaction (a commit with tasks only).
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            let committed = self
                .commit(Commit {
                    tasks,
                    ..Commit::default()
                })
                .await?;
            Ok(committed.task_ids)
        })
    }

    /// Claims up to `request.limit` visible tasks under a lease. Prefers none over another worker's
    /// affinity until `affinity_delay` has passed, that worker is gone or under memory pressure,
    /// or it does not serve the task's queue; never leases a second orchestration task of one
    /// instance.
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Vec<ClaimedTask>>>;

    /// Extends a lease to `now + lease`; fails with `LeaseLost` if it is no longer held. Returns the
    /// new expiry. A job that was cancelled while running gets its lease extended and then
    /// `CancelRequested`: the attempt should stop and settle.
    fn extend_lease<'a>(
        &'a self,
        lease: &'a Lease,
        lease_for: std::time::Duration,
    ) -> BoxFuture<'a, Result<crate::Timestamp>>;

    /// Counts of tasks on a queue.
    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>>;

    /// Tasks in the dead-letter list, oldest first.
    fn list_dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadTask>>>;

    /// Puts a dead task back on its queue, visible now, with its attempts reset. Re-driving a
    /// dead orchestration turn unblocks its instance ([`InstanceStatus::Blocked`]) in the same
    /// transaction; its next turn runs whatever code the workers run now.
    fn redrive(&self, task_id: i64) -> BoxFuture<'_, Result<()>>;

    /// Subscribes to wake-ups: a notice whenever tasks become visible on some queue.
    fn subscribe(&self) -> BoxFuture<'_, Result<Wakeups>>;

    /// Subscribes to the ends of instances: a [`Wake::Ended`](crate::Wake::Ended) whenever a
    /// commit ends one (in this process, and on PostgreSQL in any process), and
    /// [`Wake::MayHaveMissed`](crate::Wake::MayHaveMissed) when some may have been lost. Notices
    /// are hints: whoever waits still looks now and then (on SQLite, another process's ends are
    /// not heard at all).
    fn watch_ends(&self) -> BoxFuture<'_, Result<Wakeups>>;

    // -- workers -----------------------------------------------------------------------------------

    /// Registers or refreshes a worker (the heartbeat).
    fn heartbeat_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>>;

    /// Removes a worker's registration (graceful shutdown); its affinities become free at once.
    fn deregister_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// The registered workers.
    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>>>;

    /// Of `instances` (which `worker` keeps warm), those whose affinity is no longer `worker`:
    /// another worker ran a later turn, or the affinity was moved or cleared. A worker drops its
    /// warm runs of them: their state is elsewhere now, and its own copy is stale. Instances
    /// that no longer exist are not listed (their runs end with them).
    fn moved_away<'a>(
        &'a self,
        worker: &'a str,
        instances: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Publishes `worker`'s communication sketch (opaque bytes, replacing its last).
    fn publish_sketch<'a>(&'a self, worker: &'a str, sketch: Vec<u8>) -> BoxFuture<'a, Result<()>>;

    /// Every worker's last published sketch: worker id, bytes, when.
    fn sketches(&self) -> BoxFuture<'_, Result<Vec<crate::queue::PublishedSketch>>>;

    /// Of `instances`, the running ones that have an affinity (a worker that ran their last turn
    /// or was given them by a move), with that worker's id and their queue, ordered by instance
    /// id. Entity streams are listed too: a stream's affinity is its home, the worker whose
    /// activity last appended to it (or a move's target); its queue is empty (an entity's
    /// commands run on the queues of the activities that carry them).
    fn affinities<'a>(&'a self, instances: &'a [String]) -> BoxFuture<'a, Result<Vec<Placed>>>;

    /// Moves instances between workers: each instance's affinity, and its pending tasks', from
    /// its move's `from` to its `to`, so that `to` claims its next turn first and `from` drops its
    /// warm run (see [`moved_away`](Store::moved_away)). One transaction; for each move, whether
    /// it happened: compare-and-set, so a move whose instance's affinity is no longer `from` (a
    /// later turn ran elsewhere, or another move won) changes nothing. Running turns are not
    /// disturbed: a turn's lease fences it, whichever worker holds it. The moves never wait for
    /// the instances' own traffic: an instance whose row or pending task a commit holds right
    /// now is not moved (reported `false`, like a lost compare-and-set).
    ///
    /// With a `lead` (the placement coordinator's), the moves happen only while that lead is
    /// current; otherwise [`Error::NotLeader`](crate::Error::NotLeader) and nothing moves.
    fn move_affinities<'a>(
        &'a self,
        moves: &'a [AffinityMove],
        lead: Option<&'a Lead>,
    ) -> BoxFuture<'a, Result<Vec<bool>>>;

    /// Takes or renews the lease on `role` (for example `"placement"`) for `holder`, until `ttl`
    /// from now by the store's clock. Renewed with the same epoch if `holder` holds it; taken
    /// with the next epoch if nobody holds it or the lease expired; `None` if another holder's
    /// lease is current. At most one holder per role at a time, by the store's clock.
    fn lead<'a>(
        &'a self,
        role: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<Lead>>>;

    /// Gives up `lead` at once, so that another holder can take the role without waiting for it
    /// to expire. A lead that passed on already is left alone.
    fn resign<'a>(&'a self, lead: &'a Lead) -> BoxFuture<'a, Result<()>>;

    /// Where the data lives, as text that is the same for every process on this host that opens
    /// the same database: the SQLite file's canonical path, or the PostgreSQL server and
    /// database. Workers scope their id lock files by it.
    fn location(&self) -> String;

    /// Registers a run of a worker ([`Incarnation`]) under `info.id`, at its start. If an earlier
    /// run of the id is registered and dead (its heartbeat older than twice its interval, or from
    /// the same [`scope`](Incarnation::scope), whose lock the caller holds), this run replaces it
    /// and the leases the id holds are expired at once, so that it (or any worker) claims them
    /// again as new attempts, fencing the old ones. If that run still heartbeats from another
    /// scope, [`Error::WorkerIdInUse`](crate::Error::WorkerIdInUse): nothing changes.
    fn register_worker<'a>(
        &'a self,
        info: WorkerInfo,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<Registered>>;

    /// The heartbeat of a run registered by [`register_worker`](Self::register_worker).
    /// [`Error::Superseded`](crate::Error::Superseded) if another run of the id took it over: this
    /// one must stop.
    fn heartbeat_run<'a>(
        &'a self,
        info: WorkerInfo,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<()>>;

    /// Removes a run's registration at a graceful stop; a successor's registration is left alone.
    fn retire_run<'a>(
        &'a self,
        worker_id: &'a str,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<()>>;

    /// Removes the registrations of runs whose heartbeats stopped more than two of their
    /// intervals ago, and expires their leases so that other workers take the tasks at once.
    /// Any number of workers may call it at once; each dead run is reaped once. `caller` is the
    /// calling worker's id, never reaped: it knows it is alive, even when its clock jumped ahead
    /// of its heartbeats (a test's manual clock).
    fn reap_workers<'a>(&'a self, caller: &'a str) -> BoxFuture<'a, Result<Vec<Reaped>>>;
}

/// The transactional outbox: messages written with a change, relayed in order per key under
/// leases (and the purge of the inbox's ids). A capability of every [`Store`]; sealed.
pub trait OutboxStore: Send + Sync {
    /// Writes outbox messages in one transaction (a commit with messages only). Returns their ids.
    fn send(&self, messages: Vec<OutboxMessage>) -> BoxFuture<'_, Result<Vec<i64>>>;

    /// Claims up to `claim.limit` due messages under a lease, each the head of its ordering key
    /// (its pending message with the smallest id), so no two relays hold one key at a time and a
    /// key's next message is not handed out before the previous one is settled.
    fn claim_outbox(&self, claim: OutboxClaim) -> BoxFuture<'_, Result<Vec<ClaimedMessage>>>;

    /// Settles a claimed message that holds its own lease: one claimed alone, or the first of a
    /// window (fenced by its lease: `LeaseLost` if it was claimed again). The others of a window
    /// are settled with [`OutboxStore::settle_outbox_window`].
    /// After `Delivery::Sent { next_lease: Some(..) }`, returns the key's next message if it is
    /// due, already leased to the same worker.
    fn settle_outbox<'a>(
        &'a self,
        lease: &'a OutboxLease,
        delivery: Delivery,
    ) -> BoxFuture<'a, Result<Option<ClaimedMessage>>>;

    /// Settles a window: messages of one ordering key leased together by one claim or hand-over,
    /// in id order, delivered in that order. One transaction marks the delivered ones sent,
    /// settles the failed one, hands the untried rest back (due now, the claim not counted as an
    /// attempt), and, with [`WindowOutcome::next`], leases the key's next window and returns it.
    /// Fenced by the window's lease, which its first message carries for all of them: `LeaseLost`
    /// (and nothing written) if the key was claimed again after the lease expired.
    fn settle_outbox_window<'a>(
        &'a self,
        window: &'a [ClaimedMessage],
        outcome: WindowOutcome,
    ) -> BoxFuture<'a, Result<Vec<ClaimedMessage>>>;

    /// Outbox messages matching `filter`, newest first.
    fn list_outbox(&self, filter: OutboxFilter) -> BoxFuture<'_, Result<Vec<OutboxRecord>>>;

    /// Puts a dead message back in line, due now, with its attempts reset. It keeps its id, so it
    /// goes before later messages of its key that are still pending.
    fn redrive_message(&self, id: i64) -> BoxFuture<'_, Result<()>>;

    /// Deletes up to `limit` sent messages older than `retention`. Call it until it returns less
    /// than `limit`.
    fn purge_outbox(&self, retention: Duration, limit: u32) -> BoxFuture<'_, Result<u64>>;

    /// Deletes up to `limit` inbox ids older than `window`, in one short transaction.
    fn purge_inbox(&self, window: Duration, limit: u32) -> BoxFuture<'_, Result<u64>>;
}

/// Cron schedules: stored with their next tick, fired by a compare-and-set that enqueues each
/// tick's job exactly once among racing workers. A capability of every [`Store`]; sealed.
pub trait ScheduleStore: Send + Sync {
    /// Registers schedule `spec.name`, or changes it. Idempotent: registering the same spec again
    /// writes nothing. A new schedule starts at `next_at`; a changed one keeps its `next_at` unless
    /// its expression or time zone changed, in which case it moves to `next_at` (so redeploying
    /// with a new job input neither skips nor repeats a tick).
    fn upsert_schedule(
        &self,
        spec: ScheduleSpec,
        next_at: Timestamp,
    ) -> BoxFuture<'_, Result<Upserted>>;

    /// Removes a schedule; `false` if there was none of that name. Jobs it already enqueued stay.
    fn remove_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// One schedule, or `None`.
    fn get_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ScheduleRecord>>>;

    /// Every schedule, by name.
    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<ScheduleRecord>>>;

    /// Up to `limit` schedules whose `next_at` is at or before `now`, earliest first.
    fn due_schedules(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ScheduleRecord>>>;

    /// The earliest `next_at` of all schedules, or `None` when there are none.
    fn next_schedule_at(&self) -> BoxFuture<'_, Result<Option<Timestamp>>>;

    /// Fires a schedule, compare-and-set: in one transaction, moves its `next_at` from
    /// `fire.expected_next_at` to `fire.next_at` and enqueues one job per tick (its template,
    /// visible at the tick), and records the last tick as `last_fired_at`; all only if `next_at`
    /// still held the expected value. Returns the jobs' task ids, or `None` when it did not (another
    /// worker fired first, or the schedule was changed or removed). This is what makes a tick
    /// enqueue exactly one job however many workers race for it.
    fn fire_schedule(&self, fire: Fire) -> BoxFuture<'_, Result<Option<Vec<i64>>>>;
}

/// Durable jobs: reading, cancelling, pausing and resuming them, their progress, the queues'
/// controls (pause, rate limit) and the retention of finished jobs. A capability of every
/// [`Store`]; sealed.
pub trait JobStore: Send + Sync {
    /// A job (a task of kind `Job`, live, finished or dead), with its last progress report.
    fn job(&self, id: i64) -> BoxFuture<'_, Result<Option<JobInfo>>>;

    /// Jobs matching `filter`, newest first.
    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, Result<Vec<JobInfo>>>;

    /// Cancels a job. One that has not started is removed at once (`Cancelled`); a running one is
    /// asked to stop (`Cancelling`): its worker sees it at its next lease extension, and however
    /// the attempt ends, the job is recorded as cancelled unless it completed. Cancelling a
    /// finished job is an error.
    fn cancel_job(&self, id: i64) -> BoxFuture<'_, Result<JobState>>;

    /// Holds a job that has not started until [`resume_job`](Self::resume_job).
    fn pause_job(&self, id: i64) -> BoxFuture<'_, Result<()>>;

    /// Releases a paused job (into its concurrency key's line, if it has one).
    fn resume_job(&self, id: i64) -> BoxFuture<'_, Result<()>>;

    /// Records progress for the job held under `lease` (fenced like a commit). A checkpoint of
    /// `None` keeps the previous one.
    fn report_progress<'a>(
        &'a self,
        lease: &'a Lease,
        progress: Progress,
    ) -> BoxFuture<'a, Result<()>>;

    /// The last progress report of a job, if any.
    fn job_progress(&self, id: i64) -> BoxFuture<'_, Result<Option<Progress>>>;

    /// Pauses or resumes claims from a queue, across every worker.
    fn set_queue_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<()>>;

    /// Sets or clears a queue's rate limit, across every worker.
    fn set_rate_limit<'a>(
        &'a self,
        queue: &'a str,
        limit: Option<RateLimit>,
    ) -> BoxFuture<'a, Result<()>>;

    /// A queue's controls.
    fn queue_settings<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueSettings>>;

    /// Removes up to `limit` finished jobs older than the retention, expired unique keys and
    /// orphaned progress rows, in short transactions. Call it until it returns less than `limit`.
    fn purge_finished(&self, limit: u32) -> BoxFuture<'_, Result<Purged>>;
}
