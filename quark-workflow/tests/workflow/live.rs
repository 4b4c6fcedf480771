//! Live instances on the test environment: a warm instance's turns feed its suspended run only
//! the new events (each step of the code runs once), an instance that is not live is replayed
//! from its history to the same end, the live runs stay within their limits and report their
//! footprints; and code that waits on something Quark does not drive fails at once, with the
//! cause, instead of hanging.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use quark_history::HistoryEvent;
use quark_workflow::runner::{HistoryWarning, RunEvent, WarmLimits};
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ActivityOptions, ClientError, OrchestrationContext,
    OrchestrationError, Registry, ReplayReport, Replayer, activity, orchestration,
};
use serde::{Deserialize, Serialize};

/// How often each test's orchestration started its body and ran a step, by key: tests run in
/// parallel in one process.
static RUNS: Mutex<Option<HashMap<String, (u64, u64)>>> = Mutex::new(None);

fn note(key: &str, start: bool) {
    let mut runs = RUNS.lock().unwrap();
    let entry = runs
        .get_or_insert_with(HashMap::new)
        .entry(key.to_string())
        .or_default();
    if start {
        entry.0 += 1;
    } else {
        entry.1 += 1;
    }
}

fn runs(key: &str) -> (u64, u64) {
    let runs = RUNS.lock().unwrap();
    runs.as_ref()
        .and_then(|r| r.get(key).copied())
        .unwrap_or_default()
}

#[activity]
async fn step(_ctx: ActivityContext, i: u64) -> Result<u64, ActivityError> {
    Ok(i)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Loop {
    key: String,
    steps: u64,
    /// Wait for the signal `done` before returning.
    hold: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sizes {
    sum: u64,
    events: u64,
    bytes: u64,
}

#[orchestration]
async fn looped(ctx: OrchestrationContext, input: Loop) -> Result<Sizes, OrchestrationError> {
    note(&input.key, true);
    let mut sum = 0;
    for i in 0..input.steps {
        note(&input.key, false);
        sum += ctx.call(step, &i).await?;
    }
    if input.hold {
        ctx.wait_for_signal::<()>("done").await?;
    }
    Ok(Sizes {
        sum,
        events: ctx.history_len(),
        bytes: ctx.history_size(),
    })
}

fn registry() -> Registry {
    Registry::new()
        .register(looped)
        .register(step)
        .register(naps)
        .register(waits_forever)
        .register(times_out)
}

fn input(key: &str, steps: u64, hold: bool) -> Loop {
    Loop {
        key: key.into(),
        steps,
        hold,
    }
}

async fn run_loop(env: &TestEnv, key: &str, steps: u64) -> Sizes {
    let handle = looped::start(env.client(), key, input(key, steps, false))
        .await
        .unwrap();
    handle.result().await.unwrap()
}

#[tokio::test]
async fn a_live_instance_runs_each_step_of_its_code_once() {
    let env = TestEnv::new(registry()).await.unwrap();
    let sizes = run_loop(&env, "live-once", 200).await;
    assert_eq!(sizes.sum, (0..200).sum::<u64>());
    // One start and one pass per step: no turn replayed the loop. (Replaying each turn would
    // start the body 201 times and run about 20,000 steps.)
    assert_eq!(runs("live-once"), (1, 200));
}

#[tokio::test]
async fn an_instance_that_is_not_live_is_replayed_to_the_same_end() {
    let live = TestEnv::new(registry()).await.unwrap();
    let cold_limits = WarmLimits {
        instances: 0,
        ..WarmLimits::default()
    };
    let cold = TestEnv::with_limits(registry(), cold_limits, HistoryWarning::default())
        .await
        .unwrap();
    let warm = run_loop(&live, "same-end-live", 30).await;
    let replayed = run_loop(&cold, "same-end-cold", 30).await;
    assert_eq!(warm, replayed, "the same output, history length and size");
    // Every turn of the cold environment replayed the history from its start: the turn after
    // the k-th result runs k + 1 steps (the last one k).
    let (starts, steps) = runs("same-end-cold");
    assert_eq!(starts, 31);
    assert_eq!(steps, (1..=30).sum::<u64>() + 30);
    let kinds = |h: Vec<quark_history::RecordedEvent>| {
        h.into_iter().map(|e| e.event.kind()).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(live.client().history("same-end-live").await.unwrap()),
        kinds(cold.client().history("same-end-cold").await.unwrap()),
    );
}

#[tokio::test]
async fn a_live_run_holds_only_what_is_pending_whatever_the_length_of_its_history() {
    let env = TestEnv::new(registry()).await.unwrap();
    for (key, steps) in [("short", 10), ("long", 400)] {
        looped::start(env.client(), key, input(key, steps, true))
            .await
            .unwrap();
    }
    env.run_until_idle().await.unwrap();
    let live = env.live_instances();
    let of = |id: &str| {
        live.iter()
            .find(|l| l.instance_id == id)
            .unwrap_or_else(|| panic!("`{id}` is not live: {live:?}"))
            .clone()
    };
    let (short, long) = (of("short"), of("long"));
    assert_eq!((short.events, long.events), (21, 801));
    assert!(short.footprint > 0);
    // The long run has seen 36 times the events, and holds about what the short one does.
    assert!(
        long.footprint * 10 < short.footprint * 12,
        "short: {short:?}, long: {long:?}"
    );
}

#[tokio::test]
async fn live_runs_stay_within_the_memory_limit_and_evicted_ones_finish_by_replay() {
    let limits = WarmLimits {
        instances: 100,
        // Room for about one waiting run.
        bytes: 1,
    };
    let env = TestEnv::with_limits(registry(), limits, HistoryWarning::default())
        .await
        .unwrap();
    let keys = ["evict-a", "evict-b", "evict-c"];
    for key in keys {
        looped::start(env.client(), key, input(key, 3, true))
            .await
            .unwrap();
    }
    env.run_until_idle().await.unwrap();
    assert!(
        env.live_instances().len() <= 1,
        "{:?}",
        env.live_instances()
    );
    for key in keys {
        env.client().signal(key, "done", &()).await.unwrap();
    }
    for key in keys {
        let sizes: Sizes = env.client().result(key).await.unwrap();
        assert_eq!(sizes.sum, 3);
    }
    // At least two of them were replayed when the signal came.
    let starts: u64 = keys.iter().map(|k| runs(k).0).sum();
    assert!(starts >= 5, "{starts} starts");
}

#[tokio::test]
async fn a_long_history_is_reported_once_per_run() {
    let warning = HistoryWarning {
        events: 20,
        bytes: u64::MAX,
    };
    let env = TestEnv::with_limits(registry(), WarmLimits::default(), warning)
        .await
        .unwrap();
    let sizes = run_loop(&env, "long-history", 15).await;
    assert_eq!(sizes.events, 31);
    assert!(sizes.bytes > 31 * 48, "{sizes:?}");
    let long = env
        .run_events()
        .into_iter()
        .filter(|e| *e == RunEvent::LongHistory)
        .count();
    assert_eq!(long, 1);
}

#[tokio::test]
async fn the_replayer_runs_each_step_once_per_history() {
    let env = TestEnv::new(registry()).await.unwrap();
    run_loop(&env, "replayed", 300).await;
    let history = env.client().history("replayed").await.unwrap();
    let before = runs("replayed");
    let report = Replayer::new(registry()).replay(&history).unwrap();
    assert!(report.is_ok(), "{report:?}");
    let after = runs("replayed");
    // Every prefix was checked by one run fed the history in turn: the body started once and
    // each step ran once, not once per prefix (300 prefixes).
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 300));
    // A change the history does not hold is still found.
    let mut changed = history.clone();
    if let HistoryEvent::ActivityScheduled { input, .. } = &mut changed[1].event {
        *input = quark_history::Payload::json(&7u64).unwrap();
    }
    assert!(matches!(
        Replayer::new(registry()).replay(&changed).unwrap(),
        ReplayReport::Diverged(_)
    ));
}

