//! Running orchestrations, activities and timers: the handlers that connect the runtime to
//! `quark-workflow`.
//!
//! The orchestration handler reads the instance's history (only the new part, when the instance is
//! warm in the history cache; for a batch of claimed turns, in one read ahead of them), calls [`process_turn`] — the same function the test environment
//! calls — creates the children it started, and returns the turn's commit. The activity handler
//! runs one attempt under the activity's timeouts and settles it with [`activity_commit`]; the
//! timer handler fires with [`timer_commit`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{
    ClaimedTask, Commit, Expected, HistoryRange, IdReusePolicy, RecordedEvent, Settle, Store,
    TaskKind,
};
use quark_workflow::{
    ActivityContext, ActivityEffects, ActivityError, ActivityInfo, CancellationToken,
    HeartbeatSink, JobControl, Outcome, Registry, TaskPayload, activity_commit, job_commit,
    process_turn, timer_commit,
};

use crate::handler::{HandlerError, TaskContext};

/// The handlers of one worker's registry, with the history cache that keeps its instances warm.
#[derive(Debug, Clone)]
pub(crate) struct Workflows {
    registry: Arc<Registry>,
    cache: Arc<HistoryCache>,
    prefetched: Arc<Mutex<HashMap<TurnKey, Prefetched>>>,
}

/// A claimed turn: its task id and attempt.
type TurnKey = (i64, u32);

/// History events read for a claimed turn before it runs (see [`crate::Handler::prefetch`]),
/// waiting for the turn, which is keyed by its task id and attempt.
#[derive(Debug)]
struct Prefetched {
    /// The first sequence number read.
    from: u64,
    events: Vec<RecordedEvent>,
    read_at: quark_history::Timestamp,
}

/// How long read-ahead events wait for their turn before they are dropped (a turn that never ran,
/// say because the worker was stopping, leaves them behind).
const PREFETCH_KEPT: Duration = Duration::from_secs(60);

impl Workflows {
    pub(crate) fn new(registry: Registry, cache_capacity: usize) -> Self {
        Workflows {
            registry: Arc::new(registry),
            cache: Arc::new(HistoryCache::new(cache_capacity)),
            prefetched: Arc::default(),
        }
    }

