//! Read-ahead: the history events of a batch of claimed turns, read in one round trip before
//! the turns run, each from where its instance's live run stands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{ClaimedTask, RecordedEvent, Store, TaskKind, Timestamp};

use super::live::LiveInstances;

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

/// Events read ahead for claimed turns, waiting for their turns.
#[derive(Debug)]
pub(crate) struct Prefetch {
    live: Arc<LiveInstances>,
    waiting: Mutex<HashMap<TurnKey, Prefetched>>,
}

impl Prefetch {
    pub(crate) fn new(live: Arc<LiveInstances>) -> Self {
        Prefetch {
            live,
            waiting: Mutex::default(),
        }
    }

    /// Reads the histories of a batch of claimed turns in one round trip: each from where its
    /// live run stands, or whole. Read after the claim, they are as fresh as the turns' own
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
                Some((key, (id.clone(), self.live.next_seq(id))))
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
    pub(crate) fn take(&self, task: &ClaimedTask) -> Option<(u64, Vec<RecordedEvent>)> {
        self.waiting()
            .remove(&(task.lease.task_id, task.lease.attempt))
            .map(|p| (p.from, p.events))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<TurnKey, Prefetched>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
