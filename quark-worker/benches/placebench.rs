//! PlaceBench: a deterministic simulation that compares placement policies.
//!
//! One process, a virtual clock of ticks, seeded random numbers. Each workload (see
//! [`workload::Kind`]) creates instances over the first quarter of the run and has every live
//! instance send one message per tick. Every policy sees the same messages and arrivals; the ones
//! that move state learn only what workers could see (a sampled, decayed, bounded sketch of
//! message pairs per worker, merged at each repartition). The figures are measured over the
//! last quarter of the run and against an offline reference partition of the true traffic.
//!
//! `cargo bench -p quark-worker --bench placebench -- [--quick] [--out DIR] [--seed N]`
//! (`--quick`: 10,000 instances, k = 4 and 8; otherwise 100,000 instances, k = 4, 8, 16).
#![allow(clippy::disallowed_methods)] // a benchmark reports its own wall-clock time

#[path = "placebench/args.rs"]
mod args;
#[path = "placebench/policy.rs"]
mod policy;
#[path = "placebench/svg.rs"]
mod svg;
#[path = "placebench/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::time::Instant;

use quark_worker::placement::partition::{Graph, Options, UNPLACED, WorkerSlot, repartition};
use quark_worker::placement::topology::{Costs, Place, distance};

use args::{Args, parse_args};
use policy::{BYTES_PER_MESSAGE, Policy, PolicyKind};
use svg::Series;
use workload::{Kind, RESHUFFLE_EVERY, Rng, Workload};

/// Ticks per run, ticks between repartition calls.
const TICKS: u32 = 40;
const PERIOD: u32 = 4;
/// Each worker's sketch keeps at least this many pairs per instance it could hold.
const SKETCH_PAIRS_PER_INSTANCE: usize = 2;
/// Restarts of the offline reference.
const REFERENCE_RESTARTS: u64 = 3;

/// One policy's figures in one run.
struct Outcome {
    policy: PolicyKind,
    cross_messages: f64,
    cross_bytes: f64,
    /// Topology-weighted cost per message.
    cost: f64,
    imbalance_count: f64,
    imbalance_memory: f64,
    /// Repartition calls until every later period's cost is within 5 % of the final one.
    calls_to_converge: usize,
    moves_per_call: f64,
    oom_events: u32,
    relief_bytes: u64,
    evicted_bytes: u64,
    /// Cost per message in each period.
    period_costs: Vec<f64>,
    /// Memory per worker after each tick, as a fraction of capacity (ramp and leak).
    memory_trace: Vec<Vec<f64>>,
}

/// The offline reference's figures.
struct Reference {
    cross_messages: f64,
    cost: f64,
}

struct Run {
    kind: Kind,
    k: usize,
    outcomes: Vec<Outcome>,
    reference: Reference,
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

fn workers_for(kind: Kind, k: usize, capacity: u64) -> Vec<WorkerSlot> {
    if kind == Kind::Topology {
        let mut workers = Vec::new();
        for region in ["eu", "us"] {
            for zone in ["a", "b"] {
                for rack in ["r1", "r2"] {
                    workers.push(WorkerSlot::new(Place::new(region, zone, rack), capacity));
                }
            }
        }
        workers.truncate(k);
        workers
    } else {
        (0..k)
            .map(|_| WorkerSlot::new(Place::unknown(), capacity))
            .collect()
    }
}

fn cost_matrix(workers: &[WorkerSlot], costs: &Costs) -> Vec<f64> {
    let k = workers.len();
    let mut m = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            m[a * k + b] = costs.of(distance(&workers[a].place, &workers[b].place, a == b));
        }
    }
    m
}

#[derive(Default, Clone, Copy)]
struct Tally {
    messages: f64,
    bytes: f64,
    cross_messages: f64,
    cross_bytes: f64,
    cost: f64,
}