    /// Reads the histories of a batch of claimed turns in one round trip: each from where its
    /// cached prefix ends, or whole. Read after the claim, they are as fresh as the turns' own
    /// reads would be.
    fn prefetch_histories(
        &self,
        tasks: &[ClaimedTask],
        store: Arc<dyn Store>,
    ) -> futures::future::BoxFuture<'static, ()> {
        let (keys, from): (Vec<TurnKey>, Vec<(String, u64)>) = tasks
            .iter()
            .filter(|t| t.kind == TaskKind::Orchestration)
            .filter_map(|t| {
                let id = t.instance_id.as_ref()?;
                let key = (t.lease.task_id, t.lease.attempt);
                Some((key, (id.clone(), self.cache.next_seq(id))))
            })
            .unzip();
        let prefetched = Arc::clone(&self.prefetched);
        Box::pin(async move {
            if from.is_empty() {
                return;
            }
            match store.read_histories(&from).await {
                Ok(read) => {
                    let now = store.config().clock.now();
                    let mut waiting = prefetched.lock().unwrap_or_else(|e| e.into_inner());
                    waiting.retain(|_, p| p.read_at + PREFETCH_KEPT > now);
                    for ((key, (_, from)), events) in keys.into_iter().zip(from).zip(read) {
                        waiting.insert(
                            key,
                            Prefetched {
                                from,
                                events,
                                read_at: now,
                            },
                        );
                    }
                }
                // Each turn reads its own history instead.
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the claimed turns' histories")
                }
            }
        })
    }

    /// One orchestration turn.
    pub(crate) async fn turn(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> Result<Commit, HandlerError> {
        let instance = task.instance_id.clone().ok_or_else(|| {
            HandlerError::Rejected("an orchestration task without an instance".into())
        })?;
        let read_ahead = self
            .prefetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(task.lease.task_id, task.lease.attempt))
            .map(|p| (p.from, p.events));
        let history = self
            .cache
            .history_with(cx.store().as_ref(), &instance, read_ahead)
            .await?;
        let turn = process_turn(&self.registry, &task, &history);
        let mut commit = self.prepare(&instance, turn, &cx).await?;
        // The turn's events are recorded at a time chosen here, so that the cache can hold exact
        // copies of them once they commit: the instance's next activity result then continues it
        // without reading its history back (see `continue_here`).
        let now = cx.store().config().clock.now();
        let own = commit
            .appends
            .iter()
            .position(|a| a.instance_id == instance);
        if let Some(i) = own {
            commit.appends[i].at.get_or_insert(now);
        }
        match cx.commit(commit.clone()).await {
            Ok(committed) => {
                if let Some(i) = own {
                    let append = &commit.appends[i];
                    let at = append.at.unwrap_or(now);
                    self.cache
                        .extend(&instance, committed.appended[i].0, &append.events, at);
                }
                Ok(Commit::default())
            }
            Err(e) => {
                // Nothing was written. The runtime commits it again and handles what went wrong
                // (a conflict reruns the turn); the tasks meant to start here go through the queue.
                tracing::debug!(error = %e, "turn commit failed; handing it to the runtime");
                for task in &mut commit.tasks {
                    task.lease_to = None;
                }
                Ok(commit)
            }
        }
    }

    /// Creates a turn's children and marks the tasks it creates to run on this worker when a slot
    /// is free, so that a warm instance does not wait for a trip through the queue.
    async fn prepare(
        &self,
        instance: &str,
        turn: quark_workflow::Turn,
        cx: &TaskContext,
    ) -> Result<Commit, HandlerError> {
        for child in turn.instances {
            // Ids are deterministic, so a turn that is redone finds its children already there.
            cx.store()
                .create_instance(child, IdReusePolicy::ReturnExisting)
                .await?;
        }
        let waiting = matches!(turn.outcome, Outcome::Waiting);
        if !waiting {
            self.cache.forget(instance);
        }
        let mut commit = turn.commit;
        // A turn that ends its instance drops the activities it scheduled (nobody will read their
        // results): they must not be started here either.
        if waiting {
            for task in &mut commit.tasks {
                if task.kind == TaskKind::Activity {
                    cx.run_here(task);
                }
            }
        }
        Ok(commit)
    }

    /// Continues the orchestration right here: the activity's result and the turn it unblocks go
    /// into one commit, at the history's next sequence number. Returns `None` when that cannot be
    /// done (the result is a retry, the turn could not run); the caller then commits the plain
    /// result, which wakes the orchestration through the queue. If the history moved on meanwhile,
    /// the commit conflicts and the caller does the same.
    async fn continue_here(
        &self,
        task: &ClaimedTask,
        plain: &Commit,
        cx: &TaskContext,
    ) -> Option<Commit> {
        let [append] = plain.appends.as_slice() else {
            return None;
        };
        let [event] = append.events.as_slice() else {
            return None;
        };
        let instance = append.instance_id.as_str();
        // A warm instance's cached history is used as it is, without asking the store for newer
        // events: the commit is fenced at the next sequence number, so if anything was appended
        // meanwhile it conflicts and the plain result goes through the queue instead.
        let mut history = match self.cache.cached(instance) {
            Some(history) => history,
            None => self
                .cache
                .history(cx.store().as_ref(), instance)
                .await
                .ok()?,
        };
        let now = cx.store().config().clock.now();
        let next = history.last().map_or(1, |e| e.seq + 1);
        history.push(RecordedEvent {
            instance_id: instance.to_string(),
            seq: next,
            recorded_at: now,
            event: event.clone(),
            hash: String::new(),
        });
        let as_turn = ClaimedTask {
            kind: TaskKind::Orchestration,
            queue: plain.tasks.first()?.queue.clone(),
            instance_id: Some(instance.to_string()),
            ..task.clone()
        };
        let turn = process_turn(&self.registry, &as_turn, &history);
        if !matches!(turn.commit.settle, Some(Settle::Complete(_))) {
            return None;
        }
        let mut turn_commit = self.prepare(instance, turn, cx).await.ok()?;
        let mut events = vec![event.clone()];
        let mut rest = Vec::new();
        for a in turn_commit.appends.drain(..) {
            if a.instance_id == instance {
                events.extend(a.events);
            } else {
                rest.push(a);
            }
        }
        let mut combined = Commit::new().append(instance, Expected::Seq(next), events);
        // Recorded at the time the turn saw, so that a replay sees the same `ctx.now()`.
        combined.appends[0].at = Some(now);
        combined.appends.extend(rest);
        combined.tasks = turn_commit.tasks;
        // The activity's outbox messages go with its result, whichever commit carries it.
        combined.outbox = plain.outbox.clone();
        combined.outbox.extend(turn_commit.outbox);
        Some(combined.complete(task.lease.clone()))
    }

    /// One activity attempt.
    pub(crate) async fn activity(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> Result<Commit, HandlerError> {
        let Ok(TaskPayload::Activity(activity)) = TaskPayload::from_bytes(&task.payload) else {
            return Err(HandlerError::Rejected(
                "the activity task's payload cannot be decoded".into(),
            ));
        };
        let info = ActivityInfo::new(
            &activity.instance_id,
            activity.command,
            &activity.activity,
            task.lease.attempt,
        );
        let now = || cx.store().config().clock.now();
        let _turn = cx.transaction_turn(activity.options.transactional).await;
        let effects = quark_workflow::effects_for(cx.store().as_ref(), &activity.options).await?;
        let Some(result) = self
            .attempt(
                info,
                activity.input.clone(),
                &activity.options,
                &cx,
                None,
                &effects,
            )
            .await?
        else {
            // The orchestration decides what a missing activity means; it is not retried here.
            let error = ActivityError::message(format!(
                "no activity `{}` is registered on the worker that took it",
                activity.activity
            ))
            .terminal();
            return Ok(activity_commit(&task, &activity, Err(error), now()));
        };
        let ok = result.is_ok();
        let (plain, tx) = effects
            .finish(activity_commit(&task, &activity, result, now()), ok)
            .await?;
        if let Some(tx) = tx {
            // Its writes, its messages and its result: one transaction, fenced by the lease. A
            // lost lease or a failed commit rolls the writes back; the task is released and run
            // again (or, if the lease is gone, by its new holder).
            return match cx.commit_tx(tx, plain.clone()).await {
                Ok(_) => Ok(Commit::default()),
                Err(quark_history::Error::InstanceClosed { .. }) => {
                    // The orchestration ended meanwhile: the writes are rolled back and the
                    // result has nobody to go to; the runtime settles the task.
                    let mut plain = plain;
                    plain.outbox.clear();
                    Ok(plain)
                }
                Err(e) => Err(e.into()),
            };
        }
        if let Some(combined) = self.continue_here(&task, &plain, &cx).await {
            let own = combined.appends[0].clone();
            match cx.commit(combined).await {
                Ok(committed) => {
                    let at = own.at.unwrap_or_else(now);
                    self.cache
                        .extend(&own.instance_id, committed.appended[0].0, &own.events, at);
                    return Ok(Commit::default());
                }
                // The history moved on, the instance ended, or the store hiccuped: fall back to
                // the plain result; the orchestration runs through the queue.
                Err(e) => tracing::debug!(error = %e, "could not continue the orchestration here"),
            }
        }
        Ok(plain)
    }

    /// One attempt of a registered activity under its timeouts: `None` if it is not registered
    /// here. A missed heartbeat or a start-to-close timeout fires the activity's cancellation token
    /// and fails the attempt (retryably); a lost lease abandons it.
    async fn attempt(
        &self,
        info: ActivityInfo,
        input: quark_history::Payload,
        options: &quark_workflow::ActivityOptions,
        cx: &TaskContext,
        job: Option<JobControl>,
        effects: &ActivityEffects,
    ) -> Result<Option<Result<quark_history::Payload, ActivityError>>, HandlerError> {
        let cancel = CancellationToken::new();
        let beats = Arc::new(tokio::sync::Notify::new());
        let sink: HeartbeatSink = {
            let (beats, cx) = (Arc::clone(&beats), cx.clone());
            Arc::new(move |_info: &ActivityInfo, _progress| {
                beats.notify_one();
                let cx = cx.clone();
                tokio::spawn(async move {
                    if let Err(e) = cx.heartbeat().await {
                        tracing::debug!(error = %e, "activity heartbeat could not extend the lease");
                    }
                });
            })
        };
        let name = info.activity.clone();
        let mut ctx =
            ActivityContext::new(info, Some(sink), cancel.clone()).with_effects(effects.clone());
        if let Some(job) = job {
            ctx = ctx.with_job(job);
        }
        let Some(run) = self.registry.run_activity(&name, ctx, input) else {
            return Ok(None);
        };
        let start_to_close = options.start_to_close.unwrap_or(Duration::MAX);
        // A panic in an activity is a failed attempt (retryable), not a dead worker.
        let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run));
        // An operator's cancellation fires the token; the attempt then ends as the activity decides
        // and settles, and the store records the job as cancelled.
        let stop = async {
            cx.stop_requested().await;
            cancel.cancel();
            std::future::pending::<()>().await
        };
        let result = tokio::select! {
            result = run => result.unwrap_or_else(|_| Err(ActivityError::message("the activity panicked"))),
            () = stop => unreachable!("pending"),
            () = tokio::time::sleep(start_to_close) => {
                cancel.cancel();
                Err(ActivityError::message(format!("timed out after {start_to_close:?} (start_to_close)")))
            }
            () = missed_heartbeat(options.heartbeat, &beats) => {
                cancel.cancel();
                Err(ActivityError::message("no heartbeat within the heartbeat timeout"))
            }
            () = cx.cancelled() => {
                // The lease is gone (or the worker is shutting down): whoever holds the task now
                // runs it; nothing this attempt commits would be accepted.
                cancel.cancel();
                return Err(HandlerError::Other("the lease was lost".into()));
            }
        };
        Ok(Some(result))
    }

    /// One attempt of a job.
    pub(crate) async fn job(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> Result<Commit, HandlerError> {
        let Ok(TaskPayload::Job(job)) = TaskPayload::from_bytes(&task.payload) else {
            return Err(HandlerError::Rejected(
                "the job's payload cannot be decoded".into(),
            ));
        };
        let info = ActivityInfo::new("", 0, &job.activity, task.lease.attempt);
        // A retried job resumes from the checkpoint its last attempt saved.
        let checkpoint = if task.lease.attempt > 1 {
            cx.store()
                .job_progress(task.lease.task_id)
                .await?
                .and_then(|p| p.checkpoint)
        } else {
            None
        };
        let progress: quark_workflow::ProgressSink = {
            let cx = cx.clone();
            Arc::new(move |p| {
                let cx = cx.clone();
                Box::pin(async move { cx.report_progress(p).await })
            })
        };
        let control = JobControl {
            id: task.lease.task_id,
            progress,
            checkpoint,
        };
        let _turn = cx.transaction_turn(job.options.transactional).await;
        let effects = quark_workflow::effects_for(cx.store().as_ref(), &job.options).await?;
        let Some(result) = self
            .attempt(
                info,
                job.input.clone(),
                &job.options,
                &cx,
                Some(control),
                &effects,
            )
            .await?
        else {
            return Err(HandlerError::Rejected(format!(
                "no activity `{}` is registered on the worker that took this job",
                job.activity
            )));
        };
        let ok = result.is_ok();
        let now = cx.store().config().clock.now();
        let (commit, tx) = effects
            .finish(job_commit(&task, &job, result, now), ok)
            .await?;
        match tx {
            Some(tx) => {
                cx.commit_tx(tx, commit).await?;
                Ok(Commit::default())
            }
            None => Ok(commit),
        }
    }

    /// A timer fires.
    pub(crate) async fn timer(
        &self,
        task: ClaimedTask,
        _cx: TaskContext,
    ) -> Result<Commit, HandlerError> {
        match TaskPayload::from_bytes(&task.payload) {
            Ok(TaskPayload::Timer(timer)) => Ok(timer_commit(&task, &timer)),
            _ => Err(HandlerError::Rejected(
                "the timer task's payload cannot be decoded".into(),
            )),
        }
    }
}

