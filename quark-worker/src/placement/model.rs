//! What the coordinator sees, as the repartitioner's input: the workers that serve a queue as
//! [`WorkerSlot`]s, the instances of that queue that talk or are warm as nodes of a [`Graph`],
//! and where each is now.
//!
//! Built from what workers publish (their registrations with their loads, their sketches with
//! their warm runs) and from where the store says each instance is. Pure: the same input gives
//! the same model, node and worker indices in the order of their ids.

use std::collections::BTreeMap;

use quark_history::{Placed, Pressure, WorkerInfo};
use serde_json::{Map, Value};

use super::partition::{Graph, UNPLACED, WorkerSlot};
use super::sketch::Published;
use super::topology::Place;

/// A message weighs as much as this many bytes: an edge's weight is its messages plus its bytes
/// over this. Most messages are small, so the count dominates; a signal that carries a
/// megabyte weighs about as much as a thousand small ones.
pub const BYTES_PER_MESSAGE: f64 = 1024.0;

/// The repartitioner's input for one queue.
#[derive(Debug, Clone)]
pub struct Model {
    /// The queue.
    pub queue: String,
    /// Its instances that talk or are warm: node `i` is `instances[i]`.
    pub instances: Vec<String>,
    /// The workers that serve the queue: worker `j` is `workers[j]`.
    pub workers: Vec<String>,
    /// Where each worker is and how much state it may take.
    pub slots: Vec<WorkerSlot>,
    /// Who talks to whom, and what each instance's warm run weighs.
    pub graph: Graph,
    /// Each node's worker now, or [`UNPLACED`] (not running, or on a worker not listed).
    pub current: Vec<u16>,
    /// Each worker's state bytes above what it should hold (by its published memory), for the
    /// workers under pressure.
    pub excess: BTreeMap<u16, u64>,
}

/// How a worker's published memory turns into room for state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// The fraction of its memory limit a worker's memory should stay under; the state it may
    /// hold is this share of its limit minus what it holds besides warm state.
    pub fill: f64,
}

impl Default for Room {
    fn default() -> Self {
        // Five points under the default warning threshold (70 %): a worker the coordinator
        // fills does not warn, and one it relieves drops back out of warning.
        Room { fill: 0.65 }
    }
}

impl Room {
    /// The bytes of warm state `worker` may hold, or `None` if it publishes no limit (it is not
    /// governed: room is not what limits it).
    fn capacity(&self, worker: &WorkerInfo) -> Option<u64> {
        let load = &worker.load;
        if load.memory_limit == 0 {
            return None;
        }
        let state = load.cached_bytes + load.entity_bytes;
        let rest = load.rss_bytes.saturating_sub(state);
        Some(((load.memory_limit as f64 * self.fill) as u64).saturating_sub(rest))
    }
}

