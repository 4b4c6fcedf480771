//! The heads of running instances this store appended to: an append to a warm instance writes
//! without reading the instance row first.
//!
//! A head is a hint, never the truth. An append that uses one makes its write conditional on the
//! row still holding that head (the same next sequence number and last hash, still running); if
//! another process appended meanwhile, the write matches no row, writes nothing, and the append
//! forgets the head and takes the ordinary path, which locks and reads the row. Heads are learnt
//! only from commits that succeeded, after they committed.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many heads are kept. When full, all are dropped: they are relearnt from the next appends.
const KEPT: usize = 100_000;

/// An instance's head: what an append must know to continue its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) next_seq: u64,
    pub(super) last_hash: [u8; 32],
    /// An entity stream's head, not a running workflow's: a row never changes between the two.
    pub(super) stream: bool,
}

#[derive(Debug, Default)]
pub(super) struct Heads(Mutex<HashMap<String, Head>>);

impl Heads {
    pub(super) fn get(&self, instance_id: &str) -> Option<Head> {
        self.lock().get(instance_id).copied()
    }

    pub(super) fn forget(&self, instance_id: &str) {
        self.lock().remove(instance_id);
    }

    /// Applies what committed appends left: a new head for an instance still running, `None` for
    /// one that ended. A head never moves back (two commits of one instance can report out of
    /// order).
    pub(super) fn learn(&self, heads: impl IntoIterator<Item = (String, Option<Head>)>) {
        let mut kept = self.lock();
        for (id, head) in heads {
            match head {
                None => {
                    kept.remove(&id);
                }
                Some(head) => {
                    if kept.len() >= KEPT && !kept.contains_key(&id) {
                        kept.clear();
                    }
                    let entry = kept.entry(id).or_insert(head);
                    if head.next_seq > entry.next_seq {
                        *entry = head;
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Head>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(next_seq: u64) -> Head {
        Head {
            next_seq,
            last_hash: [next_seq as u8; 32],
            stream: false,
        }
    }

    #[test]
    fn a_head_moves_forward_only_and_an_ended_instance_is_forgotten() {
        let heads = Heads::default();
        heads.learn([("a".to_string(), Some(head(5)))]);
        heads.learn([("a".to_string(), Some(head(3)))]);
        assert_eq!(
            heads.get("a"),
            Some(head(5)),
            "a late report does not move it back"
        );
        heads.learn([("a".to_string(), Some(head(8)))]);
        assert_eq!(heads.get("a"), Some(head(8)));
        heads.learn([("a".to_string(), None)]);
        assert_eq!(heads.get("a"), None);
        heads.learn([("b".to_string(), Some(head(2)))]);
        heads.forget("b");
        assert_eq!(heads.get("b"), None);
    }
}
