//! The repartitioner: which worker should hold each piece of live state.
//!
//! Input is a communication [`Graph`]: one node per piece of live state (a warm orchestration run,
//! a live entity) with its memory and CPU weight, and an undirected edge per pair that talks, with
//! the traffic between them (messages plus bytes over a constant, decayed by the caller). Output is
//! a [`Plan`]: an assignment of nodes to workers and the moves that reach it from the current one.
//!
//! The cost of an assignment is the sum over edges of weight × [`Costs::of`] the distance between
//! the two workers. [`repartition`] lowers it by *balanced label propagation*: in each round every
//! node finds the worker among its neighbours' workers that would lower the cost most (its gain),
//! the wished-for moves are ranked by gain, and they are taken in that order as long as the
//! receiving worker stays within the [`Balance`] limits; a move that finds no room waits for a
//! move in the opposite direction between the same two workers, and the two are exchanged
//! together. Each move is re-checked against the assignment as it stands when it is taken, so the
//! cost never rises. Rounds stop when they gain too little, after [`Options::max_rounds`], and no
//! call moves more than [`Options::max_moves`] nodes, because each move transfers state.
//!
//! Moving one node at a time cannot pull a community out of a split where each part holds on to
//! its members, so before those rounds the same search runs on a coarser graph: nodes are first
//! grouped into clusters of tightly connected nodes (label propagation that ignores workers, no
//! cluster above half a worker's share), the clusters are given workers afresh (the most
//! connected first, each where its edges cost least, its current worker on ties), and each
//! cluster's members move there together if the group gains and the limits (and the move cap)
//! hold.
//!
//! ```
//! use quark_worker::placement::partition::{Graph, Options, WorkerSlot, repartition};
//! use quark_worker::placement::topology::Place;
//!
//! let mut graph = Graph::new();
//! let [a, b, c, d] = [(); 4].map(|_| graph.add_node(1024, 1.0));
//! graph.add_edge(a, b, 10.0)?;
//! graph.add_edge(c, d, 10.0)?;
//! let workers = vec![WorkerSlot::new(Place::unknown(), 1 << 30); 2];
//! // Both pairs talk across workers: a and c on worker 0, b and d on worker 1.
//! let plan = repartition(&graph, &workers, &[0, 1, 0, 1], &Options::default())?;
//! assert_eq!(plan.moves.len(), 2);
//! assert_eq!(plan.cost_after, 0.0);
//! # Ok::<(), quark_worker::placement::partition::PartitionError>(())
//! ```
//!
//! Everything is deterministic: the same input gives the same plan. Ties go to the lower node or
//! worker index; no decision depends on the order of a hash map.
//!
//! [`Placer`] (and [`place_new`]) puts a node that is not placed yet next to its neighbours, minus
//! a penalty that grows with the load of the worker (the Fennel streaming heuristic).
//! [`relieve`] moves state off a worker whose memory is too high, the nodes whose move loses the
//! least locality per byte freed first; what it cannot move is left for the caller to evict.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::topology::{Costs, Place, distance};

/// The worker index of a node that is not placed anywhere (not live). Such a node adds no load,
/// and its edges cost nothing until it is placed.
pub const UNPLACED: u16 = u16::MAX;

/// Bad input to the repartitioner: the caller's graph, workers and assignment disagree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// There are no workers. Wait until at least one worker is registered.
    #[error("there are no workers to place state on")]
    NoWorkers,
    /// More workers than a `u16` worker index can name (the last value is [`UNPLACED`]).
    #[error("{0} workers; at most 65535 can be placed on")]
    TooManyWorkers(usize),
    /// The assignment does not have one entry per node of the graph.
    #[error("the assignment has {got} entries for a graph of {nodes} nodes")]
    AssignmentLength {
        /// Entries given.
        got: usize,
        /// Nodes in the graph.
        nodes: usize,
    },
    /// A node is assigned to a worker index that does not exist.
    #[error("node {node} is assigned to worker {worker}, but there are {workers} workers")]
    UnknownWorker {
        /// The node.
        node: u32,
        /// Its worker index.
        worker: u16,
        /// The number of workers.
        workers: usize,
    },
    /// A node index that is not in the graph.
    #[error("node {node} is not in the graph of {nodes} nodes")]
    UnknownNode {
        /// The node.
        node: u32,
        /// Nodes in the graph.
        nodes: usize,
    },
}

/// The result type of this module.
pub type Result<T, E = PartitionError> = std::result::Result<T, E>;

/// A piece of live state: what it weighs on the worker that holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Its memory footprint, in bytes.
    pub memory: u64,
    /// Its CPU weight, in any unit shared by all nodes (for example turns per second).
    pub cpu: f64,
}

/// Traffic between two nodes `a < b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// The lower node index.
    pub a: u32,
    /// The higher node index.
    pub b: u32,
    /// Messages plus bytes over a constant, decayed by the caller; always positive.
    pub weight: f64,
}

/// Who talks to whom: nodes with weights and undirected weighted edges, built incrementally.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    /// Each node's edges, as (other node, edge index), in the order they were added.
    adjacency: Vec<Vec<(u32, u32)>>,
    /// Finds the edge of a pair, to merge duplicates. Only looked up, never iterated.
    index: HashMap<(u32, u32), u32>,
    total_weight: f64,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node and returns its index (the number of nodes before it).
    pub fn add_node(&mut self, memory: u64, cpu: f64) -> u32 {
        let index = self.nodes.len() as u32;
        self.nodes.push(Node { memory, cpu });
        self.adjacency.push(Vec::new());
        index
    }

    /// Adds `weight` to the edge between `a` and `b`, creating it if needed. A loop (`a == b`)
    /// and a weight that is not positive and finite are ignored: neither says anything about
    /// where the two should be.
    pub fn add_edge(&mut self, a: u32, b: u32, weight: f64) -> Result<()> {
        for node in [a, b] {
            self.check(node)?;
        }
        if a == b || !(weight > 0.0 && weight.is_finite()) {
            return Ok(());
        }
        let key = (a.min(b), a.max(b));
        match self.index.get(&key) {
            Some(&edge) => self.edges[edge as usize].weight += weight,
            None => {
                let edge = self.edges.len() as u32;
                self.edges.push(Edge {
                    a: key.0,
                    b: key.1,
                    weight,
                });
                self.index.insert(key, edge);
                self.adjacency[a as usize].push((b, edge));
                self.adjacency[b as usize].push((a, edge));
            }
        }
        self.total_weight += weight;
        Ok(())
    }

    /// Sets a node's memory and CPU weight.
    pub fn set_node(&mut self, node: u32, weight: Node) -> Result<()> {
        self.check(node)?;
        self.nodes[node as usize] = weight;
        Ok(())
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The edges, in the order they were first added.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The sum of all edge weights.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// A node's neighbours and the weight of the edge to each.
    pub fn neighbours(&self, node: u32) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.adjacency
            .get(node as usize)
            .into_iter()
            .flatten()
            .map(|&(other, edge)| (other, self.edges[edge as usize].weight))
    }

    fn check(&self, node: u32) -> Result<()> {
        if (node as usize) < self.nodes.len() {
            Ok(())
        } else {
            Err(PartitionError::UnknownNode {
                node,
                nodes: self.nodes.len(),
            })
        }
    }
}

/// A worker that can hold state: where it is and how much memory it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSlot {
    /// Where the worker is.
    pub place: Place,
    /// The memory it may hold, in bytes; no move brings it above
    /// [`Balance::max_memory_fill`] of this.
    pub memory_capacity: u64,
}

impl WorkerSlot {
    /// A worker at `place` with `memory_capacity` bytes.
    pub fn new(place: Place, memory_capacity: u64) -> WorkerSlot {
        WorkerSlot {
            place,
            memory_capacity,
        }
    }
}