/// The models of every queue that has at least two workers to place among and something to
/// place, ordered by queue.
///
/// - `workers`: the registered workers; their labels give their [`Place`] (a worker whose
///   labels do not read as a place counts as [`Place::unknown`]).
/// - `published`: each worker's decoded sketch.
/// - `placed`: where the store says each running instance named in the sketches is.
pub fn models(
    workers: &[WorkerInfo],
    published: &[(String, Published)],
    placed: &[Placed],
    room: Room,
) -> Vec<Model> {
    let mut footprints: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, p) in published {
        for warm in &p.warm {
            let f = footprints.entry(&warm.instance).or_default();
            *f = (*f).max(warm.bytes);
        }
    }
    let stream_queues = stream_queues(published, placed);
    let mut by_queue: BTreeMap<&str, Vec<&Placed>> = BTreeMap::new();
    for p in placed {
        let queue = match p.queue.as_str() {
            "" => match stream_queues.get(p.instance.as_str()) {
                Some(q) => q,
                None => continue,
            },
            q => q,
        };
        by_queue.entry(queue).or_default().push(p);
    }
    let mut models = Vec::new();
    for (queue, members) in by_queue {
        let serving: Vec<&WorkerInfo> = {
            let mut w: Vec<&WorkerInfo> = workers
                .iter()
                .filter(|w| w.queues.iter().any(|q| q == queue))
                .collect();
            w.sort_by(|a, b| a.id.cmp(&b.id));
            w
        };
        if serving.len() < 2 || serving.len() >= UNPLACED as usize {
            continue;
        }
        let worker_index: BTreeMap<&str, u16> = serving
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.as_str(), i as u16))
            .collect();
        let mut graph = Graph::new();
        let mut index: BTreeMap<&str, u32> = BTreeMap::new();
        let mut instances = Vec::new();
        let mut current = Vec::new();
        let mut ordered: Vec<&&Placed> = members.iter().collect();
        ordered.sort_by(|a, b| a.instance.cmp(&b.instance));
        for p in ordered {
            let memory = footprints.get(p.instance.as_str()).copied().unwrap_or(0);
            let node = graph.add_node(memory, 1.0);
            index.insert(&p.instance, node);
            instances.push(p.instance.clone());
            current.push(
                worker_index
                    .get(p.worker.as_str())
                    .copied()
                    .unwrap_or(UNPLACED),
            );
        }
        for (_, p) in published {
            for edge in &p.edges {
                if let (Some(&a), Some(&b)) =
                    (index.get(edge.a.as_str()), index.get(edge.b.as_str()))
                {
                    let weight = edge.messages + edge.bytes / BYTES_PER_MESSAGE;
                    graph
                        .add_edge(a, b, weight)
                        .expect("both ends are nodes of this graph");
                }
            }
        }
        let held = held_by(&graph, &current, serving.len());
        let mut slots = Vec::with_capacity(serving.len());
        let mut excess = BTreeMap::new();
        for (j, w) in serving.iter().enumerate() {
            let place = place_of(w);
            let capacity = match room.capacity(w) {
                // Under pressure: nothing moves in.
                Some(_) if w.load.pressure >= Pressure::Warning => 0,
                Some(c) => c,
                None => u64::MAX / 4,
            };
            if w.load.pressure >= Pressure::Warning
                && let Some(room_left) = room.capacity(w)
            {
                // What it holds of this queue's placed state beyond its room (at least all of
                // it cannot be asked: what is not in the graph cannot move).
                let over = (w.load.cached_bytes + w.load.entity_bytes).saturating_sub(room_left);
                let over = over.min(held[j]);
                if over > 0 {
                    excess.insert(j as u16, over);
                }
            }
            slots.push(WorkerSlot::new(place, capacity));
        }
        models.push(Model {
            queue: queue.to_owned(),
            instances,
            workers: serving.iter().map(|w| w.id.clone()).collect(),
            slots,
            graph,
            current,
            excess,
        });
    }
    models
}

/// The queue each placed entity stream is placed with. A stream has no queue of its own (its
/// commands run on the queues of the orchestrations that call it): it joins the queue of the
/// instances it talks to most, by edge weight (the first queue by name among ties). A stream
/// that talks to no placed instance is left out: nothing says where it belongs.
fn stream_queues<'a>(
    published: &[(String, Published)],
    placed: &'a [Placed],
) -> BTreeMap<&'a str, &'a str> {
    let queue_of: BTreeMap<&str, &str> = placed
        .iter()
        .map(|p| (p.instance.as_str(), p.queue.as_str()))
        .collect();
    let mut weights: BTreeMap<&'a str, BTreeMap<&'a str, f64>> = BTreeMap::new();
    for (_, p) in published {
        for edge in &p.edges {
            let weight = edge.messages + edge.bytes / BYTES_PER_MESSAGE;
            for (stream, other) in [(&edge.a, &edge.b), (&edge.b, &edge.a)] {
                if let (Some((&s, &"")), Some(&q)) = (
                    queue_of.get_key_value(stream.as_str()),
                    queue_of.get(other.as_str()),
                ) && !q.is_empty()
                {
                    *weights.entry(s).or_default().entry(q).or_default() += weight;
                }
            }
        }
    }
    weights
        .into_iter()
        .filter_map(|(stream, queues)| {
            queues
                .into_iter()
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0)))
                .map(|(q, _)| (stream, q))
        })
        .collect()
}

