use proptest::prelude::*;

use crate::placement::topology::{Costs, Distance, Place, distance};

use super::balance::Load;
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
        .zip(graph.nodes())
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
            loads[w as usize].add(&Load::of(&graph.nodes()[node]));
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
    // on worker 0 (weight 1): moving it gains one remote unit (8) of the 16 its traffic costs
    // now. Nodes 1 and 2 keep 5/6 of their traffic on worker 1, 2/3 of the way from chance (1/2)
    // to all of it: they vouch for two thirds of `min_gain`, so the gain of 8 passes any
    // `min_gain` below 24.
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
    assert_eq!(moves(23.9, 0.0), single);
    assert!(moves(24.1, 0.0).is_empty());
    assert_eq!(moves(0.0, 0.49), single);
    assert!(moves(0.0, 0.5).is_empty());
}

/// A node that talks to a group anchored on another worker follows it on evidence that would
/// not move it towards nodes that are there by chance: the same two edges, the same gain, and
/// only the partners' own traffic differs.
#[test]
fn it_follows_an_anchored_group_on_less_evidence_than_scattered_partners_need() {
    // Node 0 (x) on worker 0 talks to nodes 1 and 2 (y1, y2) on worker 1, weight 2 each: moving
    // it gains 32, and the guard asks for 24 (less what y1 and y2 vouch for) plus half of 32.
    let worker_of_x = |anchored: bool| {
        let mut graph = Graph::new();
        for _ in 0..8 {
            graph.add_node(1, 1.0);
        }
        graph.add_edge(0, 1, 2.0).unwrap();
        graph.add_edge(0, 2, 2.0).unwrap();
        let current: Vec<u16> = if anchored {
            // y1, y2 and node 3 talk among themselves on worker 1: 10/11 of y's traffic stays
            // there. Nodes 4 to 7 are idle.
            graph.add_edge(1, 2, 10.0).unwrap();
            graph.add_edge(1, 3, 10.0).unwrap();
            graph.add_edge(2, 3, 10.0).unwrap();
            vec![0, 1, 1, 1, 0, 0, 1, 0]
        } else {
            // y1 and y2 each talk as much to a node on worker 1 (3 and 6) as to one on worker 0
            // (4 and 5), which are held there by node 7: less than half of y's traffic stays
            // on worker 1, no more than chance.
            graph.add_edge(1, 3, 10.0).unwrap();
            graph.add_edge(1, 4, 10.0).unwrap();
            graph.add_edge(2, 6, 10.0).unwrap();
            graph.add_edge(2, 5, 10.0).unwrap();
            graph.add_edge(4, 7, 30.0).unwrap();
            graph.add_edge(5, 7, 30.0).unwrap();
            vec![0, 1, 1, 1, 0, 0, 1, 0]
        };
        let opts = Options {
            min_gain: 24.0,
            min_relative_gain: 0.5,
            ..Options::default()
        };
        let plan = repartition(&graph, &flat_workers(2), &current, &opts).unwrap();
        plan.assignment[0]
    };
    assert_eq!(
        worker_of_x(true),
        1,
        "x joins the group anchored on worker 1"
    );
    assert_eq!(
        worker_of_x(false),
        0,
        "x stays: its partners are there by chance"
    );
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

/// Rings of eight (each node talks to the next only, as a token passed around), placed at random
/// on four workers of two zones of two racks, with the coordinator's thresholds: every ring ends
/// on one worker. A ring is the sparsest community there is: no node gains by moving alone next
/// to one of its two neighbours, so only the cluster moves can gather it, and a ring's moves
/// within a zone gain at the zone's cost, not the farthest (a threshold measured against the
/// farthest distance left every ring split here).
#[test]
fn rings_placed_at_random_are_gathered_each_on_one_worker() {
    let (rings, size) = (16u32, 8u32);
    let mut graph = Graph::new();
    for _ in 0..rings * size {
        graph.add_node(20_000, 1.0);
    }
    for r in 0..rings {
        for i in 0..size {
            let (a, b) = (r * size + i, r * size + (i + 1) % size);
            graph.add_edge(a, b, 100.0).unwrap();
        }
    }
    let workers: Vec<WorkerSlot> = [("z1", "r1"), ("z1", "r2"), ("z2", "r3"), ("z2", "r4")]
        .iter()
        .map(|(z, r)| WorkerSlot::new(Place::new("eu", *z, *r), 1 << 40))
        .collect();
    let mut rng = Rng(7);
    let current: Vec<u16> = (0..rings * size).map(|_| rng.below(4) as u16).collect();
    let opts = Options {
        min_gain: 24.0,
        min_relative_gain: 0.5,
        max_moves: 1_000,
        ..Options::default()
    };
    let plan = repartition(&graph, &workers, &current, &opts).unwrap();
    let split: Vec<u32> = (0..rings)
        .filter(|r| {
            let w = plan.assignment[(r * size) as usize];
            (0..size).any(|i| plan.assignment[(r * size + i) as usize] != w)
        })
        .collect();
    assert!(
        split.is_empty(),
        "rings left split: {split:?}, plan {plan:?}"
    );
}
