//! The placement coordinator: one worker at a time, under a lease on the `placement` role, reads
//! what every worker published (loads, sketches, warm runs), repartitions each queue's instances
//! among the workers that serve it, and moves instances by moving their affinity.
//!
//! - **Locality**, every [`PlacementConfig::every`]: [`repartition`] lowers the
//!   topology-weighted cost of the traffic in the sketches within the balance constraints.
//! - **Memory**, as soon as a worker publishes a pressure of warning or more (checked every
//!   [`PlacementConfig::check_every`]): [`relieve`] moves its state to workers with room, the
//!   least locality lost per byte first, before its own governor has to evict it. At most once
//!   per [`PlacementConfig::relief_cooldown`] per worker: the worker's published figures lag the
//!   moves (it drops moved runs within a second, and its memory falls when the allocator
//!   returns it).
//!
//! A move is an affinity move, fenced twice: on the coordinator's epoch (a coordinator that lost
//! its lease moves nothing) and on the instance's affinity (compare-and-set: a later turn that
//! ran elsewhere wins). The target claims the instance's next turn first and warms its run by
//! replay; the source stops serving it at once (its claims yield to the affinity) and drops its
//! warm run within a second (`follow`). A turn already running on the source finishes there
//! under its own lease; its commit sets the affinity back to the source, and the next round
//! decides again. Nothing is lost or applied twice: a move changes where a turn is preferred,
//! never who may commit it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use quark_history::{AffinityMove, Error, Lead, Pressure, WorkerInfo};

use super::model::{Model, Room, models};
use super::partition::{Balance, Options, relieve, repartition};
use super::sketch::{Published, decode};
use crate::shared::Shared;

/// The role the coordinator holds a lease on.
pub const ROLE: &str = "placement";

/// How the placement coordinator works. Every worker runs one; one at a time acts.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// How often the coordinator repartitions for locality.
    pub every: Duration,
    /// How often the lease is renewed and workers' pressure is checked for relief.
    pub check_every: Duration,
    /// How long the coordinator's lease lasts unless renewed (at least three checks).
    pub lease: Duration,
    /// The repartitioner's costs, balance and thresholds.
    pub options: Options,
    /// How a worker's published memory turns into room for state.
    pub room: Room,
    /// The shortest time between two reliefs of one worker.
    pub relief_cooldown: Duration,
    /// Sketches older than this are not used (their worker is gone, or it stopped talking).
    pub sketch_max_age: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            every: Duration::from_secs(30),
            check_every: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            options: Options {
                max_rounds: 10,
                // A round transfers state; a thousand moves is a few seconds of replays spread
                // over the workers.
                max_moves: 1_000,
                // Three messages' worth across regions, and half of what the instance's traffic
                // could cost: a move must beat what a few stray samples suggest (as tuned in
                // PlaceBench).
                min_gain: 24.0,
                min_relative_gain: 0.5,
                balance: Balance::default(),
                ..Options::default()
            },
            room: Room::default(),
            relief_cooldown: Duration::from_secs(5),
            sketch_max_age: Duration::from_secs(15 * 60),
        }
    }
}

impl PlacementConfig {
    /// Checks the configuration; the worker refuses to build with a bad one.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.every.is_zero() || self.check_every.is_zero() {
            return Err("placement: `every` and `check_every` must be above zero".into());
        }
        if self.lease < self.check_every * 3 {
            return Err(format!(
                "placement: the lease ({:?}) must last at least three checks ({:?} each), or it \
                 expires between renewals",
                self.lease, self.check_every
            ));
        }
        if !(self.room.fill > 0.0 && self.room.fill <= 1.0) {
            return Err(format!(
                "placement: the room's fill must be in (0, 1], got {}",
                self.room.fill
            ));
        }
        Ok(())
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Round {
    pub(crate) locality_moves: usize,
    pub(crate) memory_moves: usize,
    pub(crate) cost_before: f64,
    pub(crate) cost_after: f64,
}

/// Runs until the worker stops: takes the lease when it is free, and acts while it holds it.
pub(crate) async fn run(shared: Arc<Shared>, config: PlacementConfig) {
    let mut tick = tokio::time::interval(config.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lead: Option<Lead> = None;
    let mut last_repartition: Option<Instant> = None;
    let mut relieved: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => {
                if let Some(lead) = lead
                    && let Err(e) = shared.store.resign(&lead).await
                {
                    tracing::debug!(error = %e, "could not give up the placement lease");
                }
                return;
            }
        }
        let holder = &shared.settings.id;
        lead = match shared.store.lead(ROLE, holder, config.lease).await {
            Ok(Some(l)) => {
                if lead.as_ref().is_none_or(|old| old.epoch != l.epoch) {
                    tracing::info!(epoch = l.epoch, "this worker coordinates placement");
                    last_repartition = None;
                }
                Some(l)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "could not take or renew the placement lease");
                None
            }
        };
        let Some(current) = &lead else { continue };
        let workers = match shared.store.list_workers().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "placement: could not list workers");
                continue;
            }
        };
        let due = last_repartition.is_none_or(|t| t.elapsed() >= config.every);
        let pressed: Vec<String> = workers
            .iter()
            .filter(|w| w.load.pressure >= Pressure::Warning)
            .filter(|w| {
                relieved
                    .get(&w.id)
                    .is_none_or(|t| t.elapsed() >= config.relief_cooldown)
            })
            .map(|w| w.id.clone())
            .collect();
        if !due && pressed.is_empty() {
            continue;
        }
        match round(&shared, &config, current, &workers, due, &pressed).await {
            Ok(done) => {
                if due {
                    last_repartition = Some(Instant::now());
                    shared
                        .metrics
                        .placement_round(done.locality_moves, "locality");
                }
                if !pressed.is_empty() {
                    for id in pressed {
                        relieved.insert(id, Instant::now());
                    }
                    shared.metrics.placement_round(done.memory_moves, "memory");
                }
                if done.locality_moves + done.memory_moves > 0 {
                    tracing::info!(
                        locality = done.locality_moves,
                        memory = done.memory_moves,
                        cost_before = done.cost_before,
                        cost_after = done.cost_after,
                        "placement moved instances"
                    );
                }
            }
            Err(Error::NotLeader { .. }) => {
                tracing::info!("the placement lease passed to another worker");
                lead = None;
            }
            Err(e) => {
                // Tried again at the next repartition, not at every check.
                if due {
                    last_repartition = Some(Instant::now());
                }
                tracing::warn!(error = %e, "placement round failed; trying again later");
            }
        }
    }
}

