//! The placement policies PlaceBench compares, and the bounded traffic sketch the ones that
//! move state learn from.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use quark_worker::placement::partition::{
    Balance, Graph, Node, Options, Placer, UNPLACED, WorkerSlot, relieve, repartition,
};

use crate::workload::{Rng, Workload, mix};

/// A hash map whose iteration order depends only on what was inserted: the simulation must give
/// the same figures on every run.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// Bytes that weigh as much as one message in an edge's weight.
pub(crate) const BYTES_PER_MESSAGE: f64 = 4096.0;

/// What one worker can know of the traffic: sampled messages it received, per pair of
/// instances, decayed, keeping only its heaviest pairs (between `budget` and twice that many:
/// when the table reaches twice its budget, the lighter half is dropped).
#[derive(Debug)]
pub(crate) struct Sketch {
    per_worker: Vec<Map<u64, f64>>,
    budget: usize,
}

impl Sketch {
    pub(crate) fn new(k: usize, budget: usize) -> Sketch {
        Sketch {
            per_worker: (0..k).map(|_| Map::default()).collect(),
            budget,
        }
    }

    pub(crate) fn record(&mut self, worker: u16, a: u32, b: u32, weight: f64) {
        let key = (u64::from(a.min(b)) << 32) | u64::from(a.max(b));
        let table = &mut self.per_worker[worker as usize];
        *table.entry(key).or_insert(0.0) += weight;
        if table.len() >= 2 * self.budget {
            let mut entries: Vec<(u64, f64)> = table.drain().collect();
            entries.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            entries.truncate(self.budget);
            table.extend(entries);
        }
    }

    pub(crate) fn decay(&mut self, factor: f64) {
        for table in &mut self.per_worker {
            table.values_mut().for_each(|w| *w *= factor);
        }
    }

    /// All workers' tables summed, in key order.
    pub(crate) fn merged(&self) -> Vec<(u32, u32, f64)> {
        let mut all: Vec<(u64, f64)> = self
            .per_worker
            .iter()
            .flat_map(|t| t.iter().map(|(&k, &w)| (k, w)))
            .collect();
        all.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)));
        let mut out: Vec<(u32, u32, f64)> = Vec::with_capacity(all.len());
        for (key, w) in all {
            let (a, b) = ((key >> 32) as u32, key as u32);
            match out.last_mut() {
                Some(last) if (last.0, last.1) == (a, b) => last.2 += w,
                _ => out.push((a, b, w)),
            }
        }
        out
    }
}

/// The policies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    /// Instance id hash mod k; never moves; no memory governor.
    Hash,
    /// A new instance goes to the worker with the fewest live instances; never moves.
    LeastLoaded,
    /// Orleans-like: random placement; repartitions from message counts, pairwise between two
    /// workers at a time, balancing counts only; sheds the oldest state above 80 % memory.
    Orleans,
    /// Temporal-like: an instance stays on the worker that first ran it (whichever polled).
    Sticky,
    /// Quark: streaming placement next to the creator, repartition, memory relief by moves.
    Quark,
}

impl PolicyKind {
    pub(crate) const ALL: [PolicyKind; 5] = [
        PolicyKind::Hash,
        PolicyKind::LeastLoaded,
        PolicyKind::Orleans,
        PolicyKind::Sticky,
        PolicyKind::Quark,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            PolicyKind::Hash => "hash",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::Orleans => "orleans-like",
            PolicyKind::Sticky => "sticky",
            PolicyKind::Quark => "quark",
        }
    }

    pub(crate) fn learns(self) -> bool {
        matches!(self, PolicyKind::Orleans | PolicyKind::Quark)
    }
}

/// Memory thresholds, as fractions of a worker's capacity.
const QUARK_RELIEVE_ABOVE: f64 = 0.80;
const QUARK_RELIEVE_TO: f64 = 0.72;
const QUARK_FILL: f64 = 0.78;
const QUARK_EVICT_ABOVE: f64 = 0.90;
const QUARK_EVICT_TO: f64 = 0.85;
const ORLEANS_SHED_ABOVE: f64 = 0.80;
const ORLEANS_SHED_TO: f64 = 0.75;
const ORLEANS_MIN_GAIN: f64 = 3.0;

/// One policy's state in a run.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) kind: PolicyKind,
    /// Each instance's worker (its affinity), [`UNPLACED`] before it arrives.
    pub(crate) assign: Vec<u16>,
    /// Whether its state is in its worker's memory (evicted or crashed state is not).
    pub(crate) warm: Vec<bool>,
    pub(crate) sketch: Option<Sketch>,
    rng: Rng,
    live: Vec<u32>,
    /// Quark: the graph of the last repartition (plus creator edges since) and its placer.
    graph: Graph,
    placer: Option<Placer>,
    pub(crate) opts: Options,
    /// Moves made by repartition calls, one entry per call.
    pub(crate) moves_per_call: Vec<usize>,
    pub(crate) relief_moves: usize,
    pub(crate) relief_bytes: u64,
    pub(crate) evicted_bytes: u64,
    pub(crate) oom_events: u32,
    pub(crate) rebuilds: u64,
}