fn run(kind: Kind, n: usize, k: usize, args: &Args) -> Run {
    let seed = args.seed;
    let mut workload = Workload::new(kind, n, k, TICKS, seed);
    let workers = workers_for(kind, k, workload.capacity);
    let costs = Costs::default();
    let matrix = cost_matrix(&workers, &costs);
    let budget = SKETCH_PAIRS_PER_INSTANCE * n / k;
    let mut policies: Vec<Policy> = PolicyKind::ALL
        .iter()
        .map(|&p| Policy::new(p, n, k, budget, seed))
        .collect();
    for p in &mut policies {
        p.opts.min_gain = args.min_gain;
        p.opts.min_relative_gain = args.min_relative_gain;
    }
    let mut arrivals: Vec<Vec<u32>> = vec![Vec::new(); TICKS as usize];
    for id in 0..n as u32 {
        arrivals[workload.arrive[id as usize] as usize].push(id);
    }
    let mut arrived = vec![false; n];
    let mut live: Vec<u32> = Vec::new();
    let mut rng = Rng::new(seed ^ 0xBEEF);
    let window_start = TICKS - TICKS / 4;
    let mut window = vec![Tally::default(); policies.len()];
    let mut period = vec![Tally::default(); policies.len()];
    let mut period_costs: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    let mut traces: Vec<Vec<Vec<f64>>> = vec![Vec::new(); policies.len()];
    // The true traffic of the window: (messages, weight) per pair.
    let mut truth: Map<u64, (f64, f64)> = Map::default();
    for tick in 0..TICKS {
        workload.evolve(tick, &mut rng);
        for &id in &arrivals[tick as usize] {
            arrived[id as usize] = true;
            live.push(id);
            for p in &mut policies {
                p.arrive(id, workload.creator[id as usize], &workers);
            }
        }
        for &sender in &live {
            let (to, bytes) = workload.message(sender, &mut rng);
            if !arrived[to as usize] || to == sender {
                continue;
            }
            let weight = 1.0 + f64::from(bytes) / BYTES_PER_MESSAGE;
            let sampled = rng.below(args.sample_one_in) == 0;
            let in_window = tick >= window_start;
            if in_window {
                let key = (u64::from(sender.min(to)) << 32) | u64::from(sender.max(to));
                let e = truth.entry(key).or_insert((0.0, 0.0));
                e.0 += 1.0;
                e.1 += weight;
            }
            for (i, p) in policies.iter_mut().enumerate() {
                p.touch(sender);
                p.touch(to);
                let (a, b) = (p.assign[sender as usize], p.assign[to as usize]);
                let cross = a != b;
                let c = weight * matrix[a as usize * k + b as usize];
                for t in [&mut period[i]]
                    .into_iter()
                    .chain(in_window.then_some(&mut window[i]))
                {
                    t.messages += 1.0;
                    t.bytes += f64::from(bytes);
                    if cross {
                        t.cross_messages += 1.0;
                        t.cross_bytes += f64::from(bytes);
                    }
                    t.cost += c;
                }
                if sampled && let Some(sketch) = &mut p.sketch {
                    sketch.record(b, sender, to, weight);
                }
            }
        }
        for (i, p) in policies.iter_mut().enumerate() {
            p.govern(&workload, &workers, tick);
            if kind.memory_bound() {
                let mut memory = vec![0.0; k];
                for id in 0..n {
                    if p.warm[id] {
                        memory[p.assign[id] as usize] += workload.memory(id as u32, tick) as f64;
                    }
                }
                traces[i].push(
                    memory
                        .iter()
                        .map(|m| m / workload.capacity as f64)
                        .collect(),
                );
            }
        }
        if (tick + 1) % PERIOD == 0 {
            for (i, p) in policies.iter_mut().enumerate() {
                period_costs[i].push(period[i].cost / period[i].messages.max(1.0));
                period[i] = Tally::default();
                if tick + 1 < TICKS {
                    p.repartition(&workload, &workers, tick, args.decay);
                }
            }
        }
    }
    let outcomes = policies
        .iter()
        .zip(window)
        .zip(period_costs)
        .zip(traces)
        .map(|(((p, w), costs), trace)| outcome(p, &w, costs, trace, &workload, k))
        .collect();
    let reference = reference(&truth, &workers, n, &costs, seed);
    Run {
        kind,
        k,
        outcomes,
        reference,
    }
}

