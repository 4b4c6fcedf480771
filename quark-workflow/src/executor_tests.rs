//! Replay tests. Every case records a history by running the code live, then replays it both
//! incrementally (turn by turn) and from the full history (`sim::check_replays`).

use std::future::Future;
use std::time::Duration;

use quark_history::{Failure, HistoryEvent, Payload};

use crate::executor::Outcome;
use crate::sim::{Sim, check_replays, check_upgrade, run};
use crate::{
    Activity, ActivityContext, ActivityError, Orchestration, OrchestrationContext,
    OrchestrationError, Registry,
};

macro_rules! activity {
    ($ty:ident, $name:literal, $in:ty => $out:ty) => {
        pub(crate) struct $ty;
        impl Activity for $ty {
            const NAME: &'static str = $name;
            type Input = $in;
            type Output = $out;
            fn run(
                _ctx: ActivityContext,
                _input: $in,
            ) -> impl Future<Output = Result<$out, ActivityError>> + Send + 'static {
                async { Err(ActivityError::message("run by the simulator")) }
            }
        }
    };
}

activity!(ChargeCard, "charge_card", u32 => String);
activity!(ChargePaypal, "charge_paypal", u32 => String);
activity!(Ship, "ship", String => String);
activity!(FraudCheck, "fraud_check", u32 => bool);

/// Declares an orchestration named `order` with input `u32` and output `String`.
macro_rules! order {
    ($ty:ident, |$ctx:ident, $amount:ident| $body:block) => {
        pub(crate) struct $ty;
        impl Orchestration for $ty {
            const NAME: &'static str = "order";
            type Input = u32;
            type Output = String;
            fn run(
                $ctx: OrchestrationContext,
                $amount: u32,
            ) -> impl Future<Output = Result<String, OrchestrationError>> + 'static {
                async move { $body }
            }
        }
    };
}

order!(OrderV1, |ctx, amount| {
    let receipt = ctx.call(ChargeCard, &amount).await?;
    ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
    ctx.call(Ship, &receipt).await
});

order!(Reordered, |ctx, amount| {
    let shipped = ctx.call(Ship, &format!("{amount}")).await?;
    ctx.call(ChargeCard, &amount).await?;
    Ok(shipped)
});

order!(ShipRemoved, |ctx, amount| {
    let receipt = ctx.call(ChargeCard, &amount).await?;
    ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
    Ok(receipt)
});

order!(OtherActivity, |ctx, amount| {
    let receipt = ctx.call(ChargePaypal, &amount).await?;
    ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
    ctx.call(Ship, &receipt).await
});

order!(OtherInput, |ctx, amount| {
    let receipt = ctx.call(ChargeCard, &(amount + 100)).await?;
    ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
    ctx.call(Ship, &receipt).await
});

order!(TimerFirst, |ctx, amount| {
    ctx.sleep(Duration::from_secs(60)).await?;
    let receipt = ctx.call(ChargeCard, &amount).await?;
    ctx.call(Ship, &receipt).await
});

order!(Patched, |ctx, amount| {
    let receipt = ctx.call(ChargeCard, &amount).await?;
    if ctx.patched("fraud-check") && !ctx.call(FraudCheck, &amount).await? {
        return Err(OrchestrationError::failed("fraud"));
    }
    ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
    ctx.call(Ship, &receipt).await
});

fn registry<O: Orchestration>() -> Registry {
    let mut r = Registry::new();
    r.add_orchestration::<O>();
    r
}

fn respond(activity: &str, input: &Payload) -> Result<Payload, Failure> {
    let v: serde_json::Value = input.decode().unwrap();
    Ok(match activity {
        "charge_card" | "charge_paypal" => Payload::json(&format!("receipt-{v}")).unwrap(),
        "ship" => Payload::json(&format!("shipped {}", v.as_str().unwrap_or("?"))).unwrap(),
        "fraud_check" => Payload::json(&true).unwrap(),
        _ => Payload::unit(),
    })
}

fn record<O: Orchestration>(input: &O::Input) -> Sim {
    let mut sim = Sim::start::<O>(registry::<O>(), input, respond);
    sim.run();
    sim
}

fn kinds(sim: &Sim) -> Vec<&'static str> {
    sim.history.iter().map(|e| e.event.kind()).collect()
}

#[test]
fn an_order_runs_to_completion_and_replays_both_ways() {
    let sim = record::<OrderV1>(&500);
    assert_eq!(
        sim.outcome,
        Outcome::Completed(Payload::json(&"shipped receipt-500").unwrap())
    );
    assert_eq!(
        kinds(&sim),
        [
            "WorkflowStarted",
            "ActivityScheduled",
            "ActivityCompleted",
            "TimerCreated",
            "TimerFired",
            "ActivityScheduled",
            "ActivityCompleted",
            "WorkflowCompleted"
        ]
    );
    // The 30-day timer fires 30 days of history time after it was created.
    let (created, fired) = (&sim.history[3], &sim.history[4]);
    assert!(fired.recorded_at.since(created.recorded_at) >= Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        check_replays(&registry::<OrderV1>(), &sim.history),
        (None, None)
    );
}

