//! The search that lowers the cost of an assignment by balanced label propagation: rounds of
//! moves ranked by gain, exchanges of moves that find no room alone, and moves of whole groups.

use std::collections::VecDeque;

use super::balance::Load;
use super::graph::Graph;
use super::{Move, Options, UNPLACED};

/// What a search works on: units (nodes, or clusters of nodes) with their loads, and the
/// weighted adjacency between them.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) units: Vec<Load>,
    pub(super) adjacency: Vec<Vec<(u32, f64)>>,
}

impl Problem {
    pub(super) fn of(graph: &Graph) -> Problem {
        Problem {
            units: graph.nodes().iter().map(Load::of).collect(),
            adjacency: (0..graph.node_count() as u32)
                .map(|node| graph.neighbours(node).collect())
                .collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.units.len()
    }
}

/// Which limits a move into a worker must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fit {
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
pub(super) struct Search<'p> {
    problem: &'p Problem,
    matrix: &'p [f64],
    k: usize,
    original: Vec<u16>,
    pub(super) assign: Vec<u16>,
    pub(super) loads: Vec<Load>,
    /// Per worker: the most it may hold after a move into it.
    limits: Vec<Load>,
    /// The cost of `assign`, kept up to date by every move.
    pub(super) cost: f64,
    /// Units away from their original worker.
    moved: usize,
    opts: Options,
    /// Per worker: the weight of the gathered unit's neighbours there.
    scratch: Vec<f64>,
    touched: Vec<u16>,
    /// Per unit, once [`anchor`](Self::anchor) ran: the share of its traffic (by weight) with
    /// placed units that stays on its own worker (0 for a unit unplaced or without placed
    /// neighbours). All 0 otherwise, which leaves [`Options::min_gain`] whole.
    locality: Vec<f64>,
}

impl<'p> Search<'p> {
    pub(super) fn new(
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
            opts,
            scratch: vec![0.0; k],
            touched: Vec::new(),
            locality: vec![0.0; problem.len()],
        };
        search.cost = search.total_cost();
        search
    }

    /// Lets a single unit's neighbours vouch for its moves (see [`needed`](Self::needed)), from
    /// each unit's locality in the assignment as it is now. Only for a search over nodes: the
    /// neighbours of a cluster are other clusters, whose locality says nothing about where a
    /// group sits, and in the four-process run anchoring the cluster search left more rings
    /// split (a median of 2.2 % of hops across workers in nine runs, against 0.8 %).
    pub(super) fn anchor(&mut self) {
        self.locality = (0..self.problem.len())
            .map(|v| {
                let at = self.assign[v];
                if at == UNPLACED {
                    return 0.0;
                }
                let (mut local, mut total) = (0.0, 0.0);
                for &(u, w) in &self.problem.adjacency[v] {
                    let b = self.assign[u as usize];
                    if b != UNPLACED {
                        total += w;
                        local += if b == at { w } else { 0.0 };
                    }
                }
                if total == 0.0 { 0.0 } else { local / total }
            })
            .collect();
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

    /// The least gain that justifies moving `unit`, whose edges cost `here` where it is now, to
    /// `to`: [`Options::min_gain`], less the share of it that the unit's neighbours on `to`
    /// vouch for, and [`Options::min_relative_gain`] of `here`.
    ///
    /// The absolute guard is there because a few samples of traffic without structure can point
    /// anywhere. Neighbours anchored on `to` (most of their own traffic stays there) are evidence
    /// of their own that a group sits there, so the unit's own samples need not carry it all.
    /// Their anchoring is their mean locality (weighted by the unit's traffic with each) above
    /// the `1/k` that traffic without structure keeps on its worker, scaled to 0..1; the guard
    /// shrinks by that share. Neighbours scattered without structure are local no more than
    /// chance and leave the guard whole (the mean is taken before chance is subtracted, so that
    /// their noise cancels rather than adds up).
    fn needed(&self, unit: u32, to: u16, here: f64) -> f64 {
        let (mut weight, mut local) = (0.0, 0.0);
        for &(other, w) in &self.problem.adjacency[unit as usize] {
            if self.assign[other as usize] == to {
                weight += w;
                local += w * self.locality[other as usize];
            }
        }
        let chance = 1.0 / self.k as f64;
        let anchoring = if weight > 0.0 && self.k > 1 {
            ((local / weight - chance) / (1.0 - chance)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.opts.min_gain * (1.0 - anchoring) + self.opts.min_relative_gain * here
    }

    /// [`needed`](Self::needed) for moving `unit` from where it is now to `to`.
    fn needed_for(&mut self, unit: u32, to: u16) -> f64 {
        self.gather(unit);
        let here = self.cost_at(self.assign[unit as usize]);
        self.needed(unit, to, here)
    }

    /// The least gain that justifies moving `members` together: [`Options::min_gain`] per
    /// member (whole: a group carries its own evidence), and [`Options::min_relative_gain`] of
    /// what the edges they touch cost now, each edge once (an edge between two members is one
    /// message stream, not two).
    fn needed_for_group(&self, members: &[u32]) -> f64 {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        let mut here = 0.0;
        for &unit in members {
            let a = self.assign[unit as usize];
            for &(other, weight) in &self.problem.adjacency[unit as usize] {
                let b = self.assign[other as usize];
                if b == UNPLACED || (other < unit && sorted.binary_search(&other).is_ok()) {
                    continue;
                }
                here += weight * self.matrix[a as usize * self.k + b as usize];
            }
        }
        self.opts.min_gain * members.len() as f64 + self.opts.min_relative_gain * here
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
    pub(super) fn propagate(&mut self) -> u32 {
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
                && gain > self.needed(unit, to, here)
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
        let needed = self.needed_for(wish.unit, wish.to);
        let gain = self.gain(wish.unit, wish.to);
        if gain <= needed {
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
            if self.exchange(wish, gain, needed, other) {
                opposite.pop_front();
                return;
            }
            break;
        }
        waiting[wish.from as usize * self.k + wish.to as usize].push_back(wish);
    }

    /// Moves `a` and `b` (in opposite directions) together if the pair gains and keeps the
    /// limits of both workers and the move cap.
    /// `needed_a` is what `a` alone must gain; `b` must gain its own share on top.
    fn exchange(&mut self, a: Wish, gain_a: f64, needed_a: f64, b: Wish) -> bool {
        let needed = needed_a + self.needed_for(b.unit, b.to);
        self.apply(a.unit, a.to, gain_a);
        let gain_b = self.gain(b.unit, b.to);
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
                    let needed = self.needed_for(wish.unit, wish.to);
                    let gain = self.gain(wish.unit, wish.to);
                    if gain > needed {
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
    pub(super) fn adopt(&mut self, target: &[u16], group_of: &[u32], groups: usize) {
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
        let moving: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&u| self.assign[u as usize] != target[u as usize])
            .collect();
        let needed = self.needed_for_group(&moving);
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
    pub(super) fn rebalance(&mut self) {
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
    pub(super) fn shed(
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

    pub(super) fn moves(&self) -> Vec<Move> {
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
