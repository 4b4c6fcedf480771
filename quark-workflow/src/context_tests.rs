//! Replay tests of the `ctx` features beyond plain calls: combinators, signals, cancellation,
//! side effects, children, `continue_as_new`. Each runs live, then replays both ways.

use std::future::Future;
use std::time::Duration;

use quark_history::{Failure, HistoryEvent, Payload};

use crate::executor::Outcome;
use crate::sim::{Sim, check_replays, run};
use crate::{
    Activity, ActivityContext, ActivityError, Orchestration, OrchestrationContext,
    OrchestrationError, Registry,
};

struct Echo;
impl Activity for Echo {
    const NAME: &'static str = "echo";
    type Input = u32;
    type Output = u32;
    async fn run(_ctx: ActivityContext, input: u32) -> Result<u32, ActivityError> {
        Ok(input)
    }
}

macro_rules! orchestration {
    ($ty:ident, $in:ty => $out:ty, |$ctx:ident, $input:ident| $body:block) => {
        struct $ty;
        impl Orchestration for $ty {
            const NAME: &'static str = stringify!($ty);
            type Input = $in;
            type Output = $out;
            fn run(
                $ctx: OrchestrationContext,
                $input: $in,
            ) -> impl Future<Output = Result<$out, OrchestrationError>> + 'static {
                async move { $body }
            }
        }
    };
}

fn registry<O: Orchestration>() -> Registry {
    let mut r = Registry::new();
    r.add_orchestration::<O>();
    r
}

fn echo(_: &str, input: &Payload) -> Result<Payload, Failure> {
    let n: u32 = input.decode().unwrap();
    if n == 13 {
        return Err(Failure::terminal("unlucky"));
    }
    Ok(input.clone())
}

fn live<O: Orchestration>(input: &O::Input) -> Sim {
    let mut sim = Sim::start::<O>(registry::<O>(), input, echo);
    sim.run();
    sim
}

fn completed<T: serde::Serialize>(v: T) -> Outcome {
    Outcome::Completed(Payload::json(&v).unwrap())
}

fn assert_replays<O: Orchestration>(sim: &Sim) {
    assert_eq!(check_replays(&registry::<O>(), &sim.history), (None, None));
}

orchestration!(JoinMany, u32 => Vec<u32>, |ctx, n| {
    let calls: Vec<_> = (100..100 + n).map(|i| ctx.call(Echo, &i)).collect();
    ctx.join(calls).await.into_iter().collect()
});

#[test]
fn join_over_more_than_thirty_calls_keeps_argument_order() {
    let mut sim = Sim::start::<JoinMany>(registry::<JoinMany>(), &40, echo);
    sim.newest_first = true;
    sim.run();
    // Results arrived last call first; the outputs are still in argument order.
    assert!(matches!(
        sim.history[41].event,
        HistoryEvent::ActivityCompleted { command: 40, .. }
    ));
    assert_eq!(sim.outcome, completed((100..140).collect::<Vec<u32>>()));
    assert_replays::<JoinMany>(&sim);
}

orchestration!(SelectLate, () => (usize, u32), |ctx, _in| {
    let first = ctx.call(Echo, &1);
    let second = ctx.call(Echo, &2);
    ctx.sleep(Duration::from_secs(3600)).await?;
    // Both finished during the sleep; `second` is polled first, `first` finished first.
    let (i, v) = ctx.select([second, first]).await;
    Ok((i, v?))
});

#[test]
fn select_picks_the_branch_that_finished_first_in_history_not_in_poll_order() {
    let sim = live::<SelectLate>(&());
    assert_eq!(sim.outcome, completed((1usize, 1u32)));
    assert_replays::<SelectLate>(&sim);
}

orchestration!(Race, () => String, |ctx, _in| {
    let timer = async { ctx.sleep(Duration::from_secs(60)).await.map(|()| "timer".to_string()) };
    let call = async { ctx.call(Echo, &7).await.map(|v| format!("echo {v}")) };
    let (_, winner) = ctx.select([
        Box::pin(timer) as std::pin::Pin<Box<dyn Future<Output = _>>>,
        Box::pin(call),
    ])
    .await;
    winner
});

#[test]
fn a_lost_timer_is_cancelled_and_the_race_replays() {
    let sim = live::<Race>(&());
    assert_eq!(sim.outcome, completed("echo 7"));
    let events: Vec<_> = sim.history.iter().map(|e| e.event.kind()).collect();
    assert!(events.contains(&"TimerCancelled"), "{events:?}");
    assert_replays::<Race>(&sim);
}

orchestration!(Approval, () => Option<String>, |ctx, _in| {
    ctx.wait_for_signal::<String>("approve")
        .timeout(Duration::from_secs(24 * 3600))
        .await
});

