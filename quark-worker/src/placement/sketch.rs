//! Who talks to whom: each worker keeps a bounded sketch of the messages its commits carry from
//! one instance to another (a signal, a child's start or result, an event appended to another
//! instance's history), weighted by count and bytes and decayed with time, and publishes its
//! heaviest edges through the database for the placement coordinator to merge.
//!
//! The sketch holds at most `capacity` edges. When it is full it drops the lighter half at once
//! (sorting once per `capacity / 2` new edges, not scanning at each), so a burst of one-off pairs
//! cannot push out the pairs that talk all the time: those are heavier than anything new.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use quark_history::{Commit, HistoryEvent, Timestamp};
use serde::{Deserialize, Serialize};

/// The edges a worker's sketch holds.
pub const CAPACITY: usize = 16_384;

/// How fast old messages stop counting: a message weighs half as much five minutes later.
pub const HALF_LIFE: Duration = Duration::from_secs(300);

/// The heaviest edges a worker publishes with each sketch.
pub const PUBLISHED: usize = 2_048;

/// The most warm runs a worker lists with each sketch (the largest first).
pub const PUBLISHED_WARM: usize = 4_096;

/// What a worker publishes: its heaviest edges, and the warm runs it holds with their
/// footprints, which is what the coordinator weighs and moves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The heaviest edges, heaviest first.
    pub edges: Vec<SketchEdge>,
    /// The warm runs the worker holds, largest first.
    pub warm: Vec<WarmRun>,
}

/// A warm run as published: its instance and its estimated footprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRun {
    /// The instance.
    pub instance: String,
    /// Its estimated footprint, in bytes.
    pub bytes: u64,
}

/// One edge as published: two instances and how much passed between them, decayed to the time
/// of publication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SketchEdge {
    /// One end (the smaller id).
    pub a: String,
    /// The other end.
    pub b: String,
    /// Messages, decayed.
    pub messages: f64,
    /// Bytes, decayed.
    pub bytes: f64,
}

#[derive(Debug, Clone, Copy)]
struct Weight {
    messages: f64,
    bytes: f64,
    /// When the weights were last brought up to date, in microseconds.
    at: i64,
}

impl Weight {
    fn decayed(self, now: i64, half_life: Duration) -> Weight {
        let age = (now - self.at).max(0) as f64 / 1e6;
        let factor = 0.5f64.powf(age / half_life.as_secs_f64().max(1e-9));
        Weight {
            messages: self.messages * factor,
            bytes: self.bytes * factor,
            at: now,
        }
    }
}

/// A worker's communication sketch.
#[derive(Debug)]
pub struct Sketch {
    capacity: usize,
    half_life: Duration,
    edges: Mutex<HashMap<(String, String), Weight>>,
}

