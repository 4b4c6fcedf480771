//! Live instances: the suspended runs of warm orchestrations, kept between turns so that a turn
//! feeds its instance only the events that are new, instead of replaying its whole history.
//!
//! An orchestration's run is single-threaded by construction (its context is `Rc`-shared with
//! its futures), so it cannot move between the threads of an async runtime. The runs live on
//! the runner's own orchestration threads instead: each instance belongs to one of them (by a
//! hash of its id), and every step of a run (a turn, the confirmation of its commit, a warm
//! continuation) is a job sent to that thread, in order. Nothing else touches a run.
//!
//! A run kept here is a cache, never the truth: a run that cannot continue exactly where the
//! journal is (its turn's commit failed, the journal moved on without it, it was evicted) is
//! dropped, and the next turn replays the history into a new one, which reaches the same state.
//! The cache is bounded by count and by an estimate of the memory the runs hold; each run's
//! footprint is reported (placement uses it).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;
use quark_history::{ClaimedTask, HistoryEvent, RecordedEvent, Timestamp};

use crate::executor::{Executor, Outcome};
use crate::registry::{ErasedOrchestration, Registry};
use crate::runner::Miss;
use crate::turn::{Turn, start_executor, turn_of};

/// What a turn on a live run came to.
pub(crate) enum LiveTurn {
    /// The turn, whether this run's history just passed the warning bounds, and the token to
    /// [`ack`](LiveInstances::ack) its commit with.
    Turn(Box<Turn>, bool, u64),
    /// The run is not where the events given start (or is gone, or has a commit in flight):
    /// read the whole history and ask again from sequence number 1.
    Miss(Miss),
    /// The turn, run on a run that is not kept: the instance's live run has a commit in flight,
    /// and is left alone until it is known whether that commit was written. Its commit must not
    /// confirm, acknowledge or forget the live run.
    Cold(Box<Turn>),
}

/// An activity's result, reporting back to its instance's live run (a warm continuation).
pub(crate) struct Report {
    /// The result's event.
    pub(crate) event: HistoryEvent,
    /// When it is recorded.
    pub(crate) at: Timestamp,
    /// Whether the commit that scheduled the activity started it here (see
    /// [`Host::started_here`](super::Host::started_here)).
    pub(crate) started_here: bool,
}

type Job = Box<dyn FnOnce(&mut Shard) + Send>;

/// The live runs, spread over the orchestration threads.
pub(crate) struct LiveInstances {
    threads: Vec<mpsc::Sender<Job>>,
    index: Arc<Mutex<Index>>,
    tokens: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LiveInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveInstances")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// What every thread may read: where each live run stands, its size and last use, for the
/// read-ahead of claimed turns, eviction and the reports.
#[derive(Debug, Default)]
struct Index {
    limits: WarmLimits,
    warning: HistoryWarning,
    tick: u64,
    entries: HashMap<String, Meta>,
    /// Live instances by last use, least recent first.
    by_use: BTreeMap<u64, String>,
    bytes: usize,
    /// Runs evicted, per thread, for that thread to drop at its next job.
    evicted: Vec<Vec<String>>,
    /// Whether runs not live yet are turned away (the worker is short of memory): a turn on
    /// them still runs, but its run is not kept.
    refuse_new: bool,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    next_seq: u64,
    footprint: usize,
    events: u64,
    used: u64,
    /// How many turns the run served while live: with `used`, how much locality evicting it
    /// would lose (each later turn would replay its history).
    hits: u32,
    thread: usize,
}

impl Index {
    fn limits(&self) -> WarmLimits {
        self.limits
    }

    fn remove(&mut self, instance: &str) {
        if let Some(meta) = self.entries.remove(instance) {
            self.by_use.remove(&meta.used);
            self.bytes -= meta.footprint;
        }
    }

    /// Records `instance`'s run as used now, then evicts the least recently used runs (never
    /// this one) while the limits are exceeded.
    fn touch(&mut self, instance: &str, thread: usize, run: &Executor) {
        let hits = self
            .entries
            .get(instance)
            .map_or(0, |m| m.hits.saturating_add(1));
        self.remove(instance);
        self.tick += 1;
        let (events, _) = run.history_size();
        let meta = Meta {
            next_seq: run.next_seq(),
            footprint: run.footprint(),
            events,
            used: self.tick,
            hits,
            thread,
        };
        self.bytes += meta.footprint;
        self.by_use.insert(self.tick, instance.to_string());
        self.entries.insert(instance.to_string(), meta);
        let limits = self.limits();
        while self.entries.len() > limits.instances || self.bytes > limits.bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if oldest == instance {
                // The run just used is kept even alone over the limits; it goes next time.
                self.by_use.insert(self.tick, oldest);
                break;
            }
            if let Some(meta) = self.entries.remove(&oldest) {
                self.bytes -= meta.footprint;
                self.evicted[meta.thread].push(oldest);
            }
        }
    }
}

