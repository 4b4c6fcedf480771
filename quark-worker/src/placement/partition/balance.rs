//! What a worker may hold: its memory capacity, the balance constraints on node count, memory and
//! CPU, and the per-worker limits they give for the state placed now.

use crate::placement::topology::Place;

use super::UNPLACED;
use super::graph::Node;

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

/// What a node or a cluster of nodes weighs on a worker; also a worker's load and its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Load {
    pub(super) count: f64,
    pub(super) memory: f64,
    pub(super) cpu: f64,
}

impl Load {
    pub(super) fn of(node: &Node) -> Load {
        Load {
            count: 1.0,
            memory: node.memory as f64,
            cpu: node.cpu,
        }
    }

    pub(super) fn add(&mut self, other: &Load) {
        self.count += other.count;
        self.memory += other.memory;
        self.cpu += other.cpu;
    }

    pub(super) fn remove(&mut self, other: &Load) {
        self.count -= other.count;
        self.memory -= other.memory;
        self.cpu -= other.cpu;
    }

    pub(super) fn within(&self, limit: &Load) -> bool {
        // CPU weights are fractional: a relative tolerance keeps rounding from refusing a move.
        self.count <= limit.count
            && self.memory <= limit.memory
            && self.cpu <= limit.cpu + 1e-9 * limit.cpu.abs()
    }
}

/// The limits of every worker, as documented on [`Balance`], for the placed nodes of `units`.
pub(super) fn balance_limits(
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