impl Sketch {
    /// A sketch of at most `capacity` edges whose weights halve every `half_life`.
    pub fn new(capacity: usize, half_life: Duration) -> Self {
        Sketch {
            capacity: capacity.max(2),
            half_life,
            edges: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Weight>> {
        self.edges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a message of `bytes` between instances `x` and `y` at `at`.
    pub fn record(&self, x: &str, y: &str, bytes: usize, at: Timestamp) {
        if x == y {
            return;
        }
        let key = if x < y {
            (x.to_string(), y.to_string())
        } else {
            (y.to_string(), x.to_string())
        };
        let now = at.as_micros();
        let mut edges = self.lock();
        if !edges.contains_key(&key) && edges.len() >= self.capacity {
            self.drop_lighter_half(&mut edges, now);
        }
        let weight = edges.entry(key).or_insert(Weight {
            messages: 0.0,
            bytes: 0.0,
            at: now,
        });
        let mut w = weight.decayed(now, self.half_life);
        w.messages += 1.0;
        w.bytes += bytes as f64;
        *weight = w;
    }

    fn drop_lighter_half(&self, edges: &mut HashMap<(String, String), Weight>, now: i64) {
        let mut ranked: Vec<((String, String), f64)> = edges
            .iter()
            .map(|(k, w)| (k.clone(), w.decayed(now, self.half_life).messages))
            .collect();
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        for (key, _) in ranked.into_iter().take(edges.len() / 2) {
            edges.remove(&key);
        }
    }

    /// Records what `commit`, made for `instance`'s task at `at`, carries to other instances:
    /// one message per other instance it appends to or enqueues a task of, and one per child an
    /// appended history starts (the turn of `instance`, or of a warm parent continued in the same
    /// commit, see local delivery), between that history's instance and the child.
    ///
    /// A commit may carry the turns of several instances (local delivery continues a chain of
    /// warm receivers in the sender's commit). A signal is counted between the instance whose
    /// turn sent it (its `SignalSent`) and its receiver, not between `instance` and each
    /// receiver down the chain; news to `instance` itself from a later turn of the chain (a
    /// signal back to it, after its own turn) counts too.
    pub fn record_commit(&self, instance: &str, commit: &Commit, at: Timestamp) {
        // Who sent each signal the commit delivers: the instance whose append holds its
        // `SignalSent` (the first such, if several send to one receiver).
        let mut sent_by: Vec<(&str, &str)> = Vec::new();
        for append in &commit.appends {
            for event in &append.events {
                if let HistoryEvent::SignalSent { instance_id, .. } = event
                    && *instance_id != append.instance_id
                    && !sent_by.iter().any(|(to, _)| *to == instance_id.as_str())
                {
                    sent_by.push((instance_id, &append.instance_id));
                }
            }
        }
        let sender_of = |receiver: &str| {
            sent_by
                .iter()
                .find(|(to, _)| *to == receiver)
                .map_or(instance, |(_, from)| *from)
        };
        let mut others: Vec<(&str, &str, usize)> = Vec::new();
        let mut starts: Vec<(&str, &str, usize)> = Vec::new();
        let mut own_turn = true;
        for append in &commit.appends {
            // The first append of `instance` is its own turn; a later one is news to it.
            let own = own_turn && append.instance_id == instance;
            own_turn &= !own;
            let from = sender_of(&append.instance_id);
            if !own && from != append.instance_id {
                let bytes = append.events.iter().map(event_bytes).sum();
                others.push((from, &append.instance_id, bytes));
            }
            // A child the history starts: the store creates it from the starter's own event.
            for event in &append.events {
                if let HistoryEvent::ChildStarted {
                    instance_id, input, ..
                } = event
                {
                    starts.push((&append.instance_id, instance_id, 32 + input.len()));
                }
            }
        }
        for task in &commit.tasks {
            if let Some(other) = task.instance_id.as_deref()
                && sender_of(other) != other
                && !others.iter().any(|(_, o, _)| *o == other)
                && !starts.iter().any(|(_, child, _)| *child == other)
            {
                others.push((sender_of(other), other, task.payload.len()));
            }
        }
        for (from, other, bytes) in others {
            self.record(from, other, bytes, at);
        }
        for (starter, child, bytes) in starts {
            self.record(starter, child, bytes, at);
        }
    }

    /// The `limit` heaviest edges by messages, decayed to `at`, heaviest first.
    pub fn top(&self, limit: usize, at: Timestamp) -> Vec<SketchEdge> {
        let now = at.as_micros();
        let edges = self.lock();
        let mut all: Vec<SketchEdge> = edges
            .iter()
            .map(|((a, b), w)| {
                let w = w.decayed(now, self.half_life);
                SketchEdge {
                    a: a.clone(),
                    b: b.clone(),
                    messages: w.messages,
                    bytes: w.bytes,
                }
            })
            .collect();
        all.sort_by(|x, y| {
            y.messages
                .total_cmp(&x.messages)
                .then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b)))
        });
        all.truncate(limit);
        all
    }

    /// How many edges it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Publishes `shared`'s heaviest edges and its warm runs (`warm`, largest first), with its
/// heartbeat, if there is anything to publish.
pub(crate) async fn publish(
    shared: &crate::shared::Shared,
    mut warm: Vec<quark_workflow::runner::LiveInstance>,
) {
    let now = shared.store.config().clock.now();
    let edges = shared.sketch.top(PUBLISHED, now);
    if edges.is_empty() && warm.is_empty() {
        return;
    }
    warm.truncate(PUBLISHED_WARM);
    let published = Published {
        edges,
        warm: warm
            .into_iter()
            .map(|l| WarmRun {
                instance: l.instance_id,
                bytes: l.footprint as u64,
            })
            .collect(),
    };
    let bytes = match postcard::to_allocvec(&published) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "could not encode the communication sketch");
            return;
        }
    };
    if let Err(e) = shared
        .store
        .publish_sketch(&shared.settings.id, bytes)
        .await
    {
        tracing::debug!(error = %e, "could not publish the communication sketch");
    }
}