/// The balance constraints every move keeps.
///
/// For each balanced resource (node count, memory, CPU) a worker may hold at most
/// `(1 + max_imbalance)` × the mean over workers, or the mean plus the largest single node if that
/// is more (one node larger than the slack would otherwise make every assignment infeasible).
/// Independently, no move brings a worker's memory above `max_memory_fill` × its capacity.
/// Only moves into a worker are limited: a worker that starts above a limit is first brought
/// under it where possible, and never made worse.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// The tolerated excess over the mean, as a fraction (0.10: 10 %).
    pub max_imbalance: f64,
    /// Balance node counts.
    pub count: bool,
    /// Balance memory.
    pub memory: bool,
    /// Balance CPU weight.
    pub cpu: bool,
    /// The highest fraction of its capacity a move may fill a worker's memory to.
    pub max_memory_fill: f64,
}

impl Default for Balance {
    fn default() -> Self {
        Balance {
            max_imbalance: 0.10,
            count: true,
            memory: true,
            cpu: true,
            max_memory_fill: 0.9,
        }
    }
}

/// How [`repartition`], [`relieve`] and [`Placer`] work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// The cost of a unit of traffic at each distance.
    pub costs: Costs,
    /// The balance constraints.
    pub balance: Balance,
    /// The most rounds of label propagation in one call.
    pub max_rounds: u32,
    /// The most nodes one call may move (a node moved and moved back does not count).
    pub max_moves: usize,
    /// A move is taken only if it lowers the cost by more than this (in weight × cost units):
    /// a move transfers state, which is not worth a negligible gain or one made of noise.
    pub min_gain: f64,
    /// A move is taken only if it also lowers the cost by more than this fraction of what the
    /// node's traffic would cost if all of it crossed the farthest distance. Traffic without
    /// structure still shows, in a sample, a worker a node talks to a little more than its own;
    /// requiring a share of its traffic keeps such noise from moving state.
    pub min_relative_gain: f64,
    /// Rounds stop once one lowers the cost by less than this fraction of the cost.
    pub min_round_gain: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            costs: Costs::default(),
            balance: Balance::default(),
            max_rounds: 10,
            max_moves: 10_000,
            min_gain: 0.0,
            min_relative_gain: 0.0,
            min_round_gain: 0.005,
        }
    }
}

/// One node's move from a worker to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Move {
    /// The node.
    pub node: u32,
    /// The worker that holds it now.
    pub from: u16,
    /// The worker that should hold it.
    pub to: u16,
}

/// What [`repartition`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The worker of each node after the moves ([`UNPLACED`] stays unplaced).
    pub assignment: Vec<u16>,
    /// The nodes whose worker changes, by node index.
    pub moves: Vec<Move>,
    /// The cost of the current assignment.
    pub cost_before: f64,
    /// The cost of the new assignment; never above `cost_before`.
    pub cost_after: f64,
    /// The rounds of label propagation run, over clusters and over nodes.
    pub rounds: u32,
}

/// What [`relieve`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Relief {
    /// The worker of each node after the moves.
    pub assignment: Vec<u16>,
    /// The moves, by node index.
    pub moves: Vec<Move>,
    /// The bytes the moves take off the worker; less than asked when the other workers had no
    /// room (the caller evicts the rest).
    pub freed: u64,
    /// How much the cost rose (negative if it fell).
    pub locality_lost: f64,
}

/// The cost of an assignment: the sum over edges between placed nodes of weight × the cost of
/// the distance between their workers.
pub fn cost(
    graph: &Graph,
    workers: &[WorkerSlot],
    assignment: &[u16],
    costs: &Costs,
) -> Result<f64> {
    validate(graph, workers, assignment)?;
    let matrix = cost_matrix(workers, costs);
    Ok(assignment_cost(graph, &matrix, workers.len(), assignment))
}

/// Moves nodes between workers to lower the cost of `current`, within the balance constraints and
/// at most [`Options::max_moves`] moves. `current[node]` is the index in `workers` of the worker
/// that holds `node`, or [`UNPLACED`].
pub fn repartition(
    graph: &Graph,
    workers: &[WorkerSlot],
    current: &[u16],
    opts: &Options,
) -> Result<Plan> {
    validate(graph, workers, current)?;
    let k = workers.len();
    let problem = Problem::of(graph);
    let matrix = cost_matrix(workers, &opts.costs);
    let limits = balance_limits(&problem.units, current, workers, &opts.balance);
    let mut search = Search::new(&problem, &matrix, limits.clone(), current, *opts);
    let cost_before = search.cost;
    search.rebalance();
    // Single moves cannot pull a community out of a split where each part holds on to its
    // members, so first clusters move whole: a search over clusters of at most half a worker's
    // share gives each cluster a worker, and the groups that gain move there.
    let mut total = Load::default();
    let mut largest = Load::default();
    for (unit, _) in problem
        .units
        .iter()
        .zip(current)
        .filter(|(_, w)| **w != UNPLACED)
    {
        total.add(unit);
        largest.memory = largest.memory.max(unit.memory);
        largest.cpu = largest.cpu.max(unit.cpu);
    }
    let half_share = |sum: f64, item: f64| (sum / (2.0 * k as f64)).max(item);
    let cluster_max = Load {
        count: half_share(total.count, 1.0),
        memory: half_share(total.memory, largest.memory),
        cpu: half_share(total.cpu, largest.cpu),
    };
    let (cluster_of, coarse) = problem.coarsen(&search.assign, &cluster_max);
    let mut rounds = 0;
    if coarse.len() < problem.len() {
        let plural = plurality(&cluster_of, coarse.len(), &search.assign, k);
        let grown = grow(&coarse, &matrix, &limits, &plural);
        let coarse_opts = Options {
            max_moves: usize::MAX,
            ..*opts
        };
        let mut clusters = Search::new(&coarse, &matrix, limits, &grown, coarse_opts);
        clusters.rebalance();
        rounds += clusters.propagate();
        let target: Vec<u16> = cluster_of
            .iter()
            .map(|&c| clusters.assign[c as usize])
            .collect();
        search.adopt(&target, &cluster_of, coarse.len());
    }
    rounds += search.propagate();
    // Recomputed rather than carried: the carried figure accumulates rounding.
    let cost_after = assignment_cost(graph, &matrix, k, &search.assign);
    Ok(Plan {
        moves: search.moves(),
        assignment: search.assign,
        cost_before,
        cost_after: cost_after.min(cost_before),
        rounds,
    })
}

/// Moves nodes off `worker` until `bytes` of memory are freed or nothing more can move, choosing
/// first the nodes whose move loses the least locality per byte freed (moves that gain
/// locality come first of all). A node goes to the worker where it costs least among those with
/// room under the memory limits; node counts and CPU are not balanced here (the next
/// [`repartition`] restores them). What cannot be freed by moves is `bytes - freed`.
pub fn relieve(
    graph: &Graph,
    workers: &[WorkerSlot],
    current: &[u16],
    worker: u16,
    bytes: u64,
    opts: &Options,
) -> Result<Relief> {
    validate(graph, workers, current)?;
    if worker as usize >= workers.len() {
        return Err(PartitionError::UnknownWorker {
            node: u32::MAX,
            worker,
            workers: workers.len(),
        });
    }
    let problem = Problem::of(graph);
    let matrix = cost_matrix(workers, &opts.costs);
    let limits = balance_limits(&problem.units, current, workers, &opts.balance);
    let mut search = Search::new(&problem, &matrix, limits, current, *opts);
    let cost_before = search.cost;
    let target = search.loads[worker as usize].memory - bytes as f64;
    let freed = search.shed(
        worker,
        Fit::MemoryOnly,
        |load| load.memory > target,
        |unit| unit.memory,
    );
    Ok(Relief {
        moves: search.moves(),
        locality_lost: search.cost - cost_before,
        assignment: search.assign,
        freed: freed as u64,
    })
}

/// Places one node that is not placed yet; see [`Placer`]. For many nodes in a row, keep a
/// [`Placer`]: this function counts every worker's load again.
pub fn place_new(
    graph: &Graph,
    workers: &[WorkerSlot],
    assignment: &[u16],
    node: u32,
    opts: &Options,
) -> Result<u16> {
    Placer::new(graph, workers, assignment, opts)?.place(graph, assignment, node)
}