/// The bytes of graph nodes each worker holds.
fn held_by(graph: &Graph, current: &[u16], workers: usize) -> Vec<u64> {
    let mut held = vec![0u64; workers];
    for (node, &w) in graph.nodes().iter().zip(current) {
        if w != UNPLACED {
            held[w as usize] += node.memory;
        }
    }
    held
}

/// A worker's place, from its labels; unknown if they do not read as one (the worker refuses
/// to start with such labels, so this is an older or foreign registration).
pub fn place_of(worker: &WorkerInfo) -> Place {
    serde_json::from_str::<Map<String, Value>>(&worker.labels)
        .ok()
        .and_then(|labels| Place::from_labels(&labels).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use quark_history::{Timestamp, WorkerLoad};

    use super::*;
    use crate::placement::coordinator::{PlacementConfig, Reason, decide};
    use crate::placement::sketch::{SketchEdge, WarmRun};

    const MIB: u64 = 1 << 20;

    fn worker(id: &str, queues: &[&str], labels: &str, load: WorkerLoad) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            labels: labels.into(),
            heartbeat_at: Timestamp::from_micros(0),
            load,
        }
    }

    fn placed(instance: &str, worker: &str, queue: &str) -> Placed {
        Placed {
            instance: instance.into(),
            worker: worker.into(),
            queue: queue.into(),
        }
    }

    fn edge(a: &str, b: &str, messages: f64) -> SketchEdge {
        SketchEdge {
            a: a.into(),
            b: b.into(),
            messages,
            bytes: 0.0,
        }
    }

    fn warm(instance: &str, bytes: u64) -> WarmRun {
        WarmRun {
            instance: instance.into(),
            bytes,
        }
    }

    #[test]
    fn a_queue_is_placed_among_the_workers_that_serve_it_and_only_if_two_do() {
        let workers = [
            worker("w1", &["q", "solo"], "{}", WorkerLoad::default()),
            worker("w2", &["q"], r#"{"region": "eu"}"#, WorkerLoad::default()),
        ];
        let sketch = Published {
            edges: vec![edge("a", "b", 3.0), edge("a", "s", 5.0)],
            warm: vec![warm("a", 4096), warm("b", 100)],
        };
        let where_ = [
            placed("a", "w1", "q"),
            placed("b", "w2", "q"),
            placed("c", "gone", "q"),
            placed("s", "w1", "solo"),
        ];
        let models = models(&workers, &[("w1".into(), sketch)], &where_, Room::default());
        assert_eq!(
            models.len(),
            1,
            "only w1 serves `solo`: nothing to place it among"
        );
        let m = &models[0];
        assert_eq!(m.instances, ["a", "b", "c"]);
        assert_eq!(m.workers, ["w1", "w2"]);
        assert_eq!(m.current, [0, 1, UNPLACED], "c's worker is not registered");
        assert_eq!(m.graph.nodes()[0].memory, 4096);
        assert_eq!(m.graph.nodes()[2].memory, 0, "not warm anywhere");
        // The edge to `s` crosses queues: not in this graph.
        assert_eq!(m.graph.edges().len(), 1);
        assert_eq!(m.slots[1].place.region(), Some("eu"));
        assert!(m.excess.is_empty());
    }

    #[test]
    fn an_entity_s_stream_is_placed_with_the_queue_it_talks_to_most() {
        let workers = [
            worker("w1", &["q", "r"], "{}", WorkerLoad::default()),
            worker("w2", &["q", "r"], "{}", WorkerLoad::default()),
        ];
        let sketch = Published {
            edges: vec![
                edge("a", "Wallet/x", 2.0),
                edge("Wallet/x", "b", 2.0),
                edge("c", "Wallet/x", 3.0),
                edge("Wallet/lonely", "gone", 9.0),
            ],
            warm: vec![warm("Wallet/x", 2048)],
        };
        let where_ = [
            placed("a", "w1", "q"),
            placed("b", "w2", "q"),
            placed("c", "w1", "r"),
            placed("Wallet/x", "w2", ""),
            placed("Wallet/lonely", "w1", ""),
        ];
        let models = models(&workers, &[("w1".into(), sketch)], &where_, Room::default());
        let by_queue = |q: &str| {
            models
                .iter()
                .find(|m| m.queue == q)
                .map(|m| m.instances.clone())
                .unwrap_or_default()
        };
        // 4 messages with `q`'s instances against 3 with `r`'s; the stream that talks to no
        // placed instance is in no model.
        assert_eq!(by_queue("q"), ["Wallet/x", "a", "b"]);
        assert_eq!(by_queue("r"), ["c"]);
        assert!(models.iter().all(|m| !m.queue.is_empty()));
        let q = models.iter().find(|m| m.queue == "q").unwrap();
        assert_eq!(q.graph.nodes()[0].memory, 2048, "the entity's footprint");
        assert_eq!(q.graph.edges().len(), 2);
    }

    #[test]
    fn a_pair_split_across_workers_is_joined() {
        let workers = [
            worker("w1", &["q"], "{}", WorkerLoad::default()),
            worker("w2", &["q"], "{}", WorkerLoad::default()),
        ];
        let sketch = Published {
            edges: vec![edge("a", "b", 10.0), edge("c", "d", 10.0)],
            warm: Vec::new(),
        };
        let where_ = [
            placed("a", "w1", "q"),
            placed("b", "w2", "q"),
            placed("c", "w1", "q"),
            placed("d", "w1", "q"),
        ];
        let model = &models(&workers, &[("w1".into(), sketch)], &where_, Room::default())[0];
        let decided = decide(model, &PlacementConfig::default(), true, &[]);
        assert_eq!(decided.moves.len(), 1, "{:?}", decided.moves);
        let (m, reason) = &decided.moves[0];
        assert!(
            (m.instance == "a" && m.to == "w2") || (m.instance == "b" && m.to == "w1"),
            "{m:?}"
        );
        assert_eq!(*reason, Reason::Locality);
        assert!(decided.cost_after < decided.cost_before);
        // Not due and nobody under pressure: nothing.
        assert!(
            decide(model, &PlacementConfig::default(), false, &[])
                .moves
                .is_empty()
        );
    }

    #[test]
    fn a_worker_under_pressure_is_relieved_of_its_excess_and_receives_nothing() {
        let pressed = WorkerLoad {
            pressure: Pressure::Warning,
            rss_bytes: 720 * MIB,
            memory_limit: 1000 * MIB,
            cached_instances: 3,
            cached_bytes: 30 * MIB,
            ..WorkerLoad::default()
        };
        let roomy = WorkerLoad {
            rss_bytes: 100 * MIB,
            memory_limit: 1000 * MIB,
            ..WorkerLoad::default()
        };
        let workers = [
            worker("hot", &["q"], "{}", pressed),
            worker("cool", &["q"], "{}", roomy),
        ];
        let sketch = Published {
            edges: Vec::new(),
            warm: vec![
                warm("x", 10 * MIB),
                warm("y", 10 * MIB),
                warm("z", 10 * MIB),
            ],
        };
        let where_ = [
            placed("x", "hot", "q"),
            placed("y", "hot", "q"),
            placed("z", "hot", "q"),
        ];
        let model = &models(
            &workers,
            &[("hot".into(), sketch)],
            &where_,
            Room::default(),
        )[0];
        // 720 MiB against a room of 650: 70 MiB too many, of which 30 are placed state.
        assert_eq!(model.excess.get(&1), Some(&(30 * MIB)));
        assert_eq!(model.slots[1].memory_capacity, 0, "nothing moves into it");
        let decided = decide(model, &PlacementConfig::default(), false, &["hot".into()]);
        assert_eq!(decided.moves.len(), 3);
        assert!(
            decided
                .moves
                .iter()
                .all(|(m, r)| m.to == "cool" && *r == Reason::Memory)
        );
        // Relief only for the workers named as due for it.
        assert!(
            decide(model, &PlacementConfig::default(), false, &[])
                .moves
                .is_empty()
        );
    }
}