#[test]
fn a_signal_before_the_timeout_wins_and_cancels_the_timer() {
    let mut sim = Sim::start::<Approval>(registry::<Approval>(), &(), echo);
    assert_eq!(sim.turn(), &Outcome::Waiting);
    sim.push(HistoryEvent::SignalReceived {
        name: "approve".into(),
        payload: Payload::json(&"alice").unwrap(),
    });
    sim.run();
    assert_eq!(sim.outcome, completed(Some("alice")));
    assert!(
        sim.history
            .iter()
            .any(|e| e.event.kind() == "TimerCancelled")
    );
    assert_replays::<Approval>(&sim);
}

#[test]
fn a_signal_wait_times_out_when_nobody_signals() {
    let sim = live::<Approval>(&());
    assert_eq!(sim.outcome, completed(None::<String>));
    assert_replays::<Approval>(&sim);
}

orchestration!(Compensate, () => String, |ctx, _in| {
    match ctx.call(Echo, &1).await {
        Err(OrchestrationError::Cancelled { reason }) => {
            // Compensation runs after the cancellation was seen.
            ctx.call(Echo, &2).await?;
            Err(OrchestrationError::Cancelled { reason })
        }
        other => other.map(|v| v.to_string()),
    }
});

#[test]
fn cancellation_fails_the_next_await_and_compensation_still_runs() {
    let mut sim = Sim::start::<Compensate>(registry::<Compensate>(), &(), echo);
    sim.turn();
    sim.push(HistoryEvent::CancelRequested {
        reason: "customer asked".into(),
    });
    sim.run();
    assert_eq!(sim.outcome, Outcome::Cancelled("customer asked".into()));
    let compensations = sim
        .history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::ActivityScheduled { command: 2, .. }))
        .count();
    assert_eq!(compensations, 1);
    assert_replays::<Compensate>(&sim);
}

orchestration!(Failing, u32 => u32, |ctx, n| { ctx.call(Echo, &n).await });

#[test]
fn an_activity_failure_fails_the_orchestration_with_its_message() {
    let sim = live::<Failing>(&13);
    let Outcome::Failed(failure) = &sim.outcome else {
        panic!("expected a failure, got {:?}", sim.outcome);
    };
    assert_eq!(failure.message, "activity `echo` failed: unlucky");
    assert_replays::<Failing>(&sim);
}

orchestration!(Effects, () => (u64, String, u64, u64, bool), |ctx, _in| {
    let r = ctx.random();
    let id = ctx.uuid().to_string();
    let once = ctx.side_effect(|| 41u64 + 1)?;
    ctx.sleep(Duration::from_secs(5)).await?;
    let len = ctx.history_len();
    // `now` is the time of the event being processed: after the timer, at least 5 s later.
    Ok((r, id, once, len, ctx.now().as_micros() > 5_000_000))
});

#[test]
fn side_effects_random_and_uuid_replay_their_recorded_values() {
    let sim = live::<Effects>(&());
    let full = run(&registry::<Effects>(), &sim.history);
    assert_eq!(full.outcome, Outcome::Closed);
    // Replaying up to the timer's firing recomputes the output from the recorded values.
    let cut = sim.history.len() - 1;
    let again = run(&registry::<Effects>(), &sim.history[..cut]);
    assert_eq!(again.outcome, sim.outcome);
    let Outcome::Completed(out) = &sim.outcome else {
        panic!("{:?}", sim.outcome)
    };
    let (_, id, once, len, later): (u64, String, u64, u64, bool) = out.decode().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!((once, len, later), (42, 6, true));
}

orchestration!(Countdown, u32 => u32, |ctx, n| {
    if n == 0 {
        return Ok(0);
    }
    ctx.call(Echo, &n).await?;
    ctx.continue_as_new(&(n - 1))
});

#[test]
fn continue_as_new_ends_the_run_and_names_the_next() {
    let sim = live::<Countdown>(&3);
    assert_eq!(
        sim.outcome,
        Outcome::ContinuedAsNew(Payload::json(&2u32).unwrap())
    );
    let r = run(
        &registry::<Countdown>(),
        &sim.history[..sim.history.len() - 1],
    );
    assert_eq!(r.children.len(), 1);
    assert_eq!(r.children[0].id, "wf-1~2");
    assert_eq!(r.children[0].continued_from.as_deref(), Some("wf-1"));
    assert_replays::<Countdown>(&sim);
}

orchestration!(Parent, u32 => u32, |ctx, n| {
    let doubled = ctx.call_child(Failing, &n).await?;
    Ok(doubled + 1)
});

