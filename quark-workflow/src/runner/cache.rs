//! Warm instances: the histories a runner has read and the events it has committed, so that a
//! turn reads only what it has not seen, and the events read ahead for a batch of claimed turns.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{ClaimedTask, HistoryRange, RecordedEvent, Store, TaskKind, Timestamp};

/// A claimed turn: its task id and attempt.
type TurnKey = (i64, u32);

/// History events read for a claimed turn before it runs, waiting for the turn.
#[derive(Debug)]
struct Prefetched {
    /// The first sequence number read.
    from: u64,
    events: Vec<RecordedEvent>,
    read_at: Timestamp,
}

/// How long read-ahead events wait for their turn before they are dropped (a turn that never ran,
/// say because the worker was stopping, leaves them behind).
const PREFETCH_KEPT: Duration = Duration::from_secs(60);

/// A bounded cache of histories, so a warm instance's turn reads only the events it has not seen.
/// Histories are append-only, so a cached prefix stays valid; the least recently used instance is
/// evicted when the cache is full.
#[derive(Debug)]
pub(crate) struct HistoryCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
    prefetched: Mutex<HashMap<TurnKey, Prefetched>>,
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
            prefetched: Mutex::default(),
        }
    }

    /// Reads the histories of a batch of claimed turns in one round trip: each from where its
    /// cached prefix ends, or whole. Read after the claim, they are as fresh as the turns' own
    /// reads would be. A failed read is only logged: each turn then reads its own history.
    pub(crate) fn prefetch(
        self: &Arc<Self>,
        tasks: &[ClaimedTask],
        store: Arc<dyn Store>,
    ) -> BoxFuture<'static, ()> {
        let (keys, from): (Vec<TurnKey>, Vec<(String, u64)>) = tasks
            .iter()
            .filter(|t| t.kind == TaskKind::Orchestration)
            .filter_map(|t| {
                let id = t.instance_id.as_ref()?;
                let key = (t.lease.task_id, t.lease.attempt);
                Some((key, (id.clone(), self.next_seq(id))))
            })
            .unzip();
        let cache = Arc::clone(self);
        Box::pin(async move {
            if from.is_empty() {
                return;
            }
            match store.read_histories(&from).await {
                Ok(read) => {
                    let now = store.config().clock.now();
                    let mut waiting = cache.waiting();
                    waiting.retain(|_, p| p.read_at + PREFETCH_KEPT > now);
                    for ((key, (_, from)), events) in keys.into_iter().zip(from).zip(read) {
                        let read_at = now;
                        waiting.insert(
                            key,
                            Prefetched {
                                from,
                                events,
                                read_at,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the claimed turns' histories")
                }
            }
        })
    }

    /// The events read ahead for the claimed turn `task`, if any: `(first seq, events)`.
    pub(crate) fn take_prefetched(&self, task: &ClaimedTask) -> Option<(u64, Vec<RecordedEvent>)> {
        self.waiting()
            .remove(&(task.lease.task_id, task.lease.attempt))
            .map(|p| (p.from, p.events))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<TurnKey, Prefetched>> {
        self.prefetched.lock().unwrap_or_else(|e| e.into_inner())
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
        at: Timestamp,
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

    pub(crate) fn len(&self) -> usize {
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