/// Streaming placement of new nodes: each goes to the worker that maximises
/// −(cost of its edges to placed neighbours) − α·γ·loadᵞ⁻¹ (Fennel, γ = 1.5), among workers with
/// room under the balance limits (counted with the new node). α scales the penalty to the graph's
/// traffic, so that a node with no known neighbours goes to the least-loaded worker and one with
/// neighbours joins them unless their worker is much fuller than the others.
#[derive(Debug, Clone)]
pub struct Placer {
    matrix: Vec<f64>,
    k: usize,
    loads: Vec<Load>,
    fills: Vec<f64>,
    balance: Balance,
    mean_cost: f64,
    scratch: Vec<f64>,
}

impl Placer {
    /// A placer that starts from the loads of `assignment`.
    pub fn new(
        graph: &Graph,
        workers: &[WorkerSlot],
        assignment: &[u16],
        opts: &Options,
    ) -> Result<Placer> {
        validate(graph, workers, assignment)?;
        let k = workers.len();
        let matrix = cost_matrix(workers, &opts.costs);
        let mut loads = vec![Load::default(); k];
        for (node, &w) in assignment.iter().enumerate() {
            if w != UNPLACED {
                loads[w as usize].add(&Load::of(&graph.nodes[node]));
            }
        }
        let pairs = (k * k - k).max(1) as f64;
        Ok(Placer {
            mean_cost: matrix.iter().sum::<f64>() / pairs,
            matrix,
            k,
            loads,
            fills: workers
                .iter()
                .map(|w| w.memory_capacity as f64 * opts.balance.max_memory_fill)
                .collect(),
            balance: opts.balance,
            scratch: vec![0.0; k],
        })
    }

    /// Chooses a worker for `node` (whose own entry in `assignment` is ignored) and counts its
    /// load there. The caller records the choice in its assignment.
    pub fn place(&mut self, graph: &Graph, assignment: &[u16], node: u32) -> Result<u16> {
        graph.check(node)?;
        let weight = graph.nodes[node as usize];
        self.scratch.iter_mut().for_each(|x| *x = 0.0);
        for (other, w) in graph.neighbours(node) {
            let at = assignment.get(other as usize).copied().unwrap_or(UNPLACED);
            if at != UNPLACED && (at as usize) < self.k {
                for (to, cost) in self.scratch.iter_mut().enumerate() {
                    *cost += w * self.matrix[to * self.k + at as usize];
                }
            }
        }
        let k = self.k as f64;
        let total = self.loads.iter().fold(Load::default(), |mut t, l| {
            t.count += l.count;
            t.memory += l.memory;
            t.cpu += l.cpu;
            t
        });
        let n = total.count + 1.0;
        let alpha =
            (graph.total_weight.max(1.0) * self.mean_cost.max(1e-9)) * k.sqrt() / n.powf(1.5);
        let eps = self.balance.max_imbalance;
        let limit = |sum: f64, item: f64| ((1.0 + eps) * sum / k).max(sum / k + item);
        let count_limit = limit(n, 1.0);
        let memory_limit = limit(total.memory + weight.memory as f64, weight.memory as f64);
        let cpu_limit = limit(total.cpu + weight.cpu, weight.cpu);
        let mut best: Option<(f64, usize)> = None;
        for w in 0..self.k {
            let load = &self.loads[w];
            let score = -self.scratch[w] - alpha * 1.5 * load.count.sqrt();
            let memory_after = load.memory + weight.memory as f64;
            let room = memory_after <= self.fills[w]
                && (!self.balance.count || load.count + 1.0 <= count_limit)
                && (!self.balance.memory || memory_after <= memory_limit)
                && (!self.balance.cpu || load.cpu + weight.cpu <= cpu_limit);
            if room && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, w));
            }
        }
        // With no room anywhere, the least-filled worker by memory share takes it.
        let chosen = match best {
            Some((_, w)) => w,
            None => (0..self.k)
                .min_by(|&a, &b| {
                    let share = |w: usize| self.loads[w].memory / self.fills[w].max(1.0);
                    share(a).total_cmp(&share(b)).then(a.cmp(&b))
                })
                .unwrap_or(0),
        };
        self.loads[chosen].add(&Load::of(&weight));
        Ok(chosen as u16)
    }

    /// Forgets a node's load on `worker` (it was evicted or finished).
    pub fn remove(&mut self, graph: &Graph, node: u32, worker: u16) -> Result<()> {
        graph.check(node)?;
        if let Some(load) = self.loads.get_mut(worker as usize) {
            load.remove(&Load::of(&graph.nodes[node as usize]));
        }
        Ok(())
    }
}

fn validate(graph: &Graph, workers: &[WorkerSlot], assignment: &[u16]) -> Result<()> {
    if workers.is_empty() {
        return Err(PartitionError::NoWorkers);
    }
    if workers.len() >= UNPLACED as usize {
        return Err(PartitionError::TooManyWorkers(workers.len()));
    }
    if assignment.len() != graph.node_count() {
        return Err(PartitionError::AssignmentLength {
            got: assignment.len(),
            nodes: graph.node_count(),
        });
    }
    if let Some((node, &worker)) = assignment
        .iter()
        .enumerate()
        .find(|&(_, &w)| w != UNPLACED && w as usize >= workers.len())
    {
        return Err(PartitionError::UnknownWorker {
            node: node as u32,
            worker,
            workers: workers.len(),
        });
    }
    Ok(())
}

/// `matrix[a * k + b]`: the cost of a unit between workers `a` and `b`.
fn cost_matrix(workers: &[WorkerSlot], costs: &Costs) -> Vec<f64> {
    let k = workers.len();
    let mut matrix = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            matrix[a * k + b] = costs.of(distance(&workers[a].place, &workers[b].place, a == b));
        }
    }
    matrix
}

fn assignment_cost(graph: &Graph, matrix: &[f64], k: usize, assignment: &[u16]) -> f64 {
    graph
        .edges
        .iter()
        .filter_map(|e| {
            let (a, b) = (assignment[e.a as usize], assignment[e.b as usize]);
            (a != UNPLACED && b != UNPLACED).then(|| e.weight * matrix[a as usize * k + b as usize])
        })
        .sum()
}

/// What a node or a cluster of nodes weighs on a worker; also a worker's load and its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Load {
    count: f64,
    memory: f64,
    cpu: f64,
}

impl Load {
    fn of(node: &Node) -> Load {
        Load {
            count: 1.0,
            memory: node.memory as f64,
            cpu: node.cpu,
        }
    }

    fn add(&mut self, other: &Load) {
        self.count += other.count;
        self.memory += other.memory;
        self.cpu += other.cpu;
    }

    fn remove(&mut self, other: &Load) {
        self.count -= other.count;
        self.memory -= other.memory;
        self.cpu -= other.cpu;
    }

    fn within(&self, limit: &Load) -> bool {
        // CPU weights are fractional: a relative tolerance keeps rounding from refusing a move.
        self.count <= limit.count
            && self.memory <= limit.memory
            && self.cpu <= limit.cpu + 1e-9 * limit.cpu.abs()
    }
}

/// The limits of every worker, as documented on [`Balance`], for the placed nodes of `units`.
fn balance_limits(
    units: &[Load],
    placed: &[u16],
    workers: &[WorkerSlot],
    b: &Balance,
) -> Vec<Load> {
    let mut total = Load::default();
    let mut largest = Load::default();
    for (unit, _) in units.iter().zip(placed).filter(|(_, w)| **w != UNPLACED) {
        total.add(unit);
        largest.memory = largest.memory.max(unit.memory);
        largest.cpu = largest.cpu.max(unit.cpu);
    }
    let k = workers.len() as f64;
    let limit = |on: bool, sum: f64, item: f64| {
        if on {
            ((1.0 + b.max_imbalance) * sum / k).max(sum / k + item)
        } else {
            f64::INFINITY
        }
    };
    workers
        .iter()
        .map(|w| Load {
            count: limit(b.count, total.count, 1.0),
            memory: limit(b.memory, total.memory, largest.memory)
                .min(w.memory_capacity as f64 * b.max_memory_fill),
            cpu: limit(b.cpu, total.cpu, largest.cpu),
        })
        .collect()
}