/// A Tokio timer, out of the macro's sight.
async fn tokio_nap() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[orchestration]
async fn naps(_ctx: OrchestrationContext, _in: ()) -> Result<(), OrchestrationError> {
    tokio_nap().await;
    Ok(())
}

/// A future nothing will ever wake, out of the macro's sight.
async fn never() {
    futures::future::pending::<()>().await;
}

#[orchestration]
async fn waits_forever(_ctx: OrchestrationContext, _in: ()) -> Result<(), OrchestrationError> {
    never().await;
    Ok(())
}

#[tokio::test]
async fn a_tokio_timer_in_an_orchestration_fails_at_once_and_names_the_replacement() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = naps::start(env.client(), "naps", ()).await.unwrap();
    match handle.result().await {
        Err(ClientError::Blocked { error, .. }) => {
            assert!(error.contains("panicked"), "{error}");
            assert!(error.contains("ctx.sleep"), "{error}");
        }
        other => panic!("expected a blocked instance, got {other:?}"),
    }
}

#[tokio::test]
async fn waiting_on_a_future_quark_does_not_drive_fails_at_once_and_says_so() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = waits_forever::start(env.client(), "forever", ())
        .await
        .unwrap();
    match handle.result().await {
        Err(ClientError::Blocked { error, .. }) => {
            assert!(error.contains("not on anything Quark drives"), "{error}");
            assert!(error.contains("ctx.timeout"), "{error}");
        }
        other => panic!("expected a blocked instance, got {other:?}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Race {
    /// Serve the activity's queue (else it never runs and the timeout fires).
    served: bool,
}

#[orchestration]
async fn times_out(ctx: OrchestrationContext, race: Race) -> Result<String, OrchestrationError> {
    let queue = if race.served { "default" } else { "nobody" };
    let call = ctx.call_with(step, &5, ActivityOptions::default().queue(queue));
    match ctx.timeout(Duration::from_secs(30), call).await {
        Ok(v) => Ok(format!("done: {}", v?)),
        Err(OrchestrationError::TimedOut { after }) => Ok(format!("timed out after {after:?}")),
        Err(e) => Err(e),
    }
}

#[tokio::test]
async fn ctx_timeout_fires_on_the_durable_clock_and_is_cancelled_when_the_call_wins() {
    let env = TestEnv::new(registry()).await.unwrap();
    let slow = times_out::start(env.client(), "slow", Race { served: false })
        .await
        .unwrap();
    assert_eq!(slow.result().await.unwrap(), "timed out after 30s");
    let fast = times_out::start(env.client(), "fast", Race { served: true })
        .await
        .unwrap();
    assert_eq!(fast.result().await.unwrap(), "done: 5");
    let history = env.client().history("fast").await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerCancelled { .. })),
        "the timer the call beat is cancelled in the history"
    );
    // Both replay.
    for id in ["slow", "fast"] {
        let history = env.client().history(id).await.unwrap();
        assert!(Replayer::new(registry()).replay(&history).unwrap().is_ok());
    }
}