/// One orchestration thread's runs.
struct Shard {
    thread: usize,
    runs: HashMap<String, Live>,
    index: Arc<Mutex<Index>>,
    /// Turns waiting for a run's commit in flight to be acknowledged or dropped (see
    /// [`LiveInstances::settled`]).
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
}

struct Live {
    executor: Executor,
    orchestration: Arc<dyn ErasedOrchestration>,
    /// The history warning was given for this run.
    warned: bool,
    /// The commits in flight whose events the run has taken in ahead of them, by token, with
    /// the activities each schedules. Until one is known written (acknowledged, or one of its
    /// activities reports back, which only a written commit's task can), the run may stand on
    /// events that are never recorded, and nothing may build on it: a commit fenced after them
    /// could land on other events that happen to end at the same sequence number.
    provisional: BTreeMap<u64, Vec<quark_history::CommandId>>,
    /// The token of the turn whose decided events wait for their [`confirm`]ation.
    ///
    /// [`confirm`]: LiveInstances::confirm
    unconfirmed: Option<u64>,
}

impl Live {
    fn new(executor: Executor, orchestration: Arc<dyn ErasedOrchestration>) -> Self {
        Live {
            executor,
            orchestration,
            warned: false,
            provisional: BTreeMap::new(),
            unconfirmed: None,
        }
    }

    /// Whether a commit the run took in ahead of is in flight: the run may stand on events that
    /// are never written, so it is neither handed out nor replaced by another run (two runs of
    /// one instance with commits in flight could each take the other's acknowledgement).
    fn busy(&self) -> bool {
        self.executor.has_unconfirmed() || !self.provisional.is_empty()
    }

    /// Whether the run stands only on written events once `proof` (an activity that reports
    /// back) is taken into account.
    fn settled_with(&mut self, proof: Option<quark_history::CommandId>) -> bool {
        if let Some(command) = proof {
            self.provisional
                .retain(|_, scheduled| !scheduled.contains(&command));
        }
        self.provisional.is_empty()
    }

    /// Registers the commit of `turn` as in flight under `token`, if the run takes in events
    /// of it ahead of it: its own events, or (`fed`) an event fed to the run for it.
    fn in_flight(&mut self, token: u64, turn: &Turn, fed: bool) {
        self.unconfirmed = self.executor.has_unconfirmed().then_some(token);
        let id = self.executor.instance_id();
        let own: Vec<&HistoryEvent> = turn
            .commit
            .appends
            .iter()
            .filter(|a| a.instance_id == id)
            .flat_map(|a| a.events.iter())
            .collect();
        if own.is_empty() && !fed {
            return;
        }
        let scheduled = own
            .into_iter()
            .filter_map(|e| match e {
                HistoryEvent::ActivityScheduled { command, .. } => Some(*command),
                _ => None,
            })
            .collect();
        self.provisional.insert(token, scheduled);
    }
}

impl Shard {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the runs evicted since this thread's last job.
    fn sweep(&mut self) {
        let evicted = std::mem::take(&mut self.index().evicted[self.thread]);
        for instance in evicted {
            // Used again since it was evicted: it is in the index again, and stays.
            if !self.index().entries.contains_key(&instance) {
                self.runs.remove(&instance);
            }
        }
    }

    fn forget(&mut self, instance: &str) {
        self.runs.remove(instance);
        self.index().remove(instance);
        self.wake(instance);
    }

    /// Tells the turns waiting for `instance`'s run that it has no commit in flight any more
    /// (or is gone).
    fn wake(&mut self, instance: &str) {
        if !self.busy(instance)
            && let Some(waiting) = self.waiters.remove(instance)
        {
            for w in waiting {
                let _ = w.send(());
            }
        }
    }

    /// Whether `instance`'s run has a commit in flight (see [`Live::busy`]).
    fn busy(&self, instance: &str) -> bool {
        self.runs.get(instance).is_some_and(Live::busy)
    }