/// What a search works on: units (nodes, or clusters of nodes) with their loads, and the
/// weighted adjacency between them.
#[derive(Debug)]
struct Problem {
    units: Vec<Load>,
    adjacency: Vec<Vec<(u32, f64)>>,
}

/// How many passes of label propagation build clusters: most units settle in two or three.
const CLUSTER_PASSES: usize = 4;

impl Problem {
    fn of(graph: &Graph) -> Problem {
        Problem {
            units: graph.nodes.iter().map(Load::of).collect(),
            adjacency: graph
                .adjacency
                .iter()
                .map(|list| {
                    list.iter()
                        .map(|&(other, edge)| (other, graph.edges[edge as usize].weight))
                        .collect()
                })
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.units.len()
    }

    /// Groups the placed units into clusters of tightly connected units, none above `max`, by
    /// label propagation that ignores where units are: each unit joins the cluster it is most
    /// connected to, if that is more than its own and the cluster has room. Returns each unit's
    /// cluster and the problem whose units are the clusters.
    fn coarsen(&self, placed: &[u16], max: &Load) -> (Vec<u32>, Problem) {
        let n = self.len();
        let mut label: Vec<u32> = (0..n as u32).collect();
        let mut size = self.units.clone();
        let mut weight_to = vec![0.0; n];
        let mut touched: Vec<u32> = Vec::new();
        for _ in 0..CLUSTER_PASSES {
            let mut changed = 0;
            for v in 0..n {
                if placed[v] == UNPLACED {
                    continue;
                }
                for &(u, w) in &self.adjacency[v] {
                    if placed[u as usize] == UNPLACED {
                        continue;
                    }
                    let l = label[u as usize];
                    if weight_to[l as usize] == 0.0 {
                        touched.push(l);
                    }
                    weight_to[l as usize] += w;
                }
                let own = label[v];
                let mut best: Option<(f64, u32)> = None;
                for &l in &touched {
                    let w = weight_to[l as usize];
                    let mut grown = size[l as usize];
                    grown.add(&self.units[v]);
                    if l != own
                        && w > weight_to[own as usize]
                        && grown.within(max)
                        && best.is_none_or(|(bw, bl)| w > bw || (w == bw && l < bl))
                    {
                        best = Some((w, l));
                    }
                }
                if let Some((_, l)) = best {
                    size[own as usize].remove(&self.units[v]);
                    size[l as usize].add(&self.units[v]);
                    label[v] = l;
                    changed += 1;
                }
                for l in touched.drain(..) {
                    weight_to[l as usize] = 0.0;
                }
            }
            if changed == 0 {
                break;
            }
        }
        let mut id = vec![u32::MAX; n];
        let mut clusters = 0u32;
        let cluster_of: Vec<u32> = label
            .iter()
            .map(|&l| {
                if id[l as usize] == u32::MAX {
                    id[l as usize] = clusters;
                    clusters += 1;
                }
                id[l as usize]
            })
            .collect();
        let mut units = vec![Load::default(); clusters as usize];
        let mut pairs: Vec<(u32, u32, f64)> = Vec::new();
        for v in 0..n {
            let cv = cluster_of[v];
            units[cv as usize].add(&self.units[v]);
            for &(u, w) in &self.adjacency[v] {
                let cu = cluster_of[u as usize];
                if (u as usize) > v && cu != cv {
                    pairs.push((cv.min(cu), cv.max(cu), w));
                }
            }
        }
        pairs.sort_by_key(|a| (a.0, a.1));
        let mut adjacency = vec![Vec::new(); clusters as usize];
        let mut i = 0;
        while i < pairs.len() {
            let (a, b, mut w) = pairs[i];
            i += 1;
            while i < pairs.len() && (pairs[i].0, pairs[i].1) == (a, b) {
                w += pairs[i].2;
                i += 1;
            }
            adjacency[a as usize].push((b, w));
            adjacency[b as usize].push((a, w));
        }
        (cluster_of, Problem { units, adjacency })
    }
}

/// The worker holding most of each cluster's placed units (ties to the lower index), or
/// [`UNPLACED`] for a cluster with none placed.
fn plurality(cluster_of: &[u32], clusters: usize, assign: &[u16], k: usize) -> Vec<u16> {
    let mut votes = vec![0u32; clusters * k];
    for (v, &w) in assign.iter().enumerate() {
        if w != UNPLACED {
            votes[cluster_of[v] as usize * k + w as usize] += 1;
        }
    }
    votes
        .chunks(k)
        .map(|row| {
            let (w, &count) = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
                .unwrap_or((0, &0));
            if count == 0 { UNPLACED } else { w as u16 }
        })
        .collect()
}

/// A fresh assignment of clusters, grown from the most connected: each cluster, taken in order
/// of its connection to the clusters already assigned (the largest unconnected one when none
/// is), goes to the worker with room where its edges to them cost least, preferring the worker
/// that holds most of it now (`plural`) when costs tie, so that a good assignment is kept.
fn grow(problem: &Problem, matrix: &[f64], limits: &[Load], plural: &[u16]) -> Vec<u16> {
    let (n, k) = (problem.len(), limits.len());
    let mut assign = vec![UNPLACED; n];
    let mut loads = vec![Load::default(); k];
    let mut pull = vec![0.0f64; n];
    let mut heap: BinaryHeap<(u64, u64, Reverse<u32>)> = BinaryHeap::new();
    // Unconnected clusters in order of size, largest first.
    let mut by_size: Vec<u32> = (0..n as u32)
        .filter(|&c| plural[c as usize] != UNPLACED)
        .collect();
    by_size.sort_by(|&a, &b| {
        problem.units[b as usize]
            .count
            .total_cmp(&problem.units[a as usize].count)
            .then(a.cmp(&b))
    });
    let mut next_seed = 0;
    let mut cost = vec![0.0f64; k];
    loop {
        let cluster = loop {
            match heap.pop() {
                Some((bits, _, Reverse(c)))
                    if assign[c as usize] == UNPLACED
                        && f64::from_bits(bits) == pull[c as usize] =>
                {
                    break Some(c);
                }
                Some(_) => continue,
                None => {
                    while next_seed < by_size.len()
                        && assign[by_size[next_seed] as usize] != UNPLACED
                    {
                        next_seed += 1;
                    }
                    break by_size.get(next_seed).copied();
                }
            }
        };
        let Some(cluster) = cluster else { break };
        let c = cluster as usize;
        cost.iter_mut().for_each(|x| *x = 0.0);
        for &(other, weight) in &problem.adjacency[c] {
            let at = assign[other as usize];
            if at != UNPLACED {
                for (w, x) in cost.iter_mut().enumerate() {
                    *x += weight * matrix[w * k + at as usize];
                }
            }
        }
        let unit = problem.units[c];
        let mut best: Option<(f64, bool, usize)> = None;
        for w in 0..k {
            let mut after = loads[w];
            after.add(&unit);
            if !after.within(&limits[w]) {
                continue;
            }
            let home = plural[c] as usize == w;
            let better = match best {
                None => true,
                Some((bc, bh, _)) => cost[w] < bc || (cost[w] == bc && home && !bh),
            };
            if better {
                best = Some((cost[w], home, w));
            }
        }
        // No worker has room: the one with the most room left by count takes it.
        let chosen = best.map(|b| b.2).unwrap_or_else(|| {
            (0..k)
                .max_by(|&a, &b| {
                    (limits[a].count - loads[a].count)
                        .total_cmp(&(limits[b].count - loads[b].count))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0)
        });
        assign[c] = chosen as u16;
        loads[chosen].add(&unit);
        for &(other, weight) in &problem.adjacency[c] {
            let o = other as usize;
            if assign[o] == UNPLACED && plural[o] != UNPLACED {
                pull[o] += weight;
                heap.push((
                    pull[o].to_bits(),
                    problem.units[o].count.to_bits(),
                    Reverse(other),
                ));
            }
        }
    }
    assign
}

/// Which limits a move into a worker must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Every balance limit and the memory fill.
    All,
    /// The memory limits only (relief under memory pressure).
    MemoryOnly,
}

/// A move a unit wishes for, ranked by its gain against the assignment at the start of a round.
#[derive(Debug, Clone, Copy)]
struct Wish {
    unit: u32,
    from: u16,
    to: u16,
    gain: f64,
}

/// The state of one search: the assignment being improved, the loads and the limits.
struct Search<'p> {
    problem: &'p Problem,
    matrix: &'p [f64],
    k: usize,
    original: Vec<u16>,
    assign: Vec<u16>,
    loads: Vec<Load>,
    /// Per worker: the most it may hold after a move into it.
    limits: Vec<Load>,
    /// The cost of `assign`, kept up to date by every move.
    cost: f64,
    /// Units away from their original worker.
    moved: usize,
    opts: Options,
    /// Per unit: the least gain that justifies moving it.
    threshold: Vec<f64>,
    /// Per worker: the weight of the gathered unit's neighbours there.
    scratch: Vec<f64>,
    touched: Vec<u16>,
}

