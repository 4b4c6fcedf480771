//! The cluster level of the search: tightly connected nodes are grouped into clusters, the
//! clusters get workers afresh, and each cluster's members move there together.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::balance::Load;
use super::search::{Problem, Search};
use super::{Options, UNPLACED};

/// How many passes of label propagation build clusters: most units settle in two or three.
const CLUSTER_PASSES: usize = 4;

impl Problem {
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

/// The cluster level of [`repartition`](super::repartition): groups the units of `problem` into
/// clusters of at most half a worker's share, gives the clusters workers afresh, and moves each
/// cluster's members there together where the group gains. Returns the rounds run over clusters.
pub(super) fn move_clusters(
    search: &mut Search<'_>,
    problem: &Problem,
    matrix: &[f64],
    limits: Vec<Load>,
    current: &[u16],
    opts: &Options,
) -> u32 {
    let k = limits.len();
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
        let grown = grow(&coarse, matrix, &limits, &plural);
        let coarse_opts = Options {
            max_moves: usize::MAX,
            ..*opts
        };
        let mut clusters = Search::new(&coarse, matrix, limits, &grown, coarse_opts);
        clusters.rebalance();
        rounds += clusters.propagate();
        let target: Vec<u16> = cluster_of
            .iter()
            .map(|&c| clusters.assign[c as usize])
            .collect();
        search.adopt(&target, &cluster_of, coarse.len());
    }
    rounds
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