    /// Keeps `live` if it can go on, and returns whether its history just passed the bounds.
    fn keep(&mut self, instance: &str, mut live: Live) -> bool {
        let (events, bytes) = live.executor.history_size();
        let warning = self.index().warning;
        let warn = !live.warned && (events > warning.events || bytes > warning.bytes);
        live.warned |= warn;
        let admitted = {
            let index = self.index();
            index.limits().instances > 0
                && (!index.refuse_new || index.entries.contains_key(instance))
        };
        if live.executor.is_live() && admitted {
            self.index().touch(instance, self.thread, &live.executor);
            self.runs.insert(instance.to_string(), live);
        } else {
            self.forget(instance);
        }
        warn
    }

    /// The orchestration `registry` runs for `instance`'s run, if the run is live under that
    /// same code (a runner with another registry, as in a test that swaps one, starts anew).
    /// A run whose last turn is not confirmed yet, or that stands on commits not known to be
    /// written (`proof` is an activity reporting back, which proves its commit written), is not
    /// handed out: it is left in place for its commit's acknowledgement.
    fn take_live(
        &mut self,
        instance: &str,
        registry: &Registry,
        proof: Option<quark_history::CommandId>,
    ) -> Option<Live> {
        let mut live = self.runs.remove(instance)?;
        if live.executor.has_unconfirmed() || !live.settled_with(proof) {
            self.runs.insert(instance.to_string(), live);
            return None;
        }
        let same_code = live
            .executor_type()
            .and_then(|ty| registry.orchestration(&ty))
            .is_some_and(|o| Arc::ptr_eq(o, &live.orchestration));
        if same_code {
            Some(live)
        } else {
            self.index().remove(instance);
            None
        }
    }
}

impl Live {
    fn executor_type(&self) -> Option<String> {
        self.executor.orchestration_type()
    }
}