impl<'p> Search<'p> {
    fn new(
        problem: &'p Problem,
        matrix: &'p [f64],
        limits: Vec<Load>,
        current: &[u16],
        opts: Options,
    ) -> Self {
        let k = limits.len();
        let mut loads = vec![Load::default(); k];
        for (unit, &w) in current.iter().enumerate() {
            if w != UNPLACED {
                loads[w as usize].add(&problem.units[unit]);
            }
        }
        let farthest = matrix.iter().fold(0.0, |a: f64, &b| a.max(b));
        let mut search = Search {
            problem,
            matrix,
            k,
            original: current.to_vec(),
            assign: current.to_vec(),
            loads,
            limits,
            cost: 0.0,
            moved: 0,
            threshold: problem
                .adjacency
                .iter()
                .map(|edges| {
                    let strength: f64 = edges.iter().map(|e| e.1).sum();
                    opts.min_gain + opts.min_relative_gain * strength * farthest
                })
                .collect(),
            opts,
            scratch: vec![0.0; k],
            touched: Vec::new(),
        };
        search.cost = search.total_cost();
        search
    }

    fn total_cost(&self) -> f64 {
        let mut total = 0.0;
        for (v, list) in self.problem.adjacency.iter().enumerate() {
            let a = self.assign[v];
            if a == UNPLACED {
                continue;
            }
            for &(u, w) in list {
                let b = self.assign[u as usize];
                if (u as usize) > v && b != UNPLACED {
                    total += w * self.matrix[a as usize * self.k + b as usize];
                }
            }
        }
        total
    }

    /// Fills `scratch`/`touched` with the weight of `unit`'s placed neighbours per worker.
    fn gather(&mut self, unit: u32) {
        for &w in &self.touched {
            self.scratch[w as usize] = 0.0;
        }
        self.touched.clear();
        for &(other, weight) in &self.problem.adjacency[unit as usize] {
            let w = self.assign[other as usize];
            if w == UNPLACED {
                continue;
            }
            if self.scratch[w as usize] == 0.0 {
                self.touched.push(w);
            }
            self.scratch[w as usize] += weight;
        }
    }

    /// The cost of the gathered unit's edges if it sat on `worker`.
    fn cost_at(&self, worker: u16) -> f64 {
        let row = &self.matrix[worker as usize * self.k..][..self.k];
        self.touched
            .iter()
            .map(|&w| self.scratch[w as usize] * row[w as usize])
            .sum()
    }

    /// The exact gain of moving `unit` to `to` now.
    fn gain(&mut self, unit: u32, to: u16) -> f64 {
        self.gather(unit);
        self.cost_at(self.assign[unit as usize]) - self.cost_at(to)
    }

    fn fits(&self, unit: u32, to: u16, fit: Fit) -> bool {
        let mut after = self.loads[to as usize];
        after.add(&self.problem.units[unit as usize]);
        let limit = &self.limits[to as usize];
        match fit {
            Fit::MemoryOnly => after.memory <= limit.memory,
            Fit::All => after.within(limit),
        }
    }

    fn within_limits(&self, worker: u16) -> bool {
        self.loads[worker as usize].within(&self.limits[worker as usize])
    }

    /// Whether the move cap allows `unit` to go to `to`.
    fn may_move(&self, unit: u32, to: u16) -> bool {
        let home = self.original[unit as usize];
        to == home || self.assign[unit as usize] != home || self.moved < self.opts.max_moves
    }

    /// Moves `unit` to `to`, whose gain is `gain`.
    fn apply(&mut self, unit: u32, to: u16, gain: f64) {
        let from = self.assign[unit as usize];
        let home = self.original[unit as usize];
        let weight = self.problem.units[unit as usize];
        self.loads[from as usize].remove(&weight);
        self.loads[to as usize].add(&weight);
        self.moved = self.moved + usize::from(to != home) - usize::from(from != home);
        self.assign[unit as usize] = to;
        self.cost -= gain;
    }

    /// Rounds of balanced label propagation until one gains too little; returns how many ran.
    fn propagate(&mut self) -> u32 {
        let mut rounds = 0;
        while rounds < self.opts.max_rounds {
            rounds += 1;
            let start = self.cost;
            self.round();
            let gained = start - self.cost;
            if gained <= self.opts.min_round_gain * start || gained <= 0.0 {
                break;
            }
        }
        rounds
    }

    /// One round of balanced label propagation.
    fn round(&mut self) {
        let mut wishes = Vec::new();
        for unit in 0..self.problem.len() as u32 {
            let from = self.assign[unit as usize];
            if from == UNPLACED {
                continue;
            }
            self.gather(unit);
            let here = self.cost_at(from);
            let mut best: Option<(f64, u16)> = None;
            for &to in &self.touched {
                if to == from {
                    continue;
                }
                let gain = here - self.cost_at(to);
                if best.is_none_or(|(g, w)| gain > g || (gain == g && to < w)) {
                    best = Some((gain, to));
                }
            }
            if let Some((gain, to)) = best
                && gain > self.threshold[unit as usize]
            {
                wishes.push(Wish {
                    unit,
                    from,
                    to,
                    gain,
                });
            }
        }
        wishes.sort_by(|a, b| b.gain.total_cmp(&a.gain).then(a.unit.cmp(&b.unit)));
        // Wishes that found no room, per ordered pair (from, to), best first.
        let mut waiting: Vec<VecDeque<Wish>> = vec![VecDeque::new(); self.k * self.k];
        for wish in wishes {
            self.take(wish, &mut waiting);
        }
    }

    /// Takes a wish if it still gains and fits; else exchanges it with the best waiting wish in
    /// the opposite direction; else leaves it waiting.
    fn take(&mut self, wish: Wish, waiting: &mut [VecDeque<Wish>]) {
        if self.assign[wish.unit as usize] != wish.from || !self.may_move(wish.unit, wish.to) {
            return;
        }
        let gain = self.gain(wish.unit, wish.to);
        if gain <= self.threshold[wish.unit as usize] {
            return;
        }
        if self.fits(wish.unit, wish.to, Fit::All) {
            self.apply(wish.unit, wish.to, gain);
            self.release(wish.from, waiting);
            return;
        }
        let opposite = &mut waiting[wish.to as usize * self.k + wish.from as usize];
        while let Some(other) = opposite.front().copied() {
            if self.assign[other.unit as usize] != other.from {
                opposite.pop_front();
                continue;
            }
            if self.exchange(wish, gain, other) {
                opposite.pop_front();
                return;
            }
            break;
        }
        waiting[wish.from as usize * self.k + wish.to as usize].push_back(wish);
    }