impl Policy {
    pub(crate) fn new(kind: PolicyKind, n: usize, k: usize, budget: usize, seed: u64) -> Policy {
        let mut graph = Graph::new();
        if kind == PolicyKind::Quark {
            for _ in 0..n {
                graph.add_node(0, 1.0);
            }
        }
        Policy {
            kind,
            assign: vec![UNPLACED; n],
            warm: vec![false; n],
            sketch: kind.learns().then(|| Sketch::new(k, budget)),
            rng: Rng::new(seed ^ mix(kind as u64 + 101)),
            live: vec![0; k],
            graph,
            placer: None,
            opts: Options {
                max_rounds: 10,
                max_moves: n / 10,
                // Three remote messages' worth (a remote unit costs 8), and half of what the
                // instance's traffic could cost: a move must beat what a few stray samples
                // suggest.
                min_gain: 24.0,
                min_relative_gain: 0.5,
                balance: Balance {
                    max_memory_fill: QUARK_FILL,
                    ..Balance::default()
                },
                ..Options::default()
            },
            moves_per_call: Vec::new(),
            relief_moves: 0,
            relief_bytes: 0,
            evicted_bytes: 0,
            oom_events: 0,
            rebuilds: 0,
        }
    }

    /// Places an arriving instance.
    pub(crate) fn arrive(&mut self, id: u32, creator: Option<u32>, workers: &[WorkerSlot]) {
        let k = workers.len() as u64;
        let worker = match self.kind {
            PolicyKind::Hash => (mix(u64::from(id) ^ 0x5EED) % k) as u16,
            PolicyKind::LeastLoaded => (0..k as u16)
                .min_by_key(|&w| (self.live[w as usize], w))
                .unwrap_or(0),
            PolicyKind::Orleans | PolicyKind::Sticky => self.rng.below(k) as u16,
            PolicyKind::Quark => {
                if let Some(c) = creator {
                    self.graph.add_edge(id, c, 1.0).expect("ids are nodes");
                }
                if self.placer.is_none() {
                    self.placer = Some(
                        Placer::new(&self.graph, workers, &self.assign, &self.opts)
                            .expect("valid input"),
                    );
                }
                let placer = self.placer.as_mut().expect("just built");
                placer
                    .place(&self.graph, &self.assign, id)
                    .expect("valid input")
            }
        };
        self.assign[id as usize] = worker;
        self.warm[id as usize] = true;
        self.live[worker as usize] += 1;
        // Starting an instance is a message the new instance's worker receives, and a durable
        // one: it is counted, not sampled.
        if let (Some(c), Some(sketch)) = (creator, &mut self.sketch) {
            sketch.record(worker, id, c, 1.0);
        }
    }

    /// Brings an instance's state back into memory on its worker (rebuilt from its history).
    pub(crate) fn touch(&mut self, id: u32) {
        if !self.warm[id as usize] && self.assign[id as usize] != UNPLACED {
            self.warm[id as usize] = true;
            self.rebuilds += 1;
        }
    }

    /// The assignment with cold instances left out: they hold no memory anywhere.
    fn warm_assignment(&self) -> Vec<u16> {
        self.assign
            .iter()
            .zip(&self.warm)
            .map(|(&w, &warm)| if warm { w } else { UNPLACED })
            .collect()
    }

    fn apply_moves(&mut self, assignment: &[u16], before: &[u16]) -> usize {
        let mut moved = 0;
        for (id, (&to, &from)) in assignment.iter().zip(before).enumerate() {
            if to != from && to != UNPLACED {
                self.live[from as usize] -= 1;
                self.live[to as usize] += 1;
                self.assign[id] = to;
                moved += 1;
            }
        }
        moved
    }

    /// One repartition call, from what the sketch learnt; the sketch's weights are then
    /// multiplied by `decay`.
    pub(crate) fn repartition(
        &mut self,
        workload: &Workload,
        workers: &[WorkerSlot],
        tick: u32,
        decay: f64,
    ) {
        let Some(sketch) = &mut self.sketch else {
            return;
        };
        let edges = sketch.merged();
        sketch.decay(decay);
        match self.kind {
            PolicyKind::Quark => {
                let mut graph = Graph::new();
                for id in 0..workload.n as u32 {
                    graph.add_node(workload.memory(id, tick), 1.0);
                }
                for &(a, b, w) in &edges {
                    graph.add_edge(a, b, w).expect("ids are nodes");
                }
                let current = self.warm_assignment();
                let plan = repartition(&graph, workers, &current, &self.opts).expect("valid input");
                let moved = self.apply_moves(&plan.assignment, &current);
                self.moves_per_call.push(moved);
                self.graph = graph;
                self.placer = None;
            }
            PolicyKind::Orleans => {
                let moved = self.orleans_exchange(&edges, workers.len());
                self.moves_per_call.push(moved);
            }
            _ => {}
        }
    }