/// Decodes a sketch as a worker published it.
pub fn decode(bytes: &[u8]) -> Result<Published, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The bytes a message carries: its payloads, and a little for the event itself.
fn event_bytes(event: &HistoryEvent) -> usize {
    const EVENT: usize = 32;
    EVENT
        + match event {
            HistoryEvent::SignalReceived { name, payload } => name.len() + payload.len(),
            HistoryEvent::ChildCompleted { output, .. } => output.len(),
            HistoryEvent::WorkflowStarted { input, .. } => input.len(),
            HistoryEvent::ActivityCompleted { output, .. } => output.len(),
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history as quarkh;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000)
    }

    #[test]
    fn edges_are_undirected_weighted_and_decay_by_half_each_half_life() {
        let sketch = Sketch::new(16, Duration::from_secs(10));
        sketch.record("b", "a", 100, at(0));
        sketch.record("a", "b", 100, at(0));
        sketch.record("a", "a", 100, at(0)); // an instance to itself is no message
        let top = sketch.top(10, at(10));
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].a.as_str(), top[0].b.as_str()), ("a", "b"));
        assert!((top[0].messages - 1.0).abs() < 1e-9, "{top:?}");
        assert!((top[0].bytes - 100.0).abs() < 1e-9, "{top:?}");
    }

    #[test]
    fn a_burst_of_one_off_pairs_does_not_push_out_the_pairs_that_talk_all_the_time() {
        let sketch = Sketch::new(8, Duration::from_secs(60));
        for _ in 0..20 {
            sketch.record("hot-1", "hot-2", 10, at(0));
            sketch.record("hot-3", "hot-4", 10, at(0));
        }
        for i in 0..100 {
            sketch.record(&format!("once-{i}"), "somewhere", 10, at(1));
        }
        assert!(sketch.len() <= 8);
        let top = sketch.top(2, at(1));
        let pairs: Vec<(&str, &str)> = top.iter().map(|e| (e.a.as_str(), e.b.as_str())).collect();
        assert_eq!(pairs, [("hot-1", "hot-2"), ("hot-3", "hot-4")]);
    }

    /// The sketch's pairs at time 0 with their messages, in the order of their names.
    fn pairs(sketch: &Sketch) -> Vec<(String, String, f64)> {
        let mut seen: Vec<(String, String, f64)> = sketch
            .top(10, at(0))
            .into_iter()
            .map(|e| (e.a, e.b, e.messages))
            .collect();
        seen.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
        seen
    }

    #[test]
    fn a_commit_counts_one_message_per_other_instance_it_reaches() {
        let sketch = Sketch::new(16, Duration::from_secs(60));
        let signal = HistoryEvent::SignalReceived {
            name: "ping".into(),
            payload: quark_history::Payload::json(&"hello").unwrap(),
        };
        let commit = Commit::new()
            .append("parent", quark_history::Expected::Any, [signal.clone()])
            .append(
                "peer",
                quark_history::Expected::Any,
                [signal.clone(), signal],
            )
            .enqueue(quark_history::NewTask::orchestration("default", "peer"))
            .enqueue(quark_history::NewTask::orchestration("default", "child"));
        sketch.record_commit("parent", &commit, at(0));
        let seen = pairs(&sketch);
        assert_eq!(
            seen,
            [
                ("child".into(), "parent".into(), 1.0),
                ("parent".into(), "peer".into(), 1.0)
            ]
        );
    }

    #[test]
    fn a_parent_continued_in_its_child_s_commit_counts_the_result_and_the_next_child_s_start() {
        let sketch = Sketch::new(16, Duration::from_secs(60));
        let commit = Commit::new()
            .append(
                "child-1",
                quarkh::Expected::Seq(3),
                [HistoryEvent::WorkflowCompleted {
                    output: quarkh::Payload::json(&1).unwrap(),
                }],
            )
            .append(
                "parent",
                quarkh::Expected::Seq(4),
                [
                    HistoryEvent::ChildCompleted {
                        command: 1,
                        output: quarkh::Payload::json(&1).unwrap(),
                    },
                    HistoryEvent::ChildStarted {
                        command: 2,
                        instance_id: "child-2".into(),
                        instance_type: "callee".into(),
                        input: quarkh::Payload::json(&2).unwrap(),
                        site: None,
                    },
                ],
            )
            .enqueue(quarkh::NewTask::orchestration("default", "child-2"));
        sketch.record_commit("child-1", &commit, at(0));
        let seen = pairs(&sketch);
        assert_eq!(
            seen,
            [
                ("child-1".into(), "parent".into(), 1.0),
                ("child-2".into(), "parent".into(), 1.0)
            ]
        );
    }

    #[test]
    fn a_chain_of_signals_in_one_commit_counts_each_sender_with_its_receiver() {
        let sketch = Sketch::new(16, Duration::from_secs(60));
        let sent = |to: &str| HistoryEvent::SignalSent {
            command: 1,
            instance_id: to.into(),
            name: "token".into(),
            payload: quarkh::Payload::json(&1).unwrap(),
            site: None,
        };
        let received = || HistoryEvent::SignalReceived {
            name: "token".into(),
            payload: quarkh::Payload::json(&1).unwrap(),
        };
        // `a`'s turn signals `b`; `b` and then `c` are continued in the same commit, and `c`
        // signals `a` back, which goes through the queue.
        let commit = Commit::new()
            .append("a", quarkh::Expected::Seq(5), [sent("b")])
            .append("b", quarkh::Expected::Seq(5), [received(), sent("c")])
            .append("c", quarkh::Expected::Seq(5), [received(), sent("a")])
            .append("a", quarkh::Expected::Any, [received()])
            .enqueue(quarkh::NewTask::orchestration("default", "a"));
        sketch.record_commit("a", &commit, at(0));
        let seen = pairs(&sketch);
        assert_eq!(
            seen,
            [
                ("a".into(), "b".into(), 1.0),
                ("a".into(), "c".into(), 1.0),
                ("b".into(), "c".into(), 1.0)
            ],
            "the ring a -> b -> c -> a, not a star around a"
        );
    }
}