#[test]
fn a_child_is_started_once_and_its_result_resumes_the_parent() {
    let mut reg = registry::<Parent>();
    reg.add_orchestration::<Failing>();
    let mut sim = Sim::start::<Parent>(reg.clone(), &20, echo);
    sim.turn();
    let r = run(&reg, &sim.history[..1]);
    assert_eq!(r.children.len(), 1);
    let child = &r.children[0];
    assert_eq!(
        (child.id.as_str(), child.instance_type.as_str()),
        ("wf-1:1", "Failing")
    );
    assert_eq!(child.parent.as_ref().map(|p| p.command), Some(1));
    // Replaying with the ChildStarted event recorded starts nothing again.
    assert!(run(&reg, &sim.history).children.is_empty());
    sim.push(HistoryEvent::ChildCompleted {
        command: 1,
        output: Payload::json(&20u32).unwrap(),
    });
    sim.run();
    assert_eq!(sim.outcome, completed(21u32));
    assert_eq!(check_replays(&reg, &sim.history), (None, None));
}

orchestration!(TwoChildren, u32 => u32, |ctx, n| {
    let a = ctx.call_child(Failing, &n).await?;
    let b = ctx.call_child(Failing, &a).await?;
    Ok(a + b)
});

#[test]
fn a_child_s_result_that_reaches_the_history_before_its_start_resumes_the_parent() {
    let mut reg = registry::<TwoChildren>();
    reg.add_orchestration::<Failing>();
    let mut sim = Sim::start::<TwoChildren>(reg.clone(), &1, echo);
    sim.turn();
    // The second child was created by a turn whose commit had not landed yet when it ended:
    // its result is in the history before the first child's, and before its own start.
    sim.push(HistoryEvent::ChildCompleted {
        command: 2,
        output: Payload::json(&20u32).unwrap(),
    });
    sim.push(HistoryEvent::ChildCompleted {
        command: 1,
        output: Payload::json(&10u32).unwrap(),
    });
    sim.run();
    assert_eq!(sim.outcome, completed(30u32));
    assert_eq!(check_replays(&reg, &sim.history), (None, None));
}

orchestration!(Overridden, () => u32, |ctx, _in| {
    let options = crate::ActivityOptions::default().queue("gpu");
    let v = ctx.call_with(Echo, &5, options).await?;
    ctx.sleep_until(ctx.now() + Duration::from_secs(90)).await?;
    Ok(v)
});

#[test]
fn call_with_overrides_the_options_and_sleep_until_fires_at_its_time() {
    let reg = registry::<Overridden>();
    let mut sim = Sim::start::<Overridden>(reg.clone(), &(), echo);
    let first = run(&reg, &sim.history);
    assert_eq!(first.tasks[0].queue, "gpu");
    sim.run();
    assert_eq!(sim.outcome, completed(5u32));
    // `now` when the code asked was the time of the activity's result.
    let completed_at = sim.history.iter().find_map(|e| match e.event {
        HistoryEvent::ActivityCompleted { .. } => Some(e.recorded_at),
        _ => None,
    });
    let fire_at = sim.history.iter().find_map(|e| match e.event {
        HistoryEvent::TimerCreated { fire_at, .. } => Some(fire_at),
        _ => None,
    });
    assert_eq!(
        fire_at.unwrap(),
        completed_at.unwrap() + Duration::from_secs(90)
    );
    assert_replays::<Overridden>(&sim);
}

orchestration!(Spins, () => (), |_ctx, _in| {
    loop {
        tokio::task::yield_now().await;
    }
});

#[test]
fn code_that_wakes_itself_forever_is_stopped() {
    let sim = Sim::start::<Spins>(registry::<Spins>(), &(), echo);
    let r = run(&registry::<Spins>(), &sim.history);
    assert!(
        matches!(&r.outcome, Outcome::Panicked(m) if m.contains("woke itself")),
        "{:?}",
        r.outcome
    );
}

orchestration!(Logs, () => Vec<bool>, |ctx, _in| {
    let mut seen = vec![ctx.is_replaying()];
    ctx.call(Echo, &1).await?;
    seen.push(ctx.is_replaying());
    Ok(seen)
});

#[test]
fn is_replaying_is_true_only_before_the_last_recorded_decision() {
    let mut sim = Sim::start::<Logs>(registry::<Logs>(), &(), echo);
    sim.check_cold = false;
    sim.run();
    // A warm run executes each step once, live.
    assert_eq!(sim.outcome, completed(vec![false, false]));
    // A replay of the whole history replays the start (its call is recorded) and runs the end
    // live, which is why `is_replaying` must not decide anything: this output differs.
    let r = run(&registry::<Logs>(), &sim.history[..sim.history.len() - 1]);
    assert_eq!(r.outcome, completed(vec![true, false]));
    let (_, full) = check_replays(&registry::<Logs>(), &sim.history);
    assert!(full.is_some_and(|e| e.contains("WorkflowCompleted")));
}
