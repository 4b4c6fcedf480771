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
    /// Commands served while live (see [`Cache::victims`]).
    hits: u32,
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
    /// New slots are not kept past their command (the worker is short of memory).
    refuse_new: bool,
    /// Slots made while refusing, dropped once nobody holds them.
    transient: Vec<String>,
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
                entry.hits = entry.hits.saturating_add(1);
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
                        hits: 0,
                        footprint: 0,
                        version: 0,
                    },
                );
                if inner.refuse_new {
                    inner.transient.push(stream.to_string());
                }
                slot
            }
        };
        inner.order.insert(tick, stream.to_string());
        Self::drop_transient(&mut inner);
        self.evict(&mut inner);
        slot
    }

    /// Turns new slots away past their command (`false`), or keeps them again (`true`).
    pub(crate) fn admit_new(&self, admit: bool) {
        let mut inner = self.lock();
        inner.refuse_new = !admit;
        Self::drop_transient(&mut inner);
    }

    /// Drops the slots made while refusing new ones that nobody holds any more.
    fn drop_transient(inner: &mut Inner) {
        let transient = std::mem::take(&mut inner.transient);
        for id in transient {
            let free = inner
                .entries
                .get(&id)
                .map(|e| Arc::strong_count(&e.slot) == 1);
            match free {
                Some(true) => Self::remove(inner, &id),
                Some(false) => inner.transient.push(id),
                None => {}
            }
        }
    }

    fn remove(inner: &mut Inner, id: &str) {
        if let Some(entry) = inner.entries.remove(id) {
            inner.order.remove(&entry.used);
            inner.bytes -= entry.footprint;
        }
    }

    /// Whether `stream`'s state is kept here.
    pub(crate) fn is_live(&self, stream: &str) -> bool {
        self.lock().entries.contains_key(stream)
    }

    /// Drops the free slots of `streams` (a slot a command holds stays: that command's commit
    /// decides where the entity lives next).
    pub(crate) fn drop_streams(&self, streams: &[String]) -> crate::runner::live::Evicted {
        let mut inner = self.lock();
        let mut freed = crate::runner::live::Evicted::default();
        for id in streams {
            let footprint = match inner.entries.get(id) {
                Some(e) if Arc::strong_count(&e.slot) == 1 => e.footprint,
                _ => continue,
            };
            Self::remove(&mut inner, id);
            freed += crate::runner::live::Evicted {
                count: 1,
                bytes: footprint,
            };
        }
        freed
    }

    /// Drops free slots to free `bytes`: the most bytes per unit of locality lost first (a large
    /// state seldom used before a small hot one), the least recently used among ties. A held
    /// slot (a command in progress) is pinned.
    pub(crate) fn shed(&self, bytes: usize) -> crate::runner::live::Evicted {
        let mut inner = self.lock();
        let half_life = (inner.entries.len() as f64).max(1.0);
        let tick = inner.tick;
        let mut ranked: Vec<(f64, u64, String)> = inner
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.slot) == 1)
            .map(|(id, e)| {
                let age = tick.saturating_sub(e.used);
                let score =
                    crate::runner::live::eviction_score(e.footprint, e.hits, age, half_life);
                (score, e.used, id.clone())
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut freed = crate::runner::live::Evicted::default();
        for (_, _, id) in ranked {
            if freed.bytes >= bytes {
                break;
            }
            let footprint = inner.entries.get(&id).map_or(0, |e| e.footprint);
            Self::remove(&mut inner, &id);
            freed += crate::runner::live::Evicted {
                count: 1,
                bytes: footprint,
            };
        }
        freed
    }

    /// The entities kept and their footprints, in bytes.
    pub(crate) fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
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
        Self::drop_transient(&mut inner);
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
    fn refusing_new_slots_keeps_the_old_ones_and_drops_new_ones_after_their_command() {
        let cache = Cache::new(limits(100, usize::MAX));
        drop(cache.slot("old"));
        cache.note("old", 1, Some(10));
        cache.admit_new(false);
        let new = cache.slot("new");
        cache.note("new", 1, Some(20));
        // Held by its command: kept until it ends.
        assert_eq!(cache.size(), (2, 30));
        drop(new);
        drop(cache.slot("old"));
        assert_eq!(cache.size(), (1, 10), "the new slot went after its command");
        cache.admit_new(true);
        drop(cache.slot("new"));
        cache.note("new", 2, Some(20));
        drop(cache.slot("old"));
        assert_eq!(cache.size(), (2, 30), "admitted again");
    }

    #[test]
    fn shedding_frees_the_most_bytes_per_use_first_and_never_a_held_slot() {
        let cache = Cache::new(limits(100, usize::MAX));
        for (id, bytes, uses) in [("hot", 1000, 20), ("cold", 1000, 1), ("small", 10, 1)] {
            for _ in 0..uses {
                drop(cache.slot(id));
            }
            cache.note(id, 1, Some(bytes));
        }
        let held = cache.slot("big-held");
        cache.note("big-held", 1, Some(5000));
        let freed = cache.shed(500);
        assert_eq!(
            freed,
            crate::runner::live::Evicted {
                count: 1,
                bytes: 1000
            }
        );
        let ids: Vec<_> = cache.live().into_iter().map(|l| l.stream_id).collect();
        assert_eq!(
            ids,
            ["big-held", "hot", "small"],
            "the cold large state went first"
        );
        let freed = cache.shed(usize::MAX);
        assert_eq!(freed.count, 2);
        let ids: Vec<_> = cache.live().into_iter().map(|l| l.stream_id).collect();
        assert_eq!(ids, ["big-held"], "a held slot is pinned");
        drop(held);
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
