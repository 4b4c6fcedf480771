//! Memory relief: moves state off a worker whose memory is too high, losing as little locality
//! per byte freed as possible, and says how much is left for the caller to evict.

use super::balance::{WorkerSlot, balance_limits};
use super::cost::cost_matrix;
use super::graph::Graph;
use super::search::{Fit, Problem, Search};
use super::{Move, Options, PartitionError, Result, validate};

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

/// Moves nodes off `worker` until `bytes` of memory are freed or nothing more can move, choosing
/// first the nodes whose move loses the least locality per byte freed (moves that gain
/// locality come first of all). A node goes to the worker where it costs least among those with
/// room under the memory limits; node counts and CPU are not balanced here (the next
/// [`repartition`](super::repartition) restores them). What cannot be freed by moves is
/// `bytes - freed`.
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
