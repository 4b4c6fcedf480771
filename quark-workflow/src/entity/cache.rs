//! Live entities: the loaded states of recently used entities, kept between commands so that a hot
//! entity does not re-read its stream each time.
//!
//! Each stream has a slot, an async mutex around its loaded state: holding it is being the
//! stream's one writer in this process. A slot is a cache, never the truth: every append still
//! carries the version the state is at, and a state that might differ from the journal (a
//! commit whose outcome is unknown) is dropped and loaded again.
//!
//! The cache is bounded by count and by the states' footprints ([`WarmLimits`], the bound warm
//! orchestrations have); past either, the least recently used slots nobody holds are dropped.
//! A footprint is the size of the state as the store encodes it, measured when the state is
//! loaded and each time it is snapshotted.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::runner::WarmLimits;

/// A stream's slot: its loaded state, if any, behind the lock that makes one writer.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<Box<dyn Any + Send>>>>;

/// A live entity's figures, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntity {
    /// The stream (`TYPE/key`).
    pub stream_id: String,
    /// The size of its state as the store encodes it, in bytes, when last measured.
    pub footprint: usize,
    /// The version its state is at.
    pub version: u64,
}

struct Entry {
    slot: Slot,
    used: u64,
    footprint: usize,
    version: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Stream ids by last use, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

pub(crate) struct Cache {
    inner: Mutex<Inner>,
    limits: WarmLimits,
}

impl Cache {
    pub(crate) fn new(limits: WarmLimits) -> Self {
        Cache {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    /// The slot of `stream`, made if there is none, and marked as just used.
    pub(crate) fn slot(&self, stream: &str) -> Slot {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let slot = match inner.entries.get_mut(stream) {
            Some(entry) => {
                let old = std::mem::replace(&mut entry.used, tick);
                let slot = entry.slot.clone();
                inner.order.remove(&old);
                slot
            }
            None => {
                let slot = Slot::default();
                inner.entries.insert(
                    stream.to_string(),
                    Entry {
                        slot: slot.clone(),
                        used: tick,
                        footprint: 0,
                        version: 0,
                    },
                );
                slot
            }
        };
        inner.order.insert(tick, stream.to_string());
        self.evict(&mut inner);
        slot
    }

    /// Records what a slot's state now is (after a load or a commit); `footprint: None` keeps the
    /// last measurement.
    pub(crate) fn note(&self, stream: &str, version: u64, footprint: Option<usize>) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(stream) else {
            return;
        };
        entry.version = version;
        let Some(footprint) = footprint else {
            return;
        };
        let old = std::mem::replace(&mut entry.footprint, footprint);
        inner.bytes = inner.bytes - old + footprint;
        self.evict(&mut inner);
    }

    /// Drops every slot nobody holds (a held one is dropped by its holder's next load).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        let free: Vec<(String, u64)> = inner
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.slot) == 1)
            .map(|(id, e)| (id.clone(), e.used))
            .collect();
        for (id, used) in free {
            if let Some(entry) = inner.entries.remove(&id) {
                inner.order.remove(&used);
                inner.bytes -= entry.footprint;
            }
        }
    }

    /// Every live entity, by stream id.
    pub(crate) fn live(&self) -> Vec<LiveEntity> {
        let inner = self.lock();
        let mut live: Vec<LiveEntity> = inner
            .entries
            .iter()
            .map(|(id, e)| LiveEntity {
                stream_id: id.clone(),
                footprint: e.footprint,
                version: e.version,
            })
            .collect();
        live.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        live
    }

    /// Drops the least recently used slots nobody holds until both limits hold (or only held
    /// slots are left: a command in progress keeps its state).
    fn evict(&self, inner: &mut Inner) {
        let over = |i: &Inner| {
            i.entries.len() > self.limits.instances.max(1) || i.bytes > self.limits.bytes
        };
        if !over(inner) {
            return;
        }
        let candidates: Vec<(u64, String)> =
            inner.order.iter().map(|(t, id)| (*t, id.clone())).collect();
        for (tick, id) in candidates {
            if !over(inner) {
                break;
            }
            // Held by a caller (or its lock is): not evictable now.
            let free = inner
                .entries
                .get(&id)
                .is_some_and(|e| Arc::strong_count(&e.slot) == 1);
            if free && let Some(entry) = inner.entries.remove(&id) {
                inner.order.remove(&tick);
                inner.bytes -= entry.footprint;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(instances: usize, bytes: usize) -> WarmLimits {
        WarmLimits { instances, bytes }
    }

    #[test]
    fn it_drops_the_least_recently_used_free_slot_past_the_count() {
        let cache = Cache::new(limits(2, usize::MAX));
        drop(cache.slot("a"));
        drop(cache.slot("b"));
        drop(cache.slot("a")); // b is now the oldest
        drop(cache.slot("c"));
        let ids: Vec<_> = cache.live().into_iter().map(|l| l.stream_id).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn it_keeps_a_held_slot_and_drops_by_footprint() {
        let cache = Cache::new(limits(100, 1000));
        let held = cache.slot("held");
        cache.note("held", 3, Some(600));
        drop(cache.slot("other"));
        // Over the byte bound: "held" is older but in use, so "other" goes.
        cache.note("other", 1, Some(600));
        let live = cache.live();
        assert_eq!(
            live,
            [LiveEntity {
                stream_id: "held".into(),
                footprint: 600,
                version: 3
            }]
        );
        drop(held);
        drop(cache.slot("third"));
        cache.note("third", 1, Some(500));
        let ids: Vec<_> = cache.live().into_iter().map(|l| l.stream_id).collect();
        assert_eq!(ids, ["third"]);
    }
}
