//! What a worker counts and measures, for operators, tests and benchmarks.
//!
//! Every figure goes two ways: into the worker's own atomic counters, which
//! [`Worker::metrics`](crate::Worker::metrics) reads in process ([`MetricsSnapshot`]), and through
//! the [`metrics`] facade to whatever recorder the process installed: the Prometheus recorder that
//! a worker's metrics address serves (see [`crate::endpoint`]), or the application's own. The
//! facade's recorder is process-wide, so two workers in one process add up there, as Prometheus
//! expects of one process; the snapshot stays per worker.
//!
//! The names and labels are listed in the book's deployment chapter ("Metrics and health").

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quark_history::{
    ClaimedMessage, ClaimedTask, Delivery, FailAction, Settle, TaskKind, Timestamp,
};

/// The metric names, in one place for the recorder's descriptions and the book.
pub(crate) mod names {
    pub(crate) const CLAIMED: &str = "quark_tasks_claimed_total";
    pub(crate) const SETTLED: &str = "quark_tasks_settled_total";
    pub(crate) const LEASE_LOST: &str = "quark_lease_lost_total";
    pub(crate) const CONFLICTS: &str = "quark_conflicts_total";
    pub(crate) const OUTBOX: &str = "quark_outbox_messages_total";
    pub(crate) const QUEUE_WAIT: &str = "quark_queue_wait_seconds";
    pub(crate) const TURN: &str = "quark_turn_seconds";
    pub(crate) const ACTIVITY: &str = "quark_activity_seconds";
    pub(crate) const COMMIT: &str = "quark_commit_seconds";
    pub(crate) const OUTBOX_LAG: &str = "quark_outbox_delivery_lag_seconds";
    pub(crate) const SLOTS: &str = "quark_slots_in_use";
    pub(crate) const CACHED: &str = "quark_cached_instances";
    pub(crate) const CACHED_BYTES: &str = "quark_cached_instance_bytes";
    pub(crate) const LONG_HISTORIES: &str = "quark_long_histories_total";
    pub(crate) const BLOCKED: &str = "quark_instances_blocked";
    pub(crate) const PROJECTED: &str = "quark_projection_events_total";
    pub(crate) const PROJECTION_BEHIND: &str = "quark_projection_behind_seconds";
    pub(crate) const PROJECTION_BEHIND_EVENTS: &str = "quark_projection_behind_events";
    pub(crate) const MEMORY: &str = "quark_worker_memory_bytes";
    pub(crate) const MEMORY_LIMIT: &str = "quark_worker_memory_limit_bytes";
    pub(crate) const PRESSURE: &str = "quark_worker_memory_pressure";
    pub(crate) const CLAIMS_PAUSED: &str = "quark_worker_claims_paused";
    pub(crate) const BREAKER_TRIPS: &str = "quark_breaker_trips_total";
    pub(crate) const MEMORY_EVICTIONS: &str = "quark_memory_evictions_total";
    pub(crate) const LEAKS: &str = "quark_leaks_suspected_total";
    pub(crate) const MOVED_AWAY: &str = "quark_runs_moved_away_total";
    pub(crate) const ENTITIES_MOVED_AWAY: &str = "quark_entities_moved_away_total";
    pub(crate) const PLACEMENT_ROUNDS: &str = "quark_placement_rounds_total";
    pub(crate) const PLACEMENT_MOVES: &str = "quark_placement_moves_total";
    pub(crate) const LOCAL_DELIVERIES: &str = "quark_local_deliveries_total";
    pub(crate) const SIGNALS_DROPPED: &str = "quark_signals_dropped_total";
    pub(crate) const SIGNALS_ACROSS_SHARDS: &str = "quark_signals_across_shards_total";
    pub(crate) const NEWS_ACROSS_SHARDS: &str = "quark_news_across_shards_total";
    pub(crate) const ENTITY_ACROSS_SHARDS: &str = "quark_entity_commands_across_shards_total";
    pub(crate) const REPLAYS: &str = "quark_replays_total";
    pub(crate) const ENTITY_ROUTED: &str = "quark_entity_commands_routed_total";
}