fn outcome(
    p: &Policy,
    w: &Tally,
    period_costs: Vec<f64>,
    memory_trace: Vec<Vec<f64>>,
    workload: &Workload,
    k: usize,
) -> Outcome {
    let mut count = vec![0.0; k];
    let mut memory = vec![0.0; k];
    for id in 0..workload.n {
        if p.warm[id] && p.assign[id] != UNPLACED {
            count[p.assign[id] as usize] += 1.0;
            memory[p.assign[id] as usize] += workload.memory(id as u32, TICKS) as f64;
        }
    }
    let ratio = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().fold(0.0, |a: f64, b| a.max(*b)) / mean.max(1e-9)
    };
    let last = period_costs.len().saturating_sub(2);
    let tail = &period_costs[last..];
    let fin = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    // Settled: within 5 % of the final cost either way. A cost that only rises (traffic that
    // keeps changing while the policy does not follow) has not settled either.
    let settled = (0..period_costs.len())
        .find(|&p| {
            period_costs[p..]
                .iter()
                .all(|&c| (c - fin).abs() <= 0.05 * fin)
        })
        .unwrap_or(period_costs.len());
    // Period p is measured before call p, so `settled` calls came before the settled period.
    let calls = p.moves_per_call.len();
    Outcome {
        policy: p.kind,
        cross_messages: w.cross_messages / w.messages.max(1.0),
        cross_bytes: w.cross_bytes / w.bytes.max(1.0),
        cost: w.cost / w.messages.max(1.0),
        imbalance_count: ratio(&count),
        imbalance_memory: ratio(&memory),
        calls_to_converge: settled,
        moves_per_call: if calls == 0 {
            0.0
        } else {
            p.moves_per_call.iter().sum::<usize>() as f64 / calls as f64
        },
        oom_events: p.oom_events,
        relief_bytes: p.relief_bytes,
        evicted_bytes: p.evicted_bytes,
        period_costs,
        memory_trace,
    }
}