/// One handler for every kind of workflow task, dispatching on the task's kind.
impl crate::Handler for Workflows {
    fn handle(
        &self,
        task: ClaimedTask,
        cx: TaskContext,
    ) -> futures::future::BoxFuture<'static, Result<Commit, HandlerError>> {
        let w = self.clone();
        Box::pin(async move {
            match task.kind {
                TaskKind::Orchestration => w.turn(task, cx).await,
                TaskKind::Activity => w.activity(task, cx).await,
                TaskKind::Timer => w.timer(task, cx).await,
                TaskKind::Job => w.job(task, cx).await,
                other => Err(HandlerError::Rejected(format!(
                    "{other} tasks are not workflow tasks"
                ))),
            }
        })
    }

    fn prefetch(
        &self,
        tasks: &[ClaimedTask],
        store: Arc<dyn Store>,
    ) -> futures::future::BoxFuture<'static, ()> {
        self.prefetch_histories(tasks, store)
    }
}

/// Resolves when `every` passes without a heartbeat; never, without a heartbeat timeout.
async fn missed_heartbeat(every: Option<Duration>, beats: &tokio::sync::Notify) {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    while tokio::time::timeout(every, beats.notified()).await.is_ok() {}
}

/// A bounded cache of histories, so a warm instance's turn reads only the events it has not seen.
/// Histories are append-only, so a cached prefix stays valid; the least recently used instance is
/// evicted when the cache is full.
#[derive(Debug)]
pub(crate) struct HistoryCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    tick: u64,
    /// Each instance's history, with the tick of its last use.
    entries: HashMap<String, (u64, Arc<Vec<RecordedEvent>>)>,
    /// The instances by last use, least recent first: eviction does not scan the cache.
    by_use: BTreeMap<u64, String>,
}