/// The labels of a running task's figures.
#[derive(Debug, Clone)]
pub(crate) struct TaskLabels {
    pub(crate) queue: String,
    pub(crate) kind: TaskKind,
}

impl TaskLabels {
    pub(crate) fn of(task: &ClaimedTask) -> Self {
        TaskLabels {
            queue: task.queue.clone(),
            kind: task.kind,
        }
    }
}

/// How a commit settled its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Retried,
}

impl Outcome {
    /// How a commit that settles its task this way counts, if it settles it at all.
    pub(crate) fn of(settle: Option<&Settle>) -> Option<Self> {
        match settle {
            Some(Settle::Complete(_)) => Some(Outcome::Completed),
            Some(Settle::Fail(_, FailAction::Dead { .. })) => Some(Outcome::Failed),
            Some(Settle::Fail(..)) => Some(Outcome::Retried),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
        }
    }
}

/// The figures of one worker.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    lease_lost: AtomicU64,
    conflicts: AtomicU64,
    outbox_sent: AtomicU64,
    outbox_retried: AtomicU64,
    outbox_dead: AtomicU64,
    evicted_runs: AtomicU64,
    evicted_entities: AtomicU64,
    leaks_suspected: AtomicU64,
    breaker_trips: AtomicU64,
    moved_away: AtomicU64,
    entities_moved_away: AtomicU64,
    placement_rounds: AtomicU64,
    placement_moves: AtomicU64,
    local_deliveries: AtomicU64,
    signals_dropped: AtomicU64,
    replays: AtomicU64,
    /// Replays by cause, in the order of [`ReplayCauses`]' fields.
    replay_causes: [AtomicU64; 5],
    entity_routed: AtomicU64,
    /// What this worker last added to the process-wide gauges. Gauges are reported as
    /// increments from it, so that two workers in one process sum instead of overwriting each
    /// other.
    reported: Mutex<Reported>,
}

/// What a worker last added to each gauge; `None` before its first report, which is made even
/// when the value is 0, so that every series exists from the start.
#[derive(Debug, Default)]
struct Reported {
    slots: HashMap<TaskKind, f64>,
    cached: Option<f64>,
    cached_bytes: Option<f64>,
}

/// Cache misses ([`MetricsSnapshot::replays`]) by cause (see
/// [`Miss`](quark_workflow::runner::Miss)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayCauses {
    /// No run was kept: never here, evicted, or dropped when the instance moved away.
    pub not_warm: u64,
    /// The history was read ahead from the start while no run was kept.
    pub read_ahead: u64,
    /// The run had a commit of its own in flight.
    pub busy: u64,
    /// The run had not seen events another commit appended.
    pub behind: u64,
    /// The new events disagreed with what the run had decided.
    pub stale: u64,
}