/// The offline reference: Quark's repartitioner on the whole true traffic graph of the window,
/// from several random balanced starts, with no move cap and many rounds; the best is kept.
fn reference(
    truth: &Map<u64, (f64, f64)>,
    workers: &[WorkerSlot],
    n: usize,
    costs: &Costs,
    seed: u64,
) -> Reference {
    let k = workers.len();
    let mut pairs: Vec<(u64, (f64, f64))> = truth.iter().map(|(&k, &v)| (k, v)).collect();
    pairs.sort_by_key(|p| p.0);
    let mut graph = Graph::new();
    for _ in 0..n {
        graph.add_node(1, 1.0);
    }
    for &(key, (_, weight)) in &pairs {
        graph
            .add_edge((key >> 32) as u32, key as u32, weight)
            .expect("ids are nodes");
    }
    let roomy: Vec<WorkerSlot> = workers
        .iter()
        .map(|w| WorkerSlot::new(w.place.clone(), u64::MAX / 2))
        .collect();
    let opts = Options {
        costs: *costs,
        max_rounds: 30,
        max_moves: usize::MAX,
        min_gain: 0.0,
        min_round_gain: 0.001,
        ..Options::default()
    };
    let mut best: Option<(f64, Vec<u16>)> = None;
    for restart in 0..REFERENCE_RESTARTS {
        let mut rng = Rng::new(seed ^ (restart + 7).wrapping_mul(0x1234_5678_9ABC));
        let mut perm: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut assign = vec![0u16; n];
        for (slot, &id) in perm.iter().enumerate() {
            assign[id as usize] = (slot % k) as u16;
        }
        for _ in 0..2 {
            let plan = repartition(&graph, &roomy, &assign, &opts).expect("valid input");
            assign = plan.assignment;
        }
        let c = quark_worker::placement::partition::cost(&graph, &roomy, &assign, costs)
            .expect("valid input");
        if best.as_ref().is_none_or(|b| c < b.0) {
            best = Some((c, assign));
        }
    }
    let (_, assign) = best.expect("at least one restart");
    let matrix = cost_matrix(workers, costs);
    let (mut messages, mut cross, mut cost) = (0.0, 0.0, 0.0);
    for &(key, (m, weight)) in &pairs {
        let (a, b) = (assign[(key >> 32) as usize], assign[key as u32 as usize]);
        messages += m;
        if a != b {
            cross += m;
        }
        cost += weight * matrix[a as usize * k + b as usize];
    }
    Reference {
        cross_messages: cross / messages.max(1.0),
        cost: cost / messages.max(1.0),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let (n, ks): (usize, &[usize]) = if args.quick {
        (10_000, &[4, 8])
    } else {
        (100_000, &[4, 8, 16])
    };
    let started = Instant::now();
    let mut runs = Vec::new();
    let ks: Vec<usize> = args.k.map_or_else(|| ks.to_vec(), |k| vec![k]);
    for kind in Kind::ALL {
        if args.workload.is_some_and(|w| w != kind) {
            continue;
        }
        for &k in &ks {
            if kind == Kind::Topology && k != 8 {
                continue;
            }
            let t = Instant::now();
            runs.push(run(kind, n, k, &args));
            let r = runs.last().expect("just pushed");
            let costs: Vec<String> = quark(r)
                .period_costs
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect();
            eprintln!(
                "{:<12} k={k:<2} {:>6.1} s  quark cost per message by period: {}",
                kind.name(),
                t.elapsed().as_secs_f64(),
                costs.join(" ")
            );
        }
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "PlaceBench: {n} instances, {TICKS} ticks, repartition every {PERIOD} ticks, 1 in {} messages sampled, sketches decayed by {} per call, seed {}\n",
        args.sample_one_in, args.decay, args.seed
    );
    let _ = writeln!(
        table,
        "| workload | k | policy | cross msgs % | msgs vs hash % | bytes vs hash % | cost vs hash % | imbalance count | imbalance memory | calls to converge | moves/call | OOM | relief by moves % |"
    );
    let _ = writeln!(
        table,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &runs {
        let hash = &r.outcomes[0];
        for o in &r.outcomes {
            let relief = o.relief_bytes + o.evicted_bytes;
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {} | {} |",
                r.kind.name(),
                r.k,
                o.policy.name(),
                pct(o.cross_messages),
                100.0 * o.cross_messages / hash.cross_messages.max(1e-12),
                100.0 * o.cross_bytes / hash.cross_bytes.max(1e-12),
                100.0 * o.cost / hash.cost.max(1e-12),
                o.imbalance_count,
                o.imbalance_memory,
                if o.policy.learns() {
                    o.calls_to_converge.to_string()
                } else {
                    "-".into()
                },
                o.moves_per_call,
                o.oom_events,
                if relief == 0 {
                    "-".into()
                } else {
                    pct(o.relief_bytes as f64 / relief as f64)
                },
            );
        }
        let _ = writeln!(
            table,
            "| {} | {} | *reference* | {} | {:.0} | | {:.0} | | | | | | |",
            r.kind.name(),
            r.k,
            pct(r.reference.cross_messages),
            100.0 * r.reference.cross_messages / hash.cross_messages.max(1e-12),
            100.0 * r.reference.cost / hash.cost.max(1e-12),
        );
    }
    println!("{table}");
    println!("{}", goals(&runs));
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    if let Some(dir) = &args.out
        && let Err(e) = plots(dir, &runs)
    {
        eprintln!("writing plots to {}: {e}", dir.display());
        std::process::exit(1);
    }
}

fn quark(r: &Run) -> &Outcome {
    &r.outcomes[PolicyKind::ALL
        .iter()
        .position(|p| *p == PolicyKind::Quark)
        .expect("quark runs")]
}

/// The goals, each with the figures that decide it.
fn goals(runs: &[Run]) -> String {
    let mut out = String::from("Goals:\n");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for r in runs {
        let (q, h) = (quark(r), &r.outcomes[0]);
        let msgs = 1.0 - q.cross_messages / h.cross_messages;
        let bytes = 1.0 - q.cross_bytes / h.cross_bytes;
        let cost = 1.0 - q.cost / h.cost;
        let line = match r.kind {
            Kind::Communities | Kind::Reshuffle | Kind::Hubs => format!(
                "{} k={}: {:.0} % fewer cross msgs, {:.0} % fewer bytes, imbalance {:.2}/{:.2} (goal >= 60 % at <= 1.10): {}; converged after {} calls (goal <= 5): {}",
                r.kind.name(),
                r.k,
                100.0 * msgs,
                100.0 * bytes,
                q.imbalance_count,
                q.imbalance_memory,
                verdict(
                    msgs >= 0.6
                        && bytes >= 0.6
                        && q.imbalance_count <= 1.1
                        && q.imbalance_memory <= 1.1
                ),
                q.calls_to_converge,
                if r.kind == Kind::Reshuffle {
                    // Its groups change every few calls: there is nothing to settle on.
                    format!(
                        "not judged (the groups change every {} calls)",
                        f64::from(RESHUFFLE_EVERY) / f64::from(PERIOD)
                    )
                } else {
                    verdict(q.calls_to_converge <= 5).to_string()
                }
            ),
            Kind::Topology => format!(
                "topology k={}: {:.0} % lower topology-weighted cost (goal >= 70 %): {}",
                r.k,
                100.0 * cost,
                verdict(cost >= 0.7)
            ),
            Kind::Control => format!(
                "control k={}: cross msgs {:.1} % of hash's {:.1} % (goal: within a few %): {}; {:.0} moves per call",
                r.k,
                100.0 * q.cross_messages,
                100.0 * h.cross_messages,
                verdict(q.cross_messages <= h.cross_messages * 1.03),
                q.moves_per_call
            ),
            Kind::Ramp | Kind::Leak => {
                let relief = q.relief_bytes + q.evicted_bytes;
                let share = if relief == 0 {
                    "no relief was needed".to_owned()
                } else {
                    format!(
                        "{:.0} % of relief by moves",
                        100.0 * q.relief_bytes as f64 / relief as f64
                    )
                };
                let ok = q.oom_events == 0
                    && (relief == 0 || q.relief_bytes as f64 >= 0.9 * relief as f64);
                format!(
                    "{} k={}: {} OOM events, {share} (goal 0 and >= 90 %): {}",
                    r.kind.name(),
                    r.k,
                    q.oom_events,
                    verdict(ok)
                )
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn plots(dir: &std::path::Path, runs: &[Run]) -> std::io::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let k_shown = if runs.iter().any(|r| r.k == 8) {
        8
    } else {
        runs[0].k
    };
    let shown: Vec<&Run> = runs.iter().filter(|r| r.k == k_shown).collect();
    let categories: Vec<String> = shown.iter().map(|r| r.kind.name().to_owned()).collect();
    let mut series: Vec<Series> = PolicyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| Series {
            name: p.name().to_owned(),
            points: shown
                .iter()
                .enumerate()
                .map(|(c, r)| (c as f64, 100.0 * r.outcomes[i].cross_messages))
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "reference".into(),
        points: shown
            .iter()
            .enumerate()
            .map(|(c, r)| (c as f64, 100.0 * r.reference.cross_messages))
            .collect(),
    });
    std::fs::write(
        dir.join("cross_worker.svg"),
        svg::bars(
            &format!("Cross-worker messages, k = {k_shown} (last quarter of the run)"),
            "% of messages",
            &categories,
            &series,
        ),
    )?;
    for kind in [Kind::Communities, Kind::Reshuffle] {
        if let Some(r) = shown.iter().find(|r| r.kind == kind) {
            let series: Vec<Series> = r
                .outcomes
                .iter()
                .map(|o| Series {
                    name: o.policy.name().to_owned(),
                    points: o
                        .period_costs
                        .iter()
                        .enumerate()
                        .map(|(p, c)| (p as f64, *c))
                        .collect(),
                })
                .collect();
            std::fs::write(
                dir.join(format!("convergence_{}.svg", kind.name())),
                svg::lines(
                    &format!("Cost per message by period, {}, k = {k_shown}", kind.name()),
                    &format!("period ({PERIOD} ticks; a repartition call ends each)"),
                    "topology-weighted cost per message",
                    &series,
                ),
            )?;
        }
    }
    for kind in [Kind::Ramp, Kind::Leak] {
        if let Some(r) = shown.iter().find(|r| r.kind == kind) {
            for o in r.outcomes.iter().filter(|o| {
                matches!(
                    o.policy,
                    PolicyKind::Hash | PolicyKind::Quark | PolicyKind::Orleans
                )
            }) {
                let series: Vec<Series> = (0..r.k)
                    .map(|w| Series {
                        name: format!("worker {w}"),
                        points: o
                            .memory_trace
                            .iter()
                            .enumerate()
                            .map(|(t, m)| (t as f64, 100.0 * m[w]))
                            .collect(),
                    })
                    .collect();
                std::fs::write(
                    dir.join(format!("memory_{}_{}.svg", kind.name(), o.policy.name())),
                    svg::lines(
                        &format!(
                            "Memory per worker, {}, {}, k = {k_shown}",
                            kind.name(),
                            o.policy.name()
                        ),
                        "tick",
                        "% of capacity",
                        &series,
                    ),
                )?;
            }
        }
    }
    Ok(())
}