impl CacheInner {
    /// Marks `instance` used now; returns its history if it is cached.
    fn touch(&mut self, instance: &str) -> Option<&mut Arc<Vec<RecordedEvent>>> {
        self.tick += 1;
        let tick = self.tick;
        let (used, history) = self.entries.get_mut(instance)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, instance.to_string());
        Some(history)
    }

    fn insert(&mut self, instance: &str, history: Arc<Vec<RecordedEvent>>) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((used, _)) = self.entries.insert(instance.to_string(), (tick, history)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(tick, instance.to_string());
    }

    fn remove(&mut self, instance: &str) {
        if let Some((used, _)) = self.entries.remove(instance) {
            self.by_use.remove(&used);
        }
    }

    fn evict_to(&mut self, capacity: usize) {
        while self.entries.len() > capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                return;
            };
            self.entries.remove(&oldest);
        }
    }
}

impl HistoryCache {
    pub(crate) fn new(capacity: usize) -> Self {
        HistoryCache {
            capacity,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instance's whole history, reading from the store only what the cache lacks.
    pub(crate) async fn history(
        &self,
        store: &dyn Store,
        instance: &str,
    ) -> quark_history::Result<Vec<RecordedEvent>> {
        self.history_with(store, instance, None).await
    }

    /// Where a read of `instance`'s history should start: right after its cached prefix, or at 1.
    pub(crate) fn next_seq(&self, instance: &str) -> u64 {
        self.lock()
            .entries
            .get(instance)
            .and_then(|(_, h)| h.last())
            .map_or(1, |e| e.seq + 1)
    }

    /// [`history`](Self::history), given the events from sequence number `from` on if they were
    /// already read (`read_ahead`): they are used if they continue the cached prefix (or are the
    /// whole history), and the store is asked otherwise.
    pub(crate) async fn history_with(
        &self,
        store: &dyn Store,
        instance: &str,
        read_ahead: Option<(u64, Vec<RecordedEvent>)>,
    ) -> quark_history::Result<Vec<RecordedEvent>> {
        let cached = self
            .lock()
            .entries
            .get(instance)
            .map(|(_, h)| Arc::clone(h));
        let mut history = match (cached, read_ahead) {
            (_, Some((1, events))) => events,
            (Some(prefix), read_ahead) => {
                let next = prefix.last().map_or(1, |e| e.seq + 1);
                let tail = match read_ahead {
                    Some((from, events)) if from == next => events,
                    _ => {
                        store
                            .read_history(instance, HistoryRange::From(next))
                            .await?
                    }
                };
                let mut history = Vec::clone(&prefix);
                history.extend(tail);
                history
            }
            (None, _) => store.read_history(instance, HistoryRange::All).await?,
        };
        // A gap would mean the cache was wrong; fall back to the store's whole history.
        if history
            .iter()
            .enumerate()
            .any(|(i, e)| e.seq != i as u64 + 1)
        {
            history = store.read_history(instance, HistoryRange::All).await?;
        }
        self.remember(instance, &history);
        Ok(history)
    }

    /// The cached history of `instance`, if it is cached, without asking the store for more.
    pub(crate) fn cached(&self, instance: &str) -> Option<Vec<RecordedEvent>> {
        let mut inner = self.lock();
        inner.touch(instance).map(|history| Vec::clone(history))
    }

    /// Adds events this worker committed to `instance`'s cached history: `events` were written
    /// from sequence number `first` on, recorded at `at`. If the cache does not end right before
    /// them, it is dropped instead (the next turn reads the history from the store).
    pub(crate) fn extend(
        &self,
        instance: &str,
        first: u64,
        events: &[quark_history::HistoryEvent],
        at: quark_history::Timestamp,
    ) {
        let mut inner = self.lock();
        let Some((_, history)) = inner.entries.get_mut(instance) else {
            return;
        };
        if history.last().map_or(0, |e| e.seq) + 1 != first {
            inner.remove(instance);
            return;
        }
        let history = Arc::make_mut(history);
        for (i, event) in events.iter().enumerate() {
            history.push(RecordedEvent {
                instance_id: instance.to_string(),
                seq: first + i as u64,
                recorded_at: at,
                event: event.clone(),
                hash: String::new(),
            });
        }
    }

    fn remember(&self, instance: &str, history: &[RecordedEvent]) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.insert(instance, Arc::new(history.to_vec()));
        inner.evict_to(self.capacity);
    }

    pub(crate) fn forget(&self, instance: &str) {
        self.lock().remove(instance);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::{Commit, Expected, HistoryEvent, IdReusePolicy, NewInstance, Payload};

    async fn start(store: &dyn Store, ids: &[&str]) {
        for id in ids {
            store
                .create_instance(
                    NewInstance::new(*id, "t", Payload::unit()),
                    IdReusePolicy::RejectDuplicate,
                )
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_cache_reads_only_new_events_and_evicts_the_least_recently_used() {
        let t = quark_history::testing::sqlite().await;
        start(&*t.store, &["a", "b", "c"]).await;
        let cache = HistoryCache::new(2);
        assert_eq!(cache.history(&*t.store, "a").await.unwrap().len(), 1);
        let signal = HistoryEvent::SignalReceived {
            name: "s".into(),
            payload: Payload::unit(),
        };
        t.store
            .commit(Commit::new().append("a", Expected::Any, [signal]))
            .await
            .unwrap();
        let a = cache.history(&*t.store, "a").await.unwrap();
        assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        cache.history(&*t.store, "b").await.unwrap();
        cache.history(&*t.store, "c").await.unwrap();
        assert_eq!(cache.len(), 2);
        assert!(
            !cache.lock().entries.contains_key("a"),
            "a was the least recently used"
        );
    }

    #[tokio::test]
    async fn a_turn_uses_the_events_read_ahead_for_it_only_where_they_fit_the_cache() {
        let t = quark_history::testing::sqlite().await;
        start(&*t.store, &["a"]).await;
        let signal = |name: &str| HistoryEvent::SignalReceived {
            name: name.into(),
            payload: Payload::unit(),
        };
        t.store
            .commit(Commit::new().append("a", Expected::Any, [signal("stored")]))
            .await
            .unwrap();
        let stored = t.store.read_history("a", HistoryRange::All).await.unwrap();
        // Read-ahead events that differ from the store's, so the answer shows which were used.
        let mut ahead = stored.clone();
        ahead[1].event = signal("read ahead");

        let cache = HistoryCache::new(8);
        assert_eq!(
            cache.next_seq("a"),
            1,
            "nothing cached: read from the start"
        );
        let whole = cache
            .history_with(&*t.store, "a", Some((1, ahead.clone())))
            .await
            .unwrap();
        assert_eq!(whole, ahead, "a whole history read ahead is used as it is");
        assert_eq!(cache.next_seq("a"), 3);

        // Cached up to 2: a tail read from 3 continues it; one read from elsewhere is ignored.
        let mut tail = stored[1].clone();
        tail.seq = 3;
        tail.event = signal("tail");
        let continued = cache
            .history_with(&*t.store, "a", Some((3, vec![tail.clone()])))
            .await
            .unwrap();
        assert_eq!(continued.len(), 3);
        assert_eq!(continued[2], tail);
        cache.forget("a");
        cache.history(&*t.store, "a").await.unwrap();
        let misfit = cache
            .history_with(&*t.store, "a", Some((7, vec![tail])))
            .await
            .unwrap();
        assert_eq!(
            misfit, stored,
            "a tail that does not continue the cache is not used"
        );
    }

    #[tokio::test]
    async fn the_cache_evicts_in_order_of_last_use() {
        let t = quark_history::testing::sqlite().await;
        start(&*t.store, &["a", "b", "c", "d"]).await;
        let cache = HistoryCache::new(3);
        for id in ["a", "b", "c"] {
            cache.history(&*t.store, id).await.unwrap();
        }
        // Used again: a is now the most recent, b the least.
        assert!(cache.cached("a").is_some());
        cache.history(&*t.store, "d").await.unwrap();
        let held = |id| cache.lock().entries.contains_key(id);
        assert!(!held("b") && held("a") && held("c") && held("d"));
        cache.forget("c");
        cache.history(&*t.store, "b").await.unwrap();
        assert!(held("a") && held("b") && held("d"));
        assert_eq!(
            cache.lock().by_use.len(),
            3,
            "the use order lists exactly the cached"
        );
    }

    #[tokio::test]
    async fn the_cache_takes_a_workers_own_events_only_right_after_what_it_holds() {
        let t = quark_history::testing::sqlite().await;
        start(&*t.store, &["a"]).await;
        let cache = HistoryCache::new(8);
        assert!(
            cache.cached("a").is_none(),
            "nothing is cached before a read"
        );
        cache.history(&*t.store, "a").await.unwrap();
        let signal = HistoryEvent::SignalReceived {
            name: "s".into(),
            payload: Payload::unit(),
        };
        let at = t.store.config().clock.now();
        cache.extend("a", 2, std::slice::from_ref(&signal), at);
        let warm = cache.cached("a").unwrap();
        assert_eq!(warm.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(warm[1].event, signal);
        assert_eq!(warm[1].recorded_at, at);
        // Events that would leave a gap (someone else wrote seq 3) drop the entry instead.
        cache.extend("a", 4, std::slice::from_ref(&signal), at);
        assert!(cache.cached("a").is_none());
        // Extending an instance that is not cached caches nothing.
        cache.extend("b", 1, std::slice::from_ref(&signal), at);
        assert!(cache.cached("b").is_none());
    }
}