/// One round: reads what workers published, decides, and moves under `lead`.
async fn round(
    shared: &Shared,
    config: &PlacementConfig,
    lead: &Lead,
    workers: &[WorkerInfo],
    repartition_now: bool,
    pressed: &[String],
) -> Result<Round, Error> {
    if workers.len() < 2 {
        return Ok(Round::default());
    }
    let now = shared.store.config().clock.now();
    let max_age = config.sketch_max_age.as_micros() as i64;
    let published: Vec<(String, Published)> = shared
        .store
        .sketches()
        .await?
        .into_iter()
        .filter(|s| now.as_micros() - s.published_at.as_micros() <= max_age)
        .filter_map(|s| match decode(&s.sketch) {
            Ok(p) => Some((s.worker_id, p)),
            Err(e) => {
                tracing::debug!(worker = %s.worker_id, error = %e, "unreadable sketch; skipped");
                None
            }
        })
        .collect();
    let mut ids: Vec<String> = published
        .iter()
        .flat_map(|(_, p)| {
            p.edges
                .iter()
                .flat_map(|e| [e.a.clone(), e.b.clone()])
                .chain(p.warm.iter().map(|w| w.instance.clone()))
        })
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Round::default());
    }
    let placed = shared.store.affinities(&ids).await?;
    let mut done = Round::default();
    let mut moves = Vec::new();
    let mut reasons = Vec::new();
    for model in models(workers, &published, &placed, config.room) {
        let decided = decide(&model, config, repartition_now, pressed);
        done.cost_before += decided.cost_before;
        done.cost_after += decided.cost_after;
        for (m, reason) in decided.moves {
            moves.push(m);
            reasons.push(reason);
        }
    }
    if moves.is_empty() {
        return Ok(done);
    }
    let applied = shared.store.move_affinities(&moves, Some(lead)).await?;
    // A move that did not happen (a turn ran elsewhere since the sketches) is not counted.
    for (reason, applied) in reasons.into_iter().zip(applied) {
        match (reason, applied) {
            (_, false) => {}
            (Reason::Locality, true) => done.locality_moves += 1,
            (Reason::Memory, true) => done.memory_moves += 1,
        }
    }
    Ok(done)
}

/// Why an instance moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// To sit with what it talks to.
    Locality,
    /// To relieve a worker under memory pressure.
    Memory,
}

/// One queue's decision.
#[derive(Debug, Default)]
pub(crate) struct Decided {
    pub(crate) moves: Vec<(AffinityMove, Reason)>,
    pub(crate) cost_before: f64,
    pub(crate) cost_after: f64,
}

/// Decides one queue's moves: a repartition (if due), then the relief of each worker under
/// pressure in `pressed`, from the assignment the repartition reached.
pub(crate) fn decide(
    model: &Model,
    config: &PlacementConfig,
    repartition_now: bool,
    pressed: &[String],
) -> Decided {
    let mut decided = Decided::default();
    let mut assignment = model.current.clone();
    if repartition_now {
        match repartition(&model.graph, &model.slots, &assignment, &config.options) {
            Ok(plan) => {
                decided.cost_before = plan.cost_before;
                decided.cost_after = plan.cost_after;
                assignment = plan.assignment;
            }
            Err(e) => tracing::warn!(queue = %model.queue, error = %e, "repartition refused"),
        }
    }
    let mut relieved = vec![false; assignment.len()];
    // Relief is bounded by each receiver's room, not by the balance of the placed state: the
    // state in the graph is a fraction of a worker's memory, and balancing it would keep state
    // on the one worker whose memory is short. The next repartition rebalances what it can.
    let mut relief_options = config.options;
    relief_options.balance.count = false;
    relief_options.balance.memory = false;
    relief_options.balance.cpu = false;
    for (&worker, &bytes) in &model.excess {
        if !pressed.contains(&model.workers[worker as usize]) {
            continue;
        }
        match relieve(
            &model.graph,
            &model.slots,
            &assignment,
            worker,
            bytes,
            &relief_options,
        ) {
            Ok(relief) => {
                for m in &relief.moves {
                    relieved[m.node as usize] = true;
                }
                assignment = relief.assignment;
            }
            Err(e) => tracing::warn!(queue = %model.queue, error = %e, "relief refused"),
        }
    }
    for (node, (&to, &from)) in assignment.iter().zip(&model.current).enumerate() {
        if to != from && from != super::partition::UNPLACED {
            let reason = if relieved[node] {
                Reason::Memory
            } else {
                Reason::Locality
            };
            decided.moves.push((
                AffinityMove::new(
                    model.instances[node].clone(),
                    model.workers[from as usize].clone(),
                    model.workers[to as usize].clone(),
                ),
                reason,
            ));
        }
    }
    decided
}