    /// Orleans-like repartitioning: workers paired at random; in each pair, the instances that
    /// would gain most by moving to the other side are swapped one for one while the pair gains
    /// (message counts only, so counts stay equal; memory and topology are not looked at).
    fn orleans_exchange(&mut self, edges: &[(u32, u32, f64)], k: usize) -> usize {
        let n = self.assign.len();
        let mut adjacency: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        for &(a, b, w) in edges {
            adjacency[a as usize].push((b, w));
            adjacency[b as usize].push((a, w));
        }
        let mut order: Vec<u16> = (0..k as u16).collect();
        for i in (1..k).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        let mut on: Vec<Vec<u32>> = vec![Vec::new(); k];
        for (id, &w) in self.assign.iter().enumerate() {
            if w != UNPLACED && self.warm[id] {
                on[w as usize].push(id as u32);
            }
        }
        let mut moved = 0;
        let cap = self.opts.max_moves;
        for pair in order.chunks(2) {
            let [i, j] = *pair else { continue };
            let gains = |from: u16, to: u16, assign: &[u16]| {
                let mut list: Vec<(f64, u32)> = on[from as usize]
                    .iter()
                    .filter_map(|&id| {
                        let (mut here, mut there) = (0.0, 0.0);
                        for &(o, w) in &adjacency[id as usize] {
                            match assign[o as usize] {
                                x if x == from => here += w,
                                x if x == to => there += w,
                                _ => {}
                            }
                        }
                        // The same noise guard as Quark's: three messages' worth.
                        (there - here > ORLEANS_MIN_GAIN).then_some((there - here, id))
                    })
                    .collect();
                list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                list
            };
            let to_j = gains(i, j, &self.assign);
            let to_i = gains(j, i, &self.assign);
            for (a, b) in to_j.iter().zip(&to_i) {
                if moved + 2 > cap || a.0 + b.0 <= 0.0 {
                    break;
                }
                self.assign[a.1 as usize] = j;
                self.assign[b.1 as usize] = i;
                moved += 2;
            }
        }
        moved
    }

    /// Acts on memory after a tick's growth: a worker above its capacity crashes (all its state
    /// is lost and rebuilt later); Orleans-like sheds state above 80 %; Quark moves state off a
    /// worker above 80 % and evicts only what cannot move.
    pub(crate) fn govern(&mut self, workload: &Workload, workers: &[WorkerSlot], tick: u32) {
        let k = workers.len();
        let cap = workload.capacity as f64;
        let mut memory = vec![0.0; k];
        for id in 0..workload.n {
            if self.warm[id] {
                memory[self.assign[id] as usize] += workload.memory(id as u32, tick) as f64;
            }
        }
        for (w, &used) in memory.iter().enumerate() {
            if used > cap {
                self.oom_events += 1;
                for id in 0..workload.n {
                    if self.warm[id] && self.assign[id] as usize == w {
                        self.warm[id] = false;
                    }
                }
            }
        }
        match self.kind {
            PolicyKind::Orleans => {
                for (w, &used) in memory.iter().enumerate() {
                    if used > ORLEANS_SHED_ABOVE * cap {
                        let excess = used - ORLEANS_SHED_TO * cap;
                        self.evict(workload, w as u16, excess, tick, false);
                    }
                }
            }
            PolicyKind::Quark => {
                if memory.iter().all(|&m| m <= QUARK_RELIEVE_ABOVE * cap) {
                    return;
                }
                for id in 0..workload.n as u32 {
                    let node = Node {
                        memory: workload.memory(id, tick),
                        cpu: 1.0,
                    };
                    self.graph.set_node(id, node).expect("ids are nodes");
                }
                for (w, &used) in memory.iter().enumerate() {
                    if used <= QUARK_RELIEVE_ABOVE * cap {
                        continue;
                    }
                    let current = self.warm_assignment();
                    let bytes = (used - QUARK_RELIEVE_TO * cap) as u64;
                    let relief =
                        relieve(&self.graph, workers, &current, w as u16, bytes, &self.opts)
                            .expect("valid input");
                    self.relief_moves += self.apply_moves(&relief.assignment, &current);
                    self.relief_bytes += relief.freed;
                    self.placer = None;
                    let left = used - relief.freed as f64;
                    if left > QUARK_EVICT_ABOVE * cap {
                        self.evict(workload, w as u16, left - QUARK_EVICT_TO * cap, tick, true);
                    }
                }
            }
            _ => {}
        }
    }

    /// Evicts warm state from `worker` until `bytes` are freed: the largest first (Quark's
    /// governor, after relief), or in a rotating order that stands for "oldest idle".
    fn evict(&mut self, workload: &Workload, worker: u16, bytes: f64, tick: u32, largest: bool) {
        let mut victims: Vec<(u64, u32)> = (0..workload.n as u32)
            .filter(|&id| self.warm[id as usize] && self.assign[id as usize] == worker)
            .map(|id| (workload.memory(id, tick), id))
            .collect();
        if largest {
            victims.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        } else {
            let start = self.rng.below(victims.len().max(1) as u64) as usize;
            let len = victims.len();
            victims.rotate_left(start.min(len));
        }
        let mut freed = 0.0;
        for (size, id) in victims {
            if freed >= bytes {
                break;
            }
            self.warm[id as usize] = false;
            freed += size as f64;
            self.evicted_bytes += size;
        }
    }
}
