//! The cost of an assignment: the traffic of each edge times the cost of the distance between
//! the workers of its two nodes.

use crate::placement::topology::{Costs, distance};

use super::balance::WorkerSlot;
use super::graph::Graph;
use super::{Result, UNPLACED, validate};

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

/// `matrix[a * k + b]`: the cost of a unit between workers `a` and `b`.
pub(super) fn cost_matrix(workers: &[WorkerSlot], costs: &Costs) -> Vec<f64> {
    let k = workers.len();
    let mut matrix = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            matrix[a * k + b] = costs.of(distance(&workers[a].place, &workers[b].place, a == b));
        }
    }
    matrix
}

pub(super) fn assignment_cost(graph: &Graph, matrix: &[f64], k: usize, assignment: &[u16]) -> f64 {
    graph
        .edges()
        .iter()
        .filter_map(|e| {
            let (a, b) = (assignment[e.a as usize], assignment[e.b as usize]);
            (a != UNPLACED && b != UNPLACED).then(|| e.weight * matrix[a as usize * k + b as usize])
        })
        .sum()
}
