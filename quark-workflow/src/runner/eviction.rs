//! Eviction of live runs on demand (a worker short of memory, a run that moved away or looks
//! like a leak), beside the LRU bounds the index keeps by itself: turning new runs away, ranking
//! runs by bytes freed per unit of locality lost, and dropping them on their own threads.

use super::{LiveInstances, Shard, oneshot};

/// Bytes freed per unit of locality lost by evicting state of `footprint` bytes that served
/// `hits` turns or commands while live and was last used `age` ticks ago: its footprint over its
/// uses, which count half as much for every `half_life` ticks since. The live runs and the live
/// entities rank their victims by it.
pub(crate) fn eviction_score(footprint: usize, hits: u32, age: u64, half_life: f64) -> f64 {
    let heat = f64::from(hits) * 0.5f64.powf(age as f64 / half_life);
    footprint as f64 / (1.0 + heat)
}

/// What an eviction freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evicted {
    /// Runs or entities dropped.
    pub count: usize,
    /// Their estimated footprints, in bytes.
    pub bytes: usize,
}

impl std::ops::AddAssign for Evicted {
    fn add_assign(&mut self, other: Evicted) {
        self.count += other.count;
        self.bytes += other.bytes;
    }
}

impl LiveInstances {
    /// Runs `job` on every thread (with the instances given for it) and gathers the answers.
    async fn on_each_thread<R: Send + 'static>(
        &self,
        mut per_thread: Vec<Vec<String>>,
        job: fn(&mut Shard, Vec<String>) -> R,
    ) -> Vec<R> {
        let mut answers = Vec::new();
        for (thread, sender) in self.threads.iter().enumerate() {
            let ids = std::mem::take(&mut per_thread[thread]);
            if ids.is_empty() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let sent = sender.send(Box::new(move |shard: &mut Shard| {
                let _ = tx.send(job(shard, ids));
            }));
            if sent.is_ok() {
                answers.push(rx);
            }
        }
        let mut out = Vec::new();
        for rx in answers {
            if let Ok(r) = rx.await {
                out.push(r);
            }
        }
        out
    }

    /// Turns runs not live yet away (`false`) or keeps them again (`true`): a worker short of
    /// memory admits no new warm state.
    pub(crate) fn admit_new(&self, admit: bool) {
        self.index().refuse_new = !admit;
    }

    /// The runs to evict to free `bytes`: the most bytes freed per unit of locality lost first
    /// (a large run seldom used before a small hot one), the least recently used among ties.
    pub(crate) fn victims(&self, bytes: usize) -> Vec<String> {
        let index = self.index();
        let half_life = (index.entries.len() as f64).max(1.0);
        let mut ranked: Vec<(f64, u64, &String, usize)> = index
            .entries
            .iter()
            .map(|(id, m)| {
                (
                    eviction_score(
                        m.footprint,
                        m.hits,
                        index.tick - m.used.min(index.tick),
                        half_life,
                    ),
                    m.used,
                    id,
                    m.footprint,
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut freed = 0;
        ranked
            .into_iter()
            .take_while(|(_, _, _, footprint)| {
                let more = freed < bytes;
                freed += footprint;
                more
            })
            .map(|(_, _, id, _)| id.clone())
            .collect()
    }

    /// Drops the runs of `instances`, except those with a commit in flight (pinned until it is
    /// known written): their next turns replay their histories.
    pub(crate) async fn evict(&self, instances: Vec<String>) -> Evicted {
        let mut per_thread = vec![Vec::new(); self.threads.len()];
        for id in instances {
            per_thread[self.thread_of(&id)].push(id);
        }
        let freed = self
            .on_each_thread(per_thread, |shard, ids| {
                let mut freed = Evicted::default();
                for id in ids {
                    if shard.busy(&id) {
                        continue;
                    }
                    let footprint = shard.index().entries.get(&id).map(|m| m.footprint);
                    shard.forget(&id);
                    if let Some(bytes) = footprint {
                        freed += Evicted { count: 1, bytes };
                    }
                }
                freed
            })
            .await;
        let mut total = Evicted::default();
        for f in freed {
            total += f;
        }
        total
    }
}