impl LiveInstances {
    /// Live runs on `threads` orchestration threads, within `limits`.
    pub(crate) fn new(threads: usize, limits: WarmLimits, warning: HistoryWarning) -> Self {
        let threads = threads.max(1);
        let index = Arc::new(Mutex::new(Index {
            limits,
            warning,
            evicted: vec![Vec::new(); threads],
            ..Index::default()
        }));
        let senders = (0..threads)
            .map(|thread| {
                let (tx, rx) = mpsc::channel::<Job>();
                let index = Arc::clone(&index);
                std::thread::Builder::new()
                    .name(format!("quark-orchestrations-{thread}"))
                    .spawn(move || {
                        // Built here: the runs never leave this thread.
                        let mut shard = Shard {
                            thread,
                            runs: HashMap::new(),
                            index,
                            waiters: HashMap::new(),
                        };
                        // Ends when the runner and every job are gone.
                        while let Ok(job) = rx.recv() {
                            shard.sweep();
                            let run = std::panic::AssertUnwindSafe(|| job(&mut shard));
                            if let Err(panic) = std::panic::catch_unwind(run) {
                                // A bug here, not in user code (whose panics the executor
                                // catches): start this thread's runs afresh.
                                let message = crate::executor::panic_message(panic.as_ref());
                                tracing::error!(
                                    "an orchestration thread's job panicked: {message}"
                                );
                                let lost: Vec<String> =
                                    shard.runs.drain().map(|(k, _)| k).collect();
                                let mut index = shard.index();
                                for instance in lost {
                                    index.remove(&instance);
                                }
                            }
                        }
                    })
                    .map(|_| tx)
            })
            .collect::<Result<Vec<_>, _>>();
        let threads = match senders {
            Ok(senders) => senders,
            Err(e) => panic!("cannot start the orchestration threads: {e}"),
        };
        LiveInstances {
            threads,
            index,
            tokens: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn thread_of(&self, instance: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        instance.hash(&mut h);
        (h.finish() % self.threads.len() as u64) as usize
    }

    /// Runs `job` on `instance`'s thread and waits for its answer.
    async fn on_thread<R: Send + 'static>(
        &self,
        instance: &str,
        job: impl FnOnce(&mut Shard) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            let _ = tx.send(job(shard));
        });
        self.threads[self.thread_of(instance)].send(job).ok()?;
        rx.await.ok()
    }

    /// Sends `job` to `instance`'s thread without waiting: jobs sent later for the same instance
    /// run after it.
    fn post(&self, instance: &str, job: impl FnOnce(&mut Shard) + Send + 'static) {
        let _ = self.threads[self.thread_of(instance)].send(Box::new(job));
    }

    pub(crate) fn set_limits(&self, limits: WarmLimits, warning: HistoryWarning) {
        let mut index = self.index();
        index.limits = limits;
        index.warning = warning;
    }

    /// Where a read of `instance`'s history should start for its live run: right after what the
    /// run has seen, or at 1.
    pub(crate) fn next_seq(&self, instance: &str) -> u64 {
        self.index().entries.get(instance).map_or(1, |m| m.next_seq)
    }

    /// One turn of `instance` (claimed as `task`), given its history from sequence number
    /// `from` on: from 1, a new run replays it; otherwise the live run, if it is exactly there,
    /// is fed the events. `None` if the orchestration threads are gone.
    pub(crate) async fn turn(
        &self,
        instance: &str,
        task: &ClaimedTask,
        registry: &Arc<Registry>,
        from: u64,
        events: Vec<RecordedEvent>,
    ) -> Option<LiveTurn> {
        let (id, task, registry) = (instance.to_string(), task.clone(), Arc::clone(registry));
        let token = self.token();
        self.on_thread(instance, move |shard| {
            let live = if from == 1 {
                let cold = shard.busy(&id);
                if !cold {
                    shard.forget(&id);
                }
                let mut live = match start_executor(&registry, &task, &events) {
                    Ok((executor, orchestration)) => Live::new(executor, orchestration),
                    Err(dead) => return LiveTurn::Turn(dead, false, token),
                };
                if cold {
                    live.executor.feed(live.orchestration.as_ref(), &events);
                    return LiveTurn::Cold(Box::new(turn_of(&mut live.executor, &task)));
                }
                live
            } else if shard.busy(&id) {
                return LiveTurn::Miss(Miss::Busy);
            } else {
                match shard.take_live(&id, &registry, None) {
                    Some(live) if live.executor.next_seq() == from => live,
                    found => {
                        shard.forget(&id);
                        return LiveTurn::Miss(match found {
                            Some(_) => Miss::Behind,
                            None => Miss::NotWarm,
                        });
                    }
                }
            };
            let mut live = live;
            live.executor.feed(live.orchestration.as_ref(), &events);
            if live.executor.is_stale() {
                shard.forget(&id);
                return LiveTurn::Miss(Miss::Stale);
            }
            let turn = turn_of(&mut live.executor, &task);
            live.in_flight(token, &turn, false);
            let warn = shard.keep(&id, live);
            if warn && let Some(live) = shard.runs.get(&id) {
                warn_long(&id, &live.executor);
            }
            LiveTurn::Turn(Box::new(turn), warn, token)
        })
        .await
    }

    /// Continues `instance`'s run with `event`, recorded at `at` right after what the run has
    /// seen (a warm continuation: an activity's result and the turn it unblocks in one commit).
    /// Given `history` (the whole of it), a new run replays it first; without, only a live run
    /// continues. Returns the sequence number the event takes, the turn, whether the run's
    /// history just passed the warning bounds, and the token to [`ack`](Self::ack) the commit
    /// with; or `None`.
    pub(crate) async fn continue_with(
        &self,
        instance: &str,
        task: &ClaimedTask,
        registry: &Arc<Registry>,
        history: Option<Vec<RecordedEvent>>,
        report: Report,
    ) -> Option<(u64, Turn, bool, u64)> {
        let Report {
            event,
            at,
            started_here,
        } = report;
        let (id, task, registry) = (instance.to_string(), task.clone(), Arc::clone(registry));
        let token = self.token();
        // An activity that the commit of the run's own turn started here, reporting back, proves
        // that commit written. One claimed from the queue proves nothing to this run: its command
        // may have been recorded by another run's commit (another worker's, built on another
        // prefix of the history), which numbered its commands otherwise.
        let proof = event.command().filter(|_| started_here);
        self.on_thread(instance, move |shard| {
            let mut live = match history {
                // A run with a commit in flight is not replaced: the result goes through the
                // queue.
                Some(_) if shard.busy(&id) => return None,
                Some(history) => {
                    shard.forget(&id);
                    let (executor, orchestration) =
                        start_executor(&registry, &task, &history).ok()?;
                    let mut live = Live::new(executor, orchestration);
                    live.executor.feed(live.orchestration.as_ref(), &history);
                    live
                }
                None => shard.take_live(&id, &registry, proof)?,
            };
            let next = live.executor.next_seq();
            let rec = RecordedEvent {
                instance_id: id.clone(),
                seq: next,
                recorded_at: at,
                event,
                hash: String::new(),
            };
            live.executor
                .feed(live.orchestration.as_ref(), std::slice::from_ref(&rec));
            if !live.executor.is_live() {
                shard.forget(&id);
                return None;
            }
            let turn = turn_of(&mut live.executor, &task);
            if matches!(
                turn.outcome,
                Outcome::Nondeterminism(_) | Outcome::Panicked(_) | Outcome::Stuck(_)
            ) {
                shard.forget(&id);
                return None;
            }
            live.in_flight(token, &turn, true);
            let warn = shard.keep(&id, live);
            if warn && let Some(live) = shard.runs.get(&id) {
                warn_long(&id, &live.executor);
            }
            Some((next, turn, warn, token))
        })
        .await
        .flatten()
    }

    /// The events `instance`'s last turn decided were recorded from `first` on, at `at`: its
    /// run takes them in. Sent before the commit is made (see the turn), so that any later job
    /// for the instance sees them; the caller forgets the instance if the commit fails.
    /// Only the run that decided them (under `token`) takes them: a confirmation that finds
    /// another run (its own was dropped and the instance replayed meanwhile) is ignored.
    pub(crate) fn confirm(&self, instance: &str, token: u64, first: u64, at: Timestamp) {
        let id = instance.to_string();
        self.post(instance, move |shard| {
            let Some(mut live) = shard.runs.remove(&id) else {
                return;
            };
            if live.unconfirmed != Some(token) {
                shard.runs.insert(id, live);
                return;
            }
            live.unconfirmed = None;
            if live
                .executor
                .confirm(live.orchestration.as_ref(), first, at)
            {
                shard.keep(&id, live);
                shard.wake(&id);
            } else {
                shard.forget(&id);
            }
        });
    }

    /// The commit made under `token` for `instance` was written: its run stands on it.
    pub(crate) fn ack(&self, instance: &str, token: u64) {
        let id = instance.to_string();
        self.post(instance, move |shard| {
            if let Some(live) = shard.runs.get_mut(&id) {
                live.provisional.remove(&token);
            }
            shard.wake(&id);
        });
    }

    /// Resolves once `instance`'s run has no commit in flight: at once if it has none (or no
    /// run is kept), else when that commit is acknowledged or the run dropped. A turn claimed
    /// while its run's own last commit is being written waits for it rather than replay.
    pub(crate) fn settled(&self, instance: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let id = instance.to_string();
        self.post(instance, move |shard| {
            if shard.busy(&id) {
                shard.waiters.entry(id).or_default().push(tx);
            } else {
                let _ = tx.send(());
            }
        });
        rx
    }

    fn token(&self) -> u64 {
        self.tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `ask` on `instance`'s live run if it has seen exactly the events before `next`
    /// (the whole history, when `next` is one past its end) and has no commit in flight;
    /// `None` otherwise (the caller replays the history instead).
    pub(crate) async fn ask<R: Send + 'static>(
        &self,
        instance: &str,
        next: u64,
        ask: impl FnOnce(&Executor) -> R + Send + 'static,
    ) -> Option<R> {
        let id = instance.to_string();
        self.on_thread(instance, move |shard| {
            shard.sweep();
            if shard.busy(&id) {
                return None;
            }
            let live = shard.runs.get(&id)?;
            (live.executor.next_seq() == next && live.executor.is_live())
                .then(|| ask(&live.executor))
        })
        .await
        .flatten()
    }

    /// Drops `instance`'s run: the next turn replays its history.
    pub(crate) fn forget(&self, instance: &str) {
        self.index().remove(instance);
        let id = instance.to_string();
        self.post(instance, move |shard| shard.forget(&id));
    }

    /// How many instances are live.
    pub(crate) fn len(&self) -> usize {
        self.index().entries.len()
    }

    /// The estimated memory the live runs hold, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.index().bytes
    }

    /// Every live instance with its footprint, largest first.
    pub(crate) fn instances(&self) -> Vec<LiveInstance> {
        let mut all: Vec<LiveInstance> = self
            .index()
            .entries
            .iter()
            .map(|(id, m)| LiveInstance {
                instance_id: id.clone(),
                footprint: m.footprint,
                events: m.events,
            })
            .collect();
        all.sort_by(|a, b| {
            b.footprint
                .cmp(&a.footprint)
                .then(a.instance_id.cmp(&b.instance_id))
        });
        all
    }
}

#[path = "eviction.rs"]
mod eviction;
#[path = "limits.rs"]
mod limits;
pub use eviction::Evicted;
pub(crate) use eviction::eviction_score;
use limits::warn_long;
pub use limits::{HistoryWarning, LiveInstance, WarmLimits};

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