#[test]
fn commands_record_their_call_sites() {
    let sim = record::<OrderV1>(&500);
    let HistoryEvent::ActivityScheduled {
        site: Some(site),
        command: 1,
        ..
    } = &sim.history[1].event
    else {
        panic!("expected ActivityScheduled, got {:?}", sim.history[1].event);
    };
    assert!(site.file.ends_with("executor_tests.rs"), "{site}");
}

/// Replays an `OrderV1` history (completed, or cut at `len` events) against `O`, both ways, and
/// returns the full-history error after checking the incremental one agrees that it diverges.
fn diverge<O: Orchestration>(len: Option<usize>) -> String {
    let mut history = record::<OrderV1>(&500).history;
    if let Some(len) = len {
        history.truncate(len);
    }
    let (incremental, full) = check_replays(&registry::<O>(), &history);
    assert!(incremental.is_some(), "incremental replay did not diverge");
    full.expect("full replay did not diverge")
}

fn line_of(needle: &str) -> u32 {
    let src = include_str!("executor_tests.rs");
    let idx = src.lines().position(|l| l.contains(needle)).unwrap();
    idx as u32 + 1
}

#[test]
fn reordered_calls_are_nondeterministic() {
    let err = diverge::<Reordered>(None);
    let (old, new) = (
        line_of("let receipt = ctx.call(ChargeCard, &amount).await?;"),
        line_of("let shipped = ctx.call(Ship"),
    );
    assert_eq!(
        err,
        format!(
            "nondeterminism: event 2 was ActivityScheduled(charge_card) from \
             quark-workflow/src/executor_tests.rs:{old}:23; the code now asks for \
             ActivityScheduled(ship) at quark-workflow/src/executor_tests.rs:{new}:23"
        )
    );
}

#[test]
fn a_removed_call_is_nondeterministic() {
    let err = diverge::<ShipRemoved>(None);
    assert!(
        err.starts_with("nondeterminism: event 6 was ActivityScheduled(ship) from "),
        "{err}"
    );
    assert!(
        err.ends_with("the code now returns after 2 commands without asking for it"),
        "{err}"
    );
}

#[test]
fn a_changed_activity_type_is_nondeterministic() {
    let err = diverge::<OtherActivity>(None);
    assert!(
        err.contains("event 2 was ActivityScheduled(charge_card)"),
        "{err}"
    );
    assert!(
        err.contains("the code now asks for ActivityScheduled(charge_paypal) at"),
        "{err}"
    );
}

#[test]
fn a_changed_input_is_nondeterministic() {
    let err = diverge::<OtherInput>(Some(3));
    assert!(
        err.contains(
            "the code now asks for ActivityScheduled(charge_card) with input 600, recorded with input 500"
        ),
        "{err}"
    );
}

#[test]
fn a_timer_where_an_activity_was_is_nondeterministic() {
    let err = diverge::<TimerFirst>(None);
    assert!(
        err.contains("event 2 was ActivityScheduled(charge_card)"),
        "{err}"
    );
    assert!(
        err.contains("the code now asks for TimerCreated at"),
        "{err}"
    );
}

#[test]
fn a_patch_keeps_old_histories_on_the_old_branch_and_new_ones_on_the_new() {
    // Recorded before the change: replays under the patched code without the new activity.
    // Incrementally, as under the old code; then from every point at which the new code could
    // pick it up, and in full.
    let old = record::<OrderV1>(&500).history;
    assert_eq!(check_replays(&registry::<OrderV1>(), &old), (None, None));
    assert_eq!(check_upgrade(&registry::<Patched>(), &old), None);
    let replayed = run(&registry::<Patched>(), &old);
    assert!(replayed.new_events.is_empty());
    assert_eq!(replayed.patches.get("fraud-check"), Some(&true));

    // A run under the new code records the marker and takes the new branch.
    let new = record::<Patched>(&500);
    assert!(kinds(&new).contains(&"PatchMarker"));
    assert!(new.history.iter().any(|e| matches!(
        &e.event,
        HistoryEvent::ActivityScheduled { activity, .. } if activity == "fraud_check"
    )));
    assert_eq!(
        check_replays(&registry::<Patched>(), &new.history),
        (None, None)
    );
    let replayed = run(&registry::<Patched>(), &new.history);
    assert_eq!(replayed.patches.get("fraud-check"), Some(&false));

    // The old code cannot replay a history that took the new branch.
    let (_, full) = check_replays(&registry::<OrderV1>(), &new.history);
    assert!(full.unwrap().contains("PatchMarker(fraud-check)"));
}

#[test]
fn an_old_run_waiting_at_the_patch_point_takes_the_new_branch() {
    // Deployed while waiting for the charge: the rest runs under the new code.
    let mut sim = Sim::start::<OrderV1>(registry::<OrderV1>(), &500, respond);
    sim.turn();
    sim.deliver();
    sim.registry = registry::<Patched>();
    sim.run();
    assert!(kinds(&sim).contains(&"PatchMarker"));
    assert_eq!(
        check_replays(&registry::<Patched>(), &sim.history),
        (None, None)
    );
}
