//! Property: random orchestration programs (calls, timers, signals, joins, selects, side effects),
//! run live under random delivery orders, with or without a cancellation at a random point,
//! replay from any prefix of their history without re-emitting a recorded command, and reach the
//! same result.

use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use quark_history::{HistoryEvent, Payload};
use serde::{Deserialize, Serialize};

use crate::command::is_command_event;
use crate::executor::Outcome;
use crate::sim::{Sim, check_replays, run};
use crate::{
    Activity, ActivityContext, ActivityError, Orchestration, OrchestrationContext,
    OrchestrationError, Registry,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    Call(u32),
    Sleep(u8),
    Signal,
    SignalOrTimeout(u8),
    Join(Vec<u32>),
    SelectCallOrTimer(u32, u8),
    SideEffect,
}

struct Add;
impl Activity for Add {
    const NAME: &'static str = "add";
    type Input = u32;
    type Output = u64;
    async fn run(_ctx: ActivityContext, n: u32) -> Result<u64, ActivityError> {
        Ok(u64::from(n) + 1)
    }
}

struct Program;
impl Orchestration for Program {
    const NAME: &'static str = "program";
    type Input = Vec<Step>;
    type Output = Vec<u64>;
    async fn run(
        ctx: OrchestrationContext,
        steps: Vec<Step>,
    ) -> Result<Vec<u64>, OrchestrationError> {
        {
            let mut out = Vec::new();
            for step in steps {
                match step {
                    Step::Call(n) => out.push(ctx.call(Add, &n).await?),
                    Step::Sleep(s) => ctx.sleep(Duration::from_secs(u64::from(s))).await?,
                    Step::Signal => out.push(ctx.wait_for_signal::<u64>("s").await?),
                    Step::SignalOrTimeout(s) => {
                        let wait = ctx.wait_for_signal::<u64>("s");
                        let got = wait.timeout(Duration::from_secs(u64::from(s))).await?;
                        out.push(got.unwrap_or(u64::MAX));
                    }
                    Step::Join(ns) => {
                        let calls: Vec<_> = ns.iter().map(|n| ctx.call(Add, n)).collect();
                        for r in ctx.join(calls).await {
                            out.push(r?);
                        }
                    }
                    Step::SelectCallOrTimer(n, s) => {
                        let call = Box::pin(async { ctx.call(Add, &n).await });
                        let timer = Box::pin(async {
                            ctx.sleep(Duration::from_secs(u64::from(s))).await?;
                            Ok(0)
                        });
                        let branches: Vec<std::pin::Pin<Box<dyn Future<Output = _>>>> =
                            vec![call, timer];
                        let (i, v) = ctx.select(branches).await;
                        out.push(i as u64 * 1_000_000 + v?);
                    }
                    Step::SideEffect => out.push(ctx.side_effect(|| 7u64)?),
                }
            }
            Ok(out)
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..100).prop_map(Step::Call),
        (0u8..30).prop_map(Step::Sleep),
        Just(Step::Signal),
        (0u8..30).prop_map(Step::SignalOrTimeout),
        prop::collection::vec(0u32..100, 0..5).prop_map(Step::Join),
        ((0u32..100), (0u8..3)).prop_map(|(n, s)| Step::SelectCallOrTimer(n, s)),
        Just(Step::SideEffect),
    ]
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_orchestration::<Program>();
    r
}

/// Runs `steps` live: activities answered at once (newest first or oldest first), timers in
/// time order, and a signal whenever the program waits for nothing else; `early` signals are
/// sent before the first turn.
fn record(steps: &[Step], newest_first: bool, early: u8, cancel_at: Option<usize>) -> Sim {
    let mut sim = Sim::start::<Program>(registry(), &steps.to_vec(), |_, input| {
        let n: u32 = input.decode().unwrap();
        Ok(Payload::json(&(u64::from(n) + 1)).unwrap())
    });
    sim.newest_first = newest_first;
    let mut signals = 0u64;
    for _ in 0..early {
        signals += 1;
        sim.push(signal(signals));
    }
    loop {
        // Cancellation, if any, arrives once the history has grown to `cancel_at` events.
        sim.turn();
        if cancel_at.is_some_and(|at| sim.history.len() >= at)
            && matches!(sim.outcome, Outcome::Waiting)
            && !sim
                .history
                .iter()
                .any(|e| e.event.kind() == "CancelRequested")
        {
            sim.push(HistoryEvent::CancelRequested {
                reason: "test".into(),
            });
            continue;
        }
        if !matches!(sim.outcome, Outcome::Waiting) {
            return sim;
        }
        if !sim.deliver() {
            signals += 1;
            sim.push(signal(signals));
        }
    }
}

fn signal(n: u64) -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "s".into(),
        payload: Payload::json(&(1000 + n)).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn replaying_any_prefix_never_re_emits_a_recorded_command_and_ends_the_same(
        steps in prop::collection::vec(step(), 0..8),
        newest_first in any::<bool>(),
        early in 0u8..3,
        cancel_at in prop::option::of(2usize..40),
    ) {
        let sim = record(&steps, newest_first, early, cancel_at);
        prop_assert!(
            matches!(sim.outcome, Outcome::Completed(_) | Outcome::Cancelled(_)),
            "{:?}",
            sim.outcome
        );
        let history = &sim.history;

        for k in 1..=history.len() {
            let prefix = &history[..k];
            let recorded: Vec<u64> = prefix
                .iter()
                .filter(|e| is_command_event(&e.event))
                .filter_map(|e| e.event.command())
                .collect();
            let r = run(&registry(), prefix);
            prop_assert!(!matches!(r.outcome, Outcome::Nondeterminism(_)), "prefix {}: {:?}", k, r.outcome);
            for e in r.new_events.iter().filter(|e| is_command_event(e)) {
                let id = e.command().unwrap_or(0);
                prop_assert!(!recorded.contains(&id), "prefix {} re-emits command {}", k, id);
            }
        }

        // Without its last event the history ends the same way again.
        let again = run(&registry(), &history[..history.len() - 1]);
        prop_assert_eq!(&again.outcome, &sim.outcome);
        prop_assert_eq!(check_replays(&registry(), history), (None, None));
    }
}
