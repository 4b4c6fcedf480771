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

mod balance;
mod clusters;
mod cost;
mod graph;
mod placer;
mod relief;
mod search;
#[cfg(test)]
mod tests;

use super::topology::Costs;
use balance::balance_limits;
use cost::{assignment_cost, cost_matrix};
use search::{Problem, Search};

pub use balance::{Balance, WorkerSlot};
pub use cost::cost;
pub use graph::{Edge, Graph, Node};
pub use placer::{Placer, place_new};
pub use relief::{Relief, relieve};

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
    /// a move transfers state, which is not worth a negligible gain or one made of noise. For
    /// a single node it shrinks by how strongly the node's neighbours on the destination are
    /// anchored there (the share of their own traffic that stays on their worker, above chance):
    /// a node that started talking to an established group follows it on little evidence of its
    /// own, while one whose samples point at scattered nodes needs all of it.
    pub min_gain: f64,
    /// A move is taken only if it also lowers the cost by more than this fraction of what the
    /// node's traffic costs where it is now (for a group moved together, what the edges it
    /// touches cost, each once). Traffic without structure still shows, in a sample, a worker a
    /// node talks to a little more than its own; requiring a share of its cost keeps such noise
    /// from moving state. Measured against the cost now, not against the farthest distance, so
    /// that traffic within a zone can be gathered as well as traffic across zones.
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
    search.anchor();
    let cost_before = search.cost;
    search.rebalance();
    // Single moves cannot pull a community out of a split where each part holds on to its
    // members, so first clusters move whole: a search over clusters of at most half a worker's
    // share gives each cluster a worker, and the groups that gain move there.
    let mut rounds = clusters::move_clusters(&mut search, &problem, &matrix, limits, current, opts);
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