    /// Moves `a` and `b` (in opposite directions) together if the pair gains and keeps the
    /// limits of both workers and the move cap.
    fn exchange(&mut self, a: Wish, gain_a: f64, b: Wish) -> bool {
        self.apply(a.unit, a.to, gain_a);
        let gain_b = self.gain(b.unit, b.to);
        let needed = self.threshold[a.unit as usize] + self.threshold[b.unit as usize];
        if gain_a + gain_b > needed && self.may_move(b.unit, b.to) {
            self.apply(b.unit, b.to, gain_b);
            if self.within_limits(a.to) && self.within_limits(b.to) {
                return true;
            }
            self.apply(b.unit, b.from, -gain_b);
        }
        self.apply(a.unit, a.from, -gain_a);
        false
    }

    /// A move out of `freed` made room there: takes the waiting wishes into it that now fit.
    fn release(&mut self, freed: u16, waiting: &mut [VecDeque<Wish>]) {
        let mut stack = vec![freed];
        while let Some(worker) = stack.pop() {
            for from in 0..self.k {
                let queue = from * self.k + worker as usize;
                while let Some(wish) = waiting[queue].front().copied() {
                    if self.assign[wish.unit as usize] != wish.from
                        || !self.may_move(wish.unit, wish.to)
                    {
                        waiting[queue].pop_front();
                        continue;
                    }
                    if !self.fits(wish.unit, wish.to, Fit::All) {
                        break;
                    }
                    waiting[queue].pop_front();
                    let gain = self.gain(wish.unit, wish.to);
                    if gain > self.threshold[wish.unit as usize] {
                        self.apply(wish.unit, wish.to, gain);
                        stack.push(wish.from);
                    }
                }
            }
        }
    }

