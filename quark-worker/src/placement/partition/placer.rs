//! Streaming placement: a node that is not placed yet goes next to its neighbours, unless their
//! worker is much fuller than the others (the Fennel heuristic).

use super::balance::{Balance, Load, WorkerSlot};
use super::cost::cost_matrix;
use super::graph::Graph;
use super::{Options, Result, UNPLACED, validate};

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
                loads[w as usize].add(&Load::of(&graph.nodes()[node]));
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
        let weight = graph.nodes()[node as usize];
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
            (graph.total_weight().max(1.0) * self.mean_cost.max(1e-9)) * k.sqrt() / n.powf(1.5);
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
            load.remove(&Load::of(&graph.nodes()[node as usize]));
        }
        Ok(())
    }
}
