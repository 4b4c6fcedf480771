//! The memory governor: one task per worker that samples memory, sets the pressure level and the
//! circuit breaker, and acts on them: no new warm state from warning on, evictions at critical,
//! no claims and shedding at reject; and suspected leaks evicted once.

use std::collections::HashSet;
use std::sync::Arc;

use quark_history::Pressure;
use quark_workflow::runner::{Evicted, Runner};
use tokio::time::Instant;

use super::pressure::Smoothed;
use super::{LeakDetection, Resolved, human};
use crate::shared::Shared;

/// How many samples apart the warm runs are checked for leaks.
const LEAK_CHECK_EVERY: u64 = 4;

/// Runs until the worker stops.
pub(crate) async fn run(shared: Arc<Shared>, runners: Arc<Vec<Runner>>, resolved: Resolved) {
    let Resolved {
        config,
        limit,
        probe,
    } = resolved;
    let thresholds = config.thresholds;
    let mut smoothed = Smoothed::new(config.smoothing);
    let mut tick = tokio::time::interval(config.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let (mut level, mut breaker) = (Pressure::Normal, false);
    let mut last_shed: Option<Instant> = None;
    let mut leaks = Leaks::default();
    let mut blind = false;
    let mut samples = 0u64;
    // Evictions free memory only as the moving average sees it: wait that long between two.
    let settle = config.smoothing.max(config.sample_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => return,
        }
        let rss = match probe.resident() {
            Ok(rss) => {
                if blind {
                    tracing::info!("this process's memory is readable again");
                    blind = false;
                }
                rss
            }
            Err(e) => {
                if !blind {
                    tracing::warn!(error = %e, "cannot read this process's memory; keeping the last level");
                    blind = true;
                }
                continue;
            }
        };
        let now = Instant::now();
        let average = smoothed.observe(rss as f64, now - last);
        last = now;
        shared.memory.record(average as u64, limit);
        let limit_f = limit as f64;
        let mut next = thresholds.level(level, average / limit_f);
        // One reading at reject is enough: memory may be about to run out.
        if rss as f64 / limit_f >= thresholds.reject {
            next = Pressure::Reject;
        }
        let next_breaker = match next {
            Pressure::Reject => true,
            Pressure::Critical => breaker,
            Pressure::Normal | Pressure::Warning => false,
        };
        if (next, next_breaker) != (level, breaker) {
            change(
                &shared,
                &runners,
                level,
                next,
                breaker,
                next_breaker,
                average,
                limit,
            );
            level = next;
            breaker = next_breaker;
        }
        shared
            .metrics
            .memory(&shared.settings.id, average as u64, limit, level, breaker);
        if level >= Pressure::Critical && last_shed.is_none_or(|t| now - t >= settle) {
            let warm: usize = runners
                .iter()
                .map(|r| r.cached_bytes() + r.live_entity_size().1)
                .sum();
            let bytes = if level == Pressure::Reject {
                usize::MAX
            } else {
                // Back under warning, half the warm state at most per round.
                let excess = (average - thresholds.warning * limit_f).max(1.0) as usize;
                excess.min(warm / 2).max(1)
            };
            if warm > 0 {
                let (runs, entities) = shed(&runners, bytes).await;
                shared
                    .metrics
                    .evicted_for_memory("pressure", runs, entities);
                tracing::info!(
                    level = %level,
                    runs = runs.count,
                    run_bytes = runs.bytes,
                    entities = entities.count,
                    entity_bytes = entities.bytes,
                    "evicted warm state for memory"
                );
            }
            last_shed = Some(now);
        }
        samples += 1;
        if samples.is_multiple_of(LEAK_CHECK_EVERY) {
            leaks.check(&shared, &runners, config.leaks).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn change(
    shared: &Shared,
    runners: &[Runner],
    from: Pressure,
    to: Pressure,
    was_open: bool,
    open: bool,
    average: f64,
    limit: u64,
) {
    let (rss, limit_h) = (human(average as u64), human(limit));
    if to > from {
        tracing::warn!(from = %from, to = %to, rss = %rss, limit = %limit_h, "memory pressure rose");
    } else if to < from {
        tracing::info!(from = %from, to = %to, rss = %rss, limit = %limit_h, "memory pressure eased");
    }
    if open && !was_open {
        shared.metrics.breaker_tripped();
        tracing::warn!(rss = %rss, limit = %limit_h,
            "circuit breaker open: claiming nothing until memory is back under the warning threshold");
    } else if was_open && !open {
        tracing::info!(rss = %rss, "circuit breaker closed: claiming again");
    }
    let admit = to < Pressure::Warning;
    if admit != (from < Pressure::Warning) {
        for runner in runners {
            runner.admit_new(admit);
        }
    }
    shared.memory.set(to, open);
    // Other workers learn of the level (and take this one's affinity) at the next heartbeat:
    // make it now.
    shared.memory.beat.notify_one();
}

async fn shed(runners: &[Runner], bytes: usize) -> (Evicted, Evicted) {
    let (mut runs, mut entities) = (Evicted::default(), Evicted::default());
    let mut left = bytes;
    for runner in runners {
        if left == 0 {
            break;
        }
        let (r, e) = runner.shed(left).await;
        left = left.saturating_sub(r.bytes + e.bytes);
        runs += r;
        entities += e;
    }
    (runs, entities)
}

/// The runs flagged as suspected leaks, each evicted once. Bounded: forgotten when it grows past
/// [`Leaks::MAX`] (a run flagged again after that is evicted once more).
#[derive(Default)]
struct Leaks {
    flagged: HashSet<String>,
}

impl Leaks {
    const MAX: usize = 65_536;

    async fn check(&mut self, shared: &Shared, runners: &[Runner], rule: LeakDetection) {
        for runner in runners {
            let live = runner.live_instances();
            let footprints: Vec<usize> = live.iter().map(|l| l.footprint).collect();
            let suspects = suspects(&footprints, rule);
            for i in suspects {
                let run = &live[i];
                if self.flagged.contains(&run.instance_id) {
                    continue; // rebuilt and as large again: large state, not a leak
                }
                // A run with a commit in flight is pinned: it is looked at again next time.
                let freed = runner.evict(vec![run.instance_id.clone()]).await;
                if freed.count == 0 {
                    continue;
                }
                if self.flagged.len() >= Self::MAX {
                    self.flagged.clear();
                }
                self.flagged.insert(run.instance_id.clone());
                tracing::warn!(
                    instance = %run.instance_id,
                    footprint = %human(run.footprint as u64),
                    events = run.events,
                    "suspected leak: a warm run far larger than its peers; evicted it (its next \
                     turn rebuilds it by replay)"
                );
                shared.metrics.leak_suspected();
                shared
                    .metrics
                    .evicted_for_memory("leak", freed, Evicted::default());
            }
        }
    }
}

/// The indexes of the footprints above `rule.factor` times the median and `rule.floor`.
pub(crate) fn suspects(footprints: &[usize], rule: LeakDetection) -> Vec<usize> {
    if footprints.len() < rule.min_peers.max(1) {
        return Vec::new();
    }
    let mut sorted = footprints.to_vec();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2] as f64;
    let bound = (median * rule.factor).max(rule.floor as f64);
    footprints
        .iter()
        .enumerate()
        .filter(|(_, f)| **f as f64 > bound)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_is_far_above_the_median_and_the_floor_among_enough_peers() {
        let rule = LeakDetection {
            factor: 8.0,
            floor: 10_000,
            min_peers: 4,
        };
        let mut footprints = vec![1_000, 1_200, 900, 1_100, 100_000];
        assert_eq!(suspects(&footprints, rule), [4]);
        // Above 8x the median but under the floor: not suspect.
        footprints[4] = 9_000;
        assert!(suspects(&footprints, rule).is_empty());
        // Too few peers to compare with.
        assert!(suspects(&[1_000, 1_000_000], rule).is_empty());
        // When most are large, large is normal.
        assert!(suspects(&[100_000, 120_000, 90_000, 110_000, 100_000], rule).is_empty());
    }
}