/// A snapshot of a worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Tasks claimed.
    pub claimed: u64,
    /// Tasks whose commit completed them.
    pub completed: u64,
    /// Tasks whose commit moved them to the dead-letter list, or whose handler rejected them.
    pub failed: u64,
    /// Tasks released to run again later (by their handler's retry policy or after an error).
    pub retried: u64,
    /// Commits refused because the lease had been lost.
    pub lease_lost: u64,
    /// Turns redone because the history moved on while they ran.
    pub conflicts: u64,
    /// Outbox messages this worker delivered and marked sent.
    pub outbox_sent: u64,
    /// Outbox deliveries that failed and were scheduled to be tried again.
    pub outbox_retried: u64,
    /// Outbox messages this worker gave up on (dead).
    pub outbox_dead: u64,
    /// Warm orchestration runs evicted for memory (pressure or a suspected leak).
    pub evicted_runs: u64,
    /// Live entities evicted for memory.
    pub evicted_entities: u64,
    /// Warm runs flagged as suspected leaks.
    pub leaks_suspected: u64,
    /// Times the circuit breaker opened (memory past the reject threshold).
    pub breaker_trips: u64,
    /// Warm runs dropped because another worker ran a later turn of their instance.
    pub moved_away: u64,
    /// Live entities dropped because their stream's home moved to another worker.
    pub entities_moved_away: u64,
    /// Placement rounds this worker ran as the coordinator.
    pub placement_rounds: u64,
    /// Instances this worker, as the coordinator, moved between workers.
    pub placement_moves: u64,
    /// Children's ends and signals that continued their warm receiver here, in the sender's
    /// commit, without a trip through the queue.
    pub local_deliveries: u64,
    /// Signals orchestrations here sent to instances that had ended or did not exist.
    pub signals_dropped: u64,
    /// Turns that rebuilt their instance's run by replaying its history (cache misses).
    pub replays: u64,
    /// The same, by why the warm run could not be used.
    pub replay_causes: ReplayCauses,
    /// Entity commands of turns here sent to the worker where their entity is live.
    pub entity_routed: u64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A task was claimed at `now` (by the poller, or leased to this worker by its own commit).
    pub(crate) fn claimed(&self, task: &ClaimedTask, now: Timestamp) {
        inc(&self.claimed);
        let (queue, kind) = (task.queue.clone(), task.kind.as_str());
        metrics::counter!(names::CLAIMED, "queue" => queue.clone(), "kind" => kind).increment(1);
        metrics::histogram!(names::QUEUE_WAIT, "queue" => queue, "kind" => kind)
            .record(now.since(task.visible_at));
    }

    /// A commit settled a task of `task`'s.
    pub(crate) fn settled(&self, outcome: Outcome, task: &TaskLabels) {
        inc(match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Failed => &self.failed,
            Outcome::Retried => &self.retried,
        });
        metrics::counter!(
            names::SETTLED,
            "queue" => task.queue.clone(),
            "kind" => task.kind.as_str(),
            "outcome" => outcome.as_str(),
        )
        .increment(1);
    }

    /// A task's lease was found lost (by its commit or by the lease keeper).
    pub(crate) fn lease_lost(&self, task: &TaskLabels) {
        inc(&self.lease_lost);
        metrics::counter!(names::LEASE_LOST, "queue" => task.queue.clone(), "kind" => task.kind.as_str())
            .increment(1);
    }

    /// A turn is redone because its history moved on.
    pub(crate) fn conflict(&self, task: &TaskLabels) {
        inc(&self.conflicts);
        metrics::counter!(names::CONFLICTS, "queue" => task.queue.clone(), "kind" => task.kind.as_str())
            .increment(1);
    }

    /// A child's end or a signal continued its warm receiver here (local delivery).
    pub(crate) fn delivered_here(&self, task: &TaskLabels) {
        inc(&self.local_deliveries);
        metrics::counter!(names::LOCAL_DELIVERIES, "queue" => task.queue.clone()).increment(1);
    }

    /// A signal sent by a turn found no running receiver.
    pub(crate) fn signal_dropped(&self, task: &TaskLabels) {
        inc(&self.signals_dropped);
        metrics::counter!(names::SIGNALS_DROPPED, "queue" => task.queue.clone()).increment(1);
    }

    /// A turn sent a signal to an instance on another shard, through the outbox.
    pub(crate) fn signal_across_shards(&self, task: &TaskLabels) {
        metrics::counter!(names::SIGNALS_ACROSS_SHARDS, "queue" => task.queue.clone()).increment(1);
    }

    /// A turn or an activity sent news to an instance on another shard, through the outbox.
    pub(crate) fn news_across_shards(&self, task: &TaskLabels) {
        metrics::counter!(names::NEWS_ACROSS_SHARDS, "queue" => task.queue.clone()).increment(1);
    }

    /// A turn sent an entity command to its entity's shard, through the outbox.
    pub(crate) fn entity_across_shards(&self, task: &TaskLabels) {
        metrics::counter!(names::ENTITY_ACROSS_SHARDS, "queue" => task.queue.clone()).increment(1);
    }

    /// A turn's entity command was sent to its entity's home worker.
    pub(crate) fn entity_routed(&self, task: &TaskLabels) {
        inc(&self.entity_routed);
        metrics::counter!(names::ENTITY_ROUTED, "queue" => task.queue.clone()).increment(1);
    }

    /// A turn rebuilt its instance's run from the history (a cache miss), for `why`.
    pub(crate) fn replayed(&self, task: &TaskLabels, why: quark_workflow::runner::Miss) {
        use quark_workflow::runner::Miss;
        inc(&self.replays);
        let i = match why {
            Miss::NotWarm => 0,
            Miss::ReadAhead => 1,
            Miss::Busy => 2,
            Miss::Behind => 3,
            _ => 4,
        };
        inc(&self.replay_causes[i]);
        metrics::counter!(names::REPLAYS, "queue" => task.queue.clone(), "cause" => why.as_str())
            .increment(1);
    }

    /// A turn found its instance's history past the warning bounds (once per live run).
    pub(crate) fn long_history(&self, task: &TaskLabels) {
        metrics::counter!(names::LONG_HISTORIES, "queue" => task.queue.clone()).increment(1);
    }

    /// A task ran from its start to its settle in `took` (commits included).
    pub(crate) fn ran(&self, task: &TaskLabels, took: Duration) {
        match task.kind {
            TaskKind::Orchestration => {
                metrics::histogram!(names::TURN, "queue" => task.queue.clone()).record(took)
            }
            TaskKind::Activity | TaskKind::Job => metrics::histogram!(
                names::ACTIVITY, "queue" => task.queue.clone(), "kind" => task.kind.as_str()
            )
            .record(took),
            _ => {}
        }
    }

    /// A commit of a `kind` task took `took`, from its hand-over to its acknowledgement.
    pub(crate) fn committed(&self, kind: TaskKind, took: Duration) {
        metrics::histogram!(names::COMMIT, "kind" => kind.as_str()).record(took);
    }

    /// An outbox delivery of `m` was settled at `now`.
    pub(crate) fn outbox(&self, m: &ClaimedMessage, delivery: &Delivery, now: Timestamp) {
        let outcome = match delivery {
            Delivery::Sent { .. } => {
                metrics::histogram!(names::OUTBOX_LAG).record(now.since(m.created_at));
                inc(&self.outbox_sent);
                "sent"
            }
            Delivery::Retry { .. } => {
                inc(&self.outbox_retried);
                "retried"
            }
            // Dead, or whatever a later version adds: counted as given up on.
            _ => {
                inc(&self.outbox_dead);
                "dead"
            }
        };
        metrics::counter!(names::OUTBOX, "outcome" => outcome).increment(1);
    }

    /// The memory governor's reading: resident memory and limit, level and breaker, per worker.
    pub(crate) fn memory(
        &self,
        worker: &str,
        rss: u64,
        limit: u64,
        level: quark_history::Pressure,
        breaker: bool,
    ) {
        let worker = worker.to_string();
        metrics::gauge!(names::MEMORY, "worker" => worker.clone()).set(rss as f64);
        metrics::gauge!(names::MEMORY_LIMIT, "worker" => worker.clone()).set(limit as f64);
        metrics::gauge!(names::PRESSURE, "worker" => worker.clone()).set(f64::from(level.as_i16()));
        metrics::gauge!(names::CLAIMS_PAUSED, "worker" => worker).set(f64::from(u8::from(breaker)));
    }

    /// Warm state was evicted for memory (`reason`: `pressure` or `leak`).
    pub(crate) fn evicted_for_memory(
        &self,
        reason: &'static str,
        runs: quark_workflow::runner::Evicted,
        entities: quark_workflow::runner::Evicted,
    ) {
        self.evicted_runs
            .fetch_add(runs.count as u64, Ordering::Relaxed);
        self.evicted_entities
            .fetch_add(entities.count as u64, Ordering::Relaxed);
        metrics::counter!(names::MEMORY_EVICTIONS, "what" => "runs", "reason" => reason)
            .increment(runs.count as u64);
        metrics::counter!(names::MEMORY_EVICTIONS, "what" => "entities", "reason" => reason)
            .increment(entities.count as u64);
    }

    /// A warm run was flagged as a suspected leak.
    pub(crate) fn leak_suspected(&self) {
        inc(&self.leaks_suspected);
        metrics::counter!(names::LEAKS).increment(1);
    }

    /// Warm runs were dropped: another worker serves their instances now.
    pub(crate) fn moved_away(&self, freed: quark_workflow::runner::Evicted) {
        self.moved_away
            .fetch_add(freed.count as u64, Ordering::Relaxed);
        metrics::counter!(names::MOVED_AWAY).increment(freed.count as u64);
    }

    /// Live entities were dropped: another worker is their home now.
    pub(crate) fn entities_moved_away(&self, freed: quark_workflow::runner::Evicted) {
        self.entities_moved_away
            .fetch_add(freed.count as u64, Ordering::Relaxed);
        metrics::counter!(names::ENTITIES_MOVED_AWAY).increment(freed.count as u64);
    }

    /// A placement round ran here (this worker coordinates), and moved `moved` instances for
    /// `why` (`locality` or `memory`).
    pub(crate) fn placement_round(&self, moved: usize, why: &'static str) {
        inc(&self.placement_rounds);
        self.placement_moves
            .fetch_add(moved as u64, Ordering::Relaxed);
        metrics::counter!(names::PLACEMENT_ROUNDS, "reason" => why).increment(1);
        metrics::counter!(names::PLACEMENT_MOVES, "reason" => why).increment(moved as u64);
    }

    /// The circuit breaker opened.
    pub(crate) fn breaker_tripped(&self) {
        inc(&self.breaker_trips);
        metrics::counter!(names::BREAKER_TRIPS).increment(1);
    }

    /// Reports the slots in use per kind and the instances held live (count and estimated
    /// bytes), as changes since the last report.
    pub(crate) fn gauges(
        &self,
        slots: impl IntoIterator<Item = (TaskKind, usize)>,
        cached: usize,
        cached_bytes: usize,
    ) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, now) in slots {
            let now = now as f64;
            let was = reported.slots.insert(kind, now);
            if was != Some(now) {
                metrics::gauge!(names::SLOTS, "kind" => kind.as_str())
                    .increment(now - was.unwrap_or(0.0));
            }
        }
        let cached = cached as f64;
        let was = reported.cached.replace(cached);
        if was != Some(cached) {
            metrics::gauge!(names::CACHED).increment(cached - was.unwrap_or(0.0));
        }
        let bytes = cached_bytes as f64;
        let was = reported.cached_bytes.replace(bytes);
        if was != Some(bytes) {
            metrics::gauge!(names::CACHED_BYTES).increment(bytes - was.unwrap_or(0.0));
        }
    }

    /// Sets the number of blocked instances of each of `queues` from the database's `counts`.
    /// Set, not added up as the worker's own gauges are: every worker reads the same figure.
    pub(crate) fn blocked(&self, queues: &[String], counts: &BTreeMap<String, u64>) {
        for queue in queues {
            let n = counts.get(queue).copied().unwrap_or(0);
            metrics::gauge!(names::BLOCKED, "queue" => queue.clone()).set(n as f64);
        }
    }

    /// Takes back everything this worker added to the gauges (it stopped).
    pub(crate) fn clear_gauges(&self) {
        let kinds: Vec<TaskKind> = {
            let reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            reported.slots.keys().copied().collect()
        };
        self.gauges(kinds.into_iter().map(|k| (k, 0)), 0, 0);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            claimed: get(&self.claimed),
            completed: get(&self.completed),
            failed: get(&self.failed),
            retried: get(&self.retried),
            lease_lost: get(&self.lease_lost),
            conflicts: get(&self.conflicts),
            outbox_sent: get(&self.outbox_sent),
            outbox_retried: get(&self.outbox_retried),
            outbox_dead: get(&self.outbox_dead),
            evicted_runs: get(&self.evicted_runs),
            evicted_entities: get(&self.evicted_entities),
            leaks_suspected: get(&self.leaks_suspected),
            breaker_trips: get(&self.breaker_trips),
            moved_away: get(&self.moved_away),
            entities_moved_away: get(&self.entities_moved_away),
            placement_rounds: get(&self.placement_rounds),
            placement_moves: get(&self.placement_moves),
            local_deliveries: get(&self.local_deliveries),
            signals_dropped: get(&self.signals_dropped),
            replays: get(&self.replays),
            replay_causes: ReplayCauses {
                not_warm: get(&self.replay_causes[0]),
                read_ahead: get(&self.replay_causes[1]),
                busy: get(&self.replay_causes[2]),
                behind: get(&self.replay_causes[3]),
                stale: get(&self.replay_causes[4]),
            },
            entity_routed: get(&self.entity_routed),
        }
    }
}