    /// Moves whole groups of units to the workers `target` gives them, best gain per unit moved
    /// first, each group only if it gains and the receiving workers stay within their limits.
    /// A group that does not fit yet is tried again after others made room.
    fn adopt(&mut self, target: &[u16], group_of: &[u32], groups: usize) {
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); groups];
        for (unit, &to) in target.iter().enumerate() {
            if self.assign[unit] != UNPLACED && to != UNPLACED && self.assign[unit] != to {
                members[group_of[unit] as usize].push(unit as u32);
            }
        }
        // The target keeps the limits as a whole, where moving its groups one after the other
        // may be blocked by full workers: take it at once when the move cap allows.
        let all: Vec<u32> = members.iter().flatten().copied().collect();
        if self.try_group(&all, target, true).is_some() {
            return;
        }
        let mut pending: Vec<usize> = (0..groups).filter(|&g| !members[g].is_empty()).collect();
        loop {
            // Rank by the gain each group would bring now, per unit it moves.
            let mut ranked: Vec<(f64, usize)> = Vec::new();
            for &g in &pending {
                if let Some(gain) = self.try_group(&members[g], target, false) {
                    ranked.push((gain / members[g].len() as f64, g));
                }
            }
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut progress = false;
            let mut later = Vec::new();
            for (per_unit, g) in ranked {
                if per_unit <= 0.0 {
                    continue;
                }
                match self.try_group(&members[g], target, true) {
                    Some(_) => progress = true,
                    None => later.push(g),
                }
            }
            later.sort_unstable();
            pending = later;
            if !progress || pending.is_empty() {
                break;
            }
        }
    }

    /// Moves `members` to their targets. With `keep`, keeps the moves if they gain, fit and keep
    /// the cap, and returns the gain if kept. Without, undoes them and returns the gain they
    /// would bring (to rank groups), or `None` if there is nothing to move.
    fn try_group(&mut self, members: &[u32], target: &[u16], keep: bool) -> Option<f64> {
        let mut done: Vec<(u32, u16, f64)> = Vec::with_capacity(members.len());
        let mut gain = 0.0;
        for &unit in members {
            let (from, to) = (self.assign[unit as usize], target[unit as usize]);
            if from == to {
                continue;
            }
            let g = self.gain(unit, to);
            self.apply(unit, to, g);
            gain += g;
            done.push((unit, from, g));
        }
        let fits = done
            .iter()
            .all(|&(unit, _, _)| self.within_limits(self.assign[unit as usize]))
            && self.moved <= self.opts.max_moves;
        let needed: f64 = done.iter().map(|d| self.threshold[d.0 as usize]).sum();
        let accept = keep && fits && gain > needed;
        if !accept {
            for &(unit, from, g) in done.iter().rev() {
                self.apply(unit, from, -g);
            }
        }
        if keep {
            accept.then_some(gain)
        } else {
            (!done.is_empty()).then_some(gain)
        }
    }

    /// Brings every worker that starts above a limit under it, where other workers have room.
    fn rebalance(&mut self) {
        for w in 0..self.k as u16 {
            let limit = self.limits[w as usize];
            if self.loads[w as usize].count > limit.count {
                self.shed(w, Fit::All, |l| l.count > limit.count, |u| u.count);
            }
            if self.loads[w as usize].memory > limit.memory {
                self.shed(w, Fit::All, |l| l.memory > limit.memory, |u| u.memory);
            }
            if self.loads[w as usize].cpu > limit.cpu {
                self.shed(w, Fit::All, |l| l.cpu > limit.cpu, |u| u.cpu);
            }
        }
    }

    /// Moves units off `worker` while `over` holds of its load, least cost increase per unit of
    /// `amount` first; returns the amount moved.
    fn shed(
        &mut self,
        worker: u16,
        fit: Fit,
        over: impl Fn(&Load) -> bool,
        amount: impl Fn(&Load) -> f64,
    ) -> f64 {
        let mut ranked: Vec<(f64, u32)> = Vec::new();
        for unit in 0..self.problem.len() as u32 {
            if self.assign[unit as usize] != worker {
                continue;
            }
            let size = amount(&self.problem.units[unit as usize]);
            if size <= 0.0 {
                continue;
            }
            if let Some((loss, _)) = self.cheapest_destination(unit, fit) {
                ranked.push((loss / size, unit));
            }
        }
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut moved = 0.0;
        for (_, unit) in ranked {
            if !over(&self.loads[worker as usize]) {
                break;
            }
            // The ranking is from the start; where to go is decided against the loads now.
            if let Some((loss, to)) = self.cheapest_destination(unit, fit)
                && self.may_move(unit, to)
            {
                self.apply(unit, to, -loss);
                moved += amount(&self.problem.units[unit as usize]);
            }
        }
        moved
    }

    /// The worker (other than its own) where `unit` fits and costs least, and the cost increase.
    fn cheapest_destination(&mut self, unit: u32, fit: Fit) -> Option<(f64, u16)> {
        self.gather(unit);
        let from = self.assign[unit as usize];
        let here = self.cost_at(from);
        let mut best: Option<(f64, u16)> = None;
        for to in 0..self.k as u16 {
            if to == from || !self.fits(unit, to, fit) {
                continue;
            }
            let loss = self.cost_at(to) - here;
            if best.is_none_or(|(l, _)| loss < l) {
                best = Some((loss, to));
            }
        }
        best
    }

    fn moves(&self) -> Vec<Move> {
        self.assign
            .iter()
            .zip(&self.original)
            .enumerate()
            .filter(|(_, (now, before))| now != before)
            .map(|(node, (&to, &from))| Move {
                node: node as u32,
                from,
                to,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::placement::topology::Distance;

    use super::*;

    /// splitmix64: a seeded generator for test graphs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn flat_workers(k: usize) -> Vec<WorkerSlot> {
        (0..k)
            .map(|_| WorkerSlot::new(Place::unknown(), 1 << 40))
            .collect()
    }

    /// `groups` communities of `size` nodes: heavy edges inside (a ring plus chords), one light
    /// edge from each community to the next. Returns the graph and each node's community.
    fn communities(groups: u32, size: u32, seed: u64) -> (Graph, Vec<u32>) {
        let mut rng = Rng(seed);
        let mut graph = Graph::new();
        let mut community = Vec::new();
        for g in 0..groups {
            for _ in 0..size {
                graph.add_node(1000, 1.0);
                community.push(g);
            }
        }
        for g in 0..groups {
            let base = g * size;
            for i in 0..size {
                graph
                    .add_edge(base + i, base + (i + 1) % size, 10.0)
                    .unwrap();
                let j = rng.below(size as u64) as u32;
                graph.add_edge(base + i, base + j, 10.0).unwrap();
            }
            let next = ((g + 1) % groups) * size;
            graph.add_edge(base, next + 1, 1.0).unwrap();
        }
        (graph, community)
    }

    fn round_robin(n: usize, k: usize) -> Vec<u16> {
        (0..n).map(|i| (i % k) as u16).collect()
    }

    /// The most each worker may hold, as documented on [`Balance`].
    fn documented_limits(
        graph: &Graph,
        workers: &[WorkerSlot],
        assign: &[u16],
        b: &Balance,
    ) -> Vec<Load> {
        let k = workers.len() as f64;
        let placed: Vec<&Node> = assign
            .iter()
            .zip(&graph.nodes)
            .filter(|(w, _)| **w != UNPLACED)
            .map(|(_, n)| n)
            .collect();
        let n = placed.len() as f64;
        let memory: f64 = placed.iter().map(|x| x.memory as f64).sum();
        let cpu: f64 = placed.iter().map(|x| x.cpu).sum();
        let big_memory = placed.iter().map(|x| x.memory as f64).fold(0.0, f64::max);
        let big_cpu = placed.iter().map(|x| x.cpu).fold(0.0, f64::max);
        let lim = |sum: f64, item: f64| ((1.0 + b.max_imbalance) * sum / k).max(sum / k + item);
        workers
            .iter()
            .map(|w| Load {
                count: lim(n, 1.0),
                memory: lim(memory, big_memory).min(w.memory_capacity as f64 * b.max_memory_fill),
                cpu: lim(cpu, big_cpu),
            })
            .collect()
    }

    fn loads_of(graph: &Graph, k: usize, assign: &[u16]) -> Vec<Load> {
        let mut loads = vec![Load::default(); k];
        for (node, &w) in assign.iter().enumerate() {
            if w != UNPLACED {
                loads[w as usize].add(&Load::of(&graph.nodes[node]));
            }
        }
        loads
    }

    #[test]
    fn it_merges_duplicate_edges_and_ignores_loops() {
        let mut graph = Graph::new();
        let (a, b) = (graph.add_node(1, 1.0), graph.add_node(1, 1.0));
        graph.add_edge(a, b, 2.0).unwrap();
        graph.add_edge(b, a, 3.0).unwrap();
        graph.add_edge(a, a, 5.0).unwrap();
        graph.add_edge(a, b, f64::NAN).unwrap();
        assert_eq!(graph.edges(), &[Edge { a, b, weight: 5.0 }]);
        assert_eq!(graph.total_weight(), 5.0);
        assert_eq!(
            graph.add_edge(a, 7, 1.0),
            Err(PartitionError::UnknownNode { node: 7, nodes: 2 })
        );
    }

    #[test]
    fn it_refuses_an_assignment_that_does_not_match_the_graph() {
        let (graph, _) = communities(2, 4, 1);
        let workers = flat_workers(2);
        let opts = Options::default();
        assert_eq!(
            repartition(&graph, &workers, &[0; 3], &opts),
            Err(PartitionError::AssignmentLength { got: 3, nodes: 8 })
        );
        let mut bad = round_robin(8, 2);
        bad[5] = 2;
        assert_eq!(
            repartition(&graph, &workers, &bad, &opts),
            Err(PartitionError::UnknownWorker {
                node: 5,
                worker: 2,
                workers: 2
            })
        );
        assert_eq!(
            repartition(&graph, &[], &round_robin(8, 2), &opts),
            Err(PartitionError::NoWorkers)
        );
    }

    #[test]
    fn it_recovers_planted_communities() {
        let (graph, community) = communities(8, 16, 7);
        let workers = flat_workers(4);
        let current = round_robin(graph.node_count(), 4);
        let opts = Options {
            costs: Costs::flat(),
            max_rounds: 30,
            ..Options::default()
        };
        let plan = repartition(&graph, &workers, &current, &opts).unwrap();
        // Only the 8 light edges between communities need to cross workers: at most 8 units,
        // against about 3/4 of all the traffic under round robin.
        assert!(plan.cost_before > 1000.0, "{}", plan.cost_before);
        assert!(plan.cost_after <= 8.0, "cost after {}", plan.cost_after);
        for g in 0..8 {
            let mut held: Vec<u16> = (0..graph.node_count())
                .filter(|&n| community[n] == g)
                .map(|n| plan.assignment[n])
                .collect();
            held.dedup();
            assert_eq!(held.len(), 1, "community {g} split over {held:?}");
        }
        let loads = loads_of(&graph, 4, &plan.assignment);
        assert!(loads.iter().all(|l| l.count == 32.0), "{loads:?}");
        assert_eq!(
            plan.cost_after,
            cost(&graph, &workers, &plan.assignment, &opts.costs).unwrap()
        );
    }

    #[test]
    fn it_decides_the_same_plan_for_the_same_input() {
        let (graph, _) = communities(12, 10, 3);
        let workers = flat_workers(5);
        let current = round_robin(graph.node_count(), 5);
        let opts = Options::default();
        let first = repartition(&graph, &workers, &current, &opts).unwrap();
        let second = repartition(&graph, &workers, &current, &opts).unwrap();
        assert!(!first.moves.is_empty());
        assert_eq!(first, second);
    }

    #[test]
    fn it_respects_the_move_cap_and_still_gains() {
        let (graph, _) = communities(8, 16, 11);
        let workers = flat_workers(4);
        let current = round_robin(graph.node_count(), 4);
        let opts = Options {
            max_moves: 5,
            ..Options::default()
        };
        let plan = repartition(&graph, &workers, &current, &opts).unwrap();
        assert_eq!(plan.moves.len(), 5);
        assert!(plan.cost_after < plan.cost_before);
        let moved = current
            .iter()
            .zip(&plan.assignment)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(moved, 5);
    }

    #[test]
    fn it_ignores_gains_below_the_noise_guard() {
        // Node 0 on worker 0 talks to nodes 1 and 2 on worker 1 (weight 1 each) and to node 3
        // on worker 0 (weight 1): moving it gains one remote unit (8) of the 24 its traffic
        // could cost at most.
        let mut graph = Graph::new();
        for _ in 0..6 {
            graph.add_node(1, 1.0);
        }
        for (b, w) in [(1, 1.0), (2, 1.0), (3, 1.0)] {
            graph.add_edge(0, b, w).unwrap();
        }
        // Nodes 1 and 2 are held on worker 1 by node 5.
        graph.add_edge(1, 5, 5.0).unwrap();
        graph.add_edge(2, 5, 5.0).unwrap();
        let workers = flat_workers(2);
        let current = [0, 1, 1, 0, 0, 1];
        let moves = |min_gain: f64, min_relative_gain: f64| {
            let opts = Options {
                min_gain,
                min_relative_gain,
                ..Options::default()
            };
            repartition(&graph, &workers, &current, &opts)
                .unwrap()
                .moves
        };
        let single = vec![Move {
            node: 0,
            from: 0,
            to: 1,
        }];
        assert_eq!(moves(0.0, 0.0), single);
        assert_eq!(moves(7.9, 0.0), single);
        assert!(moves(8.0, 0.0).is_empty());
        assert_eq!(moves(0.0, 0.3), single);
        assert!(moves(0.0, 0.34).is_empty());
    }

    #[test]
    fn it_leaves_a_good_assignment_alone() {
        let (graph, community) = communities(8, 16, 5);
        let workers = flat_workers(4);
        // Neighbouring communities in pairs: only the four light edges between pairs cross, the
        // least any balanced assignment can do.
        let current: Vec<u16> = community.iter().map(|&g| (g / 2) as u16).collect();
        let plan = repartition(&graph, &workers, &current, &Options::default()).unwrap();
        assert!(plan.moves.is_empty(), "{:?}", plan.moves);
        assert_eq!(plan.cost_after, plan.cost_before);
    }

    #[test]
    fn it_keeps_communities_within_a_rack_where_topology_allows() {
        // 2 regions x 2 zones x 2 racks, two workers per rack. Each community is twice what a
        // worker may hold, so it must span two workers; the cheapest pair shares a rack.
        let mut workers = Vec::new();
        for region in ["eu", "us"] {
            for zone in ["a", "b"] {
                for rack in ["r1", "r2"] {
                    for _ in 0..2 {
                        workers.push(WorkerSlot::new(Place::new(region, zone, rack), 1 << 40));
                    }
                }
            }
        }
        let (graph, community) = communities(8, 20, 13);
        let current = round_robin(graph.node_count(), workers.len());
        let opts = Options {
            max_rounds: 40,
            balance: Balance {
                max_imbalance: 0.05,
                ..Balance::default()
            },
            ..Options::default()
        };
        let plan = repartition(&graph, &workers, &current, &opts).unwrap();
        let mut in_one_rack = 0;
        for g in 0..8 {
            let held: Vec<u16> = (0..graph.node_count())
                .filter(|&n| community[n] == g)
                .map(|n| plan.assignment[n])
                .collect();
            let farthest = held
                .iter()
                .map(|&w| {
                    distance(
                        &workers[held[0] as usize].place,
                        &workers[w as usize].place,
                        w == held[0],
                    )
                })
                .max()
                .unwrap();
            if farthest <= Distance::SameRack {
                in_one_rack += 1;
            }
        }
        assert!(
            in_one_rack == 8,
            "only {in_one_rack} of 8 communities within a rack"
        );
        assert!(
            plan.cost_after < 0.15 * plan.cost_before,
            "{} -> {}",
            plan.cost_before,
            plan.cost_after
        );
    }

    #[test]
    fn it_relieves_memory_by_moving_the_least_attached_bytes() {
        // Worker 0 holds a tight pair (heavy edge) of big nodes and two loners of the same size.
        let mut graph = Graph::new();
        let tight: Vec<u32> = (0..2).map(|_| graph.add_node(100, 1.0)).collect();
        let loners: Vec<u32> = (0..2).map(|_| graph.add_node(100, 1.0)).collect();
        let small = graph.add_node(10, 1.0);
        let others: Vec<u32> = (0..4).map(|_| graph.add_node(100, 1.0)).collect();
        graph.add_edge(tight[0], tight[1], 50.0).unwrap();
        graph.add_edge(loners[0], others[0], 1.0).unwrap();
        graph.add_edge(loners[1], others[1], 1.0).unwrap();
        graph.add_edge(small, tight[0], 0.5).unwrap();
        let mut current = vec![0u16; 5];
        current.extend([1, 2, 1, 2]);
        let workers = flat_workers(3);
        let opts = Options::default();
        let relief = relieve(&graph, &workers, &current, 0, 200, &opts).unwrap();
        assert!(relief.freed >= 200, "freed {}", relief.freed);
        let moved: Vec<u32> = relief.moves.iter().map(|m| m.node).collect();
        assert_eq!(moved, loners, "moved {moved:?}");
        // Each loner joins its only neighbour: locality is gained, not lost.
        assert_eq!(relief.locality_lost, -2.0 * Costs::default().remote);
        assert_eq!(relief.assignment[loners[0] as usize], 1);
        assert_eq!(relief.assignment[loners[1] as usize], 2);
    }

    #[test]
    fn it_reports_what_relief_could_not_free() {
        let mut graph = Graph::new();
        for _ in 0..4 {
            graph.add_node(100, 1.0);
        }
        // Worker 1 can take 90 bytes (90 % of 200 minus nothing): one node does not fit.
        let workers = vec![
            WorkerSlot::new(Place::unknown(), 1000),
            WorkerSlot::new(Place::unknown(), 100),
        ];
        let relief = relieve(&graph, &workers, &[0; 4], 0, 300, &Options::default()).unwrap();
        assert_eq!(relief.freed, 0);
        assert!(relief.moves.is_empty());
    }

    #[test]
    fn it_places_a_new_node_with_its_neighbours_unless_their_worker_is_full() {
        let mut graph = Graph::new();
        for _ in 0..12 {
            graph.add_node(1, 1.0);
        }
        let fresh = graph.add_node(1, 1.0);
        graph.add_edge(fresh, 5, 3.0).unwrap();
        let workers = flat_workers(3);
        let mut assignment: Vec<u16> = vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, UNPLACED];
        let opts = Options::default();
        assert_eq!(
            place_new(&graph, &workers, &assignment, fresh, &opts).unwrap(),
            1
        );
        // Node 5 on a worker that is full: the node goes to the emptiest one instead.
        assignment[5] = 2;
        assignment[4] = 2;
        assert_eq!(
            place_new(&graph, &workers, &assignment, fresh, &opts).unwrap(),
            1
        );
        let lone = {
            let mut g = graph.clone();
            let n = g.add_node(1, 1.0);
            let mut a = assignment.clone();
            a.push(UNPLACED);
            place_new(&g, &workers, &a, n, &opts).unwrap()
        };
        assert_eq!(
            lone, 1,
            "a node with no neighbours goes to the least-loaded worker"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_call_keeps_the_balance_limits(
            seed in any::<u64>(),
            n in 8usize..120,
            k in 2usize..7,
            degree in 1u64..6,
            max_moves in 1usize..200,
        ) {
            let mut rng = Rng(seed);
            let mut graph = Graph::new();
            for _ in 0..n {
                graph.add_node(1 + rng.below(1000), (1 + rng.below(10)) as f64);
            }
            for a in 0..n as u32 {
                for _ in 0..degree {
                    let b = rng.below(n as u64) as u32;
                    graph.add_edge(a, b, (1 + rng.below(20)) as f64).unwrap();
                }
            }
            let workers: Vec<WorkerSlot> = (0..k)
                .map(|_| WorkerSlot::new(Place::unknown(), 400 * n as u64))
                .collect();
            // Sometimes balanced, sometimes everything on one worker, some nodes unplaced.
            let current: Vec<u16> = (0..n)
                .map(|i| match seed % 3 {
                    0 => (i % k) as u16,
                    1 if i % 7 == 0 => UNPLACED,
                    1 => rng.below(k as u64) as u16,
                    _ => 0,
                })
                .collect();
            let opts = Options { max_moves, ..Options::default() };
            let limits = documented_limits(&graph, &workers, &current, &opts.balance);
            let before = loads_of(&graph, k, &current);
            let plan = repartition(&graph, &workers, &current, &opts).unwrap();
            let after = loads_of(&graph, k, &plan.assignment);
            for w in 0..k {
                let (l, b, a) = (limits[w], before[w], after[w]);
                prop_assert!(a.count <= l.count.max(b.count), "worker {w}: count {} limit {} before {}", a.count, l.count, b.count);
                prop_assert!(a.memory <= l.memory.max(b.memory) + 1e-6, "worker {w}: memory {} limit {}", a.memory, l.memory);
                prop_assert!(a.cpu <= l.cpu.max(b.cpu) + 1e-6, "worker {w}: cpu {} limit {}", a.cpu, l.cpu);
            }
            prop_assert!(plan.moves.len() <= max_moves);
            prop_assert!(plan.cost_after <= plan.cost_before + 1e-9);
            for m in &plan.moves {
                prop_assert_eq!(current[m.node as usize], m.from);
                prop_assert_eq!(plan.assignment[m.node as usize], m.to);
            }
            prop_assert!(plan.assignment.iter().zip(&current).all(|(a, c)| (*a == UNPLACED) == (*c == UNPLACED)));
            // Starting from everything on one worker, it spreads out to the limits.
            if seed % 3 == 2 && max_moves >= n {
                for w in 0..k {
                    prop_assert!(after[w].count <= limits[w].count);
                }
            }
        }
    }
}
