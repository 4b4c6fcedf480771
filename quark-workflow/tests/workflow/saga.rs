//! Sagas on the test environment: compensations, their retries, stuck sagas, cancellation,
//! deadlines, and replay of what was recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::HistoryEvent;
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ActivityOptions, ClientError, OrchestrationContext,
    OrchestrationError, Registry, ReplayReport, Replayer, RetryPolicy, StuckCompensation, activity,
    orchestration,
};
use serde::{Deserialize, Serialize};

#[activity]
async fn book_flight(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Ok(format!("flight-{id}"))
}

#[activity]
async fn book_hotel(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Ok(format!("hotel-{id}"))
}

#[activity]
async fn book_car(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Ok(format!("car-{id}"))
}

#[activity]
async fn cancel_flight(_ctx: ActivityContext, booking: String) -> Result<(), ActivityError> {
    let _ = booking;
    Ok(())
}

// One attempt per call: the retries these tests count are the saga's own.
#[activity(retry(max_attempts = 1, initial = "1s", max = "1s"))]
async fn cancel_hotel(_ctx: ActivityContext, booking: String) -> Result<(), ActivityError> {
    let _ = booking;
    Ok(())
}

#[activity]
async fn cancel_car(_ctx: ActivityContext, booking: String) -> Result<(), ActivityError> {
    let _ = booking;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trip {
    id: String,
    /// Wait for the signal `go` before booking the car (for cancellation).
    wait: bool,
    /// The saga's deadline, in seconds.
    deadline_secs: Option<u64>,
}

impl Trip {
    fn plain(id: &str) -> Self {
        Trip {
            id: id.into(),
            wait: false,
            deadline_secs: None,
        }
    }
}

#[orchestration]
async fn trip(ctx: OrchestrationContext, trip: Trip) -> Result<String, OrchestrationError> {
    let mut saga = ctx.saga().compensation_retry(RetryPolicy::new(
        4,
        Duration::from_secs(5),
        Duration::from_secs(60),
    ));
    if let Some(s) = trip.deadline_secs {
        saga = saga.deadline(Duration::from_secs(s));
    }
    saga.run(|saga| async move {
        let flight = ctx.call(book_flight, &trip.id).await?;
        saga.add(cancel_flight, &flight)?;
        let hotel = saga
            .step(book_hotel, &trip.id, cancel_hotel, |h| h.clone())
            .await?;
        if trip.wait {
            ctx.wait_for_signal::<()>("go").await?;
        }
        let car = ctx.call(book_car, &trip.id).await?;
        saga.add(cancel_car, &car)?;
        Ok(format!("{flight}, {hotel}, {car}"))
    })
    .await
}

fn registry() -> Registry {
    Registry::new()
        .register(trip)
        .register(book_flight)
        .register(book_hotel)
        .register(book_car)
        .register(cancel_flight)
        .register(cancel_hotel)
        .register(cancel_car)
}

/// The compensations that ran, in order, as `activity:input`.
type Log = Arc<Mutex<Vec<String>>>;

/// A test environment whose compensations write to a log; `cancel_hotel` fails its first
/// `hotel_failures` calls.
async fn env(hotel_failures: u32) -> (TestEnv, Log) {
    let env = TestEnv::new(registry()).await.unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    env.mock_activity::<cancel_flight>(move |b| {
        l.lock().unwrap().push(format!("cancel_flight:{b}"));
        Ok(())
    });
    let l = log.clone();
    let calls = Arc::new(Mutex::new(0u32));
    env.mock_activity::<cancel_hotel>(move |b| {
        let mut n = calls.lock().unwrap();
        *n += 1;
        l.lock().unwrap().push(format!("cancel_hotel#{n}:{b}"));
        if *n <= hotel_failures {
            return Err(ActivityError::message("hotel API down"));
        }
        Ok(())
    });
    let l = log.clone();
    env.mock_activity::<cancel_car>(move |b| {
        l.lock().unwrap().push(format!("cancel_car:{b}"));
        Ok(())
    });
    (env, log)
}

fn no_cars(env: &TestEnv) {
    env.mock_activity::<book_car>(|_| Err(ActivityError::message("no cars left").terminal()));
}

fn logged(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

async fn assert_replays(env: &TestEnv, id: &str) {
    assert_replays_with(env, id, registry()).await;
}

#[tokio::test]
async fn a_failing_third_step_compensates_in_reverse_order_and_returns_its_error() {
    let (env, log) = env(0).await;
    no_cars(&env);
    let handle = trip::start(env.client(), "t1", Trip::plain("t1"))
        .await
        .unwrap();
    match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => {
            assert_eq!(failure.message, "activity `book_car` failed: no cars left");
            assert!(StuckCompensation::from_failure(&failure).is_none());
        }
        other => panic!("expected the step's failure, got {other:?}"),
    }
    assert_eq!(
        logged(&log),
        ["cancel_hotel#1:hotel-t1", "cancel_flight:flight-t1"]
    );
    assert_replays(&env, "t1").await;
}

#[tokio::test]
async fn nothing_compensates_when_every_step_succeeds() {
    let (env, log) = env(0).await;
    let handle = trip::start(env.client(), "t2", Trip::plain("t2"))
        .await
        .unwrap();
    assert_eq!(
        handle.result().await.unwrap(),
        "flight-t2, hotel-t2, car-t2"
    );
    assert!(logged(&log).is_empty(), "{:?}", logged(&log));
    let history = env.client().history("t2").await.unwrap();
    assert!(!history.iter().any(|e| matches!(
        &e.event,
        HistoryEvent::ActivityScheduled { activity, .. } if activity.starts_with("cancel_")
    )));
}

#[tokio::test]
async fn a_compensation_that_fails_twice_is_retried_until_it_succeeds() {
    let (env, log) = env(2).await;
    no_cars(&env);
    let handle = trip::start(env.client(), "t3", Trip::plain("t3"))
        .await
        .unwrap();
    assert!(matches!(
        handle.result().await,
        Err(ClientError::Failed { failure, .. }) if failure.message.contains("no cars left")
    ));
    assert_eq!(
        logged(&log),
        [
            "cancel_hotel#1:hotel-t3",
            "cancel_hotel#2:hotel-t3",
            "cancel_hotel#3:hotel-t3",
            "cancel_flight:flight-t3"
        ]
    );
    // The saga waited between its calls on durable timers (5 s, then 10 s).
    let history = env.client().history("t3").await.unwrap();
    let timers = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::TimerCreated { .. }))
        .count();
    assert_eq!(timers, 2);
    assert_replays(&env, "t3").await;
}

#[tokio::test]
async fn a_compensation_that_never_succeeds_makes_the_saga_stuck_and_names_it() {
    let (env, log) = env(u32::MAX).await;
    no_cars(&env);
    let handle = trip::start(env.client(), "t4", Trip::plain("t4"))
        .await
        .unwrap();
    let failure = match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => failure,
        other => panic!("expected a stuck saga, got {other:?}"),
    };
    assert!(
        failure
            .message
            .starts_with("saga stuck: compensation `cancel_hotel` failed 4 time(s)"),
        "{}",
        failure.message
    );
    let stuck = StuckCompensation::from_failure(&failure).expect("the stuck marker");
    assert_eq!(stuck.compensation, "cancel_hotel");
    assert_eq!(stuck.input, serde_json::json!("hotel-t4"));
    assert_eq!(stuck.attempts, 4);
    assert_eq!(stuck.last_error, "hotel API down");
    assert_eq!(stuck.cause, "activity `book_car` failed: no cars left");
    // The flight was booked before the hotel: it is not cancelled while the hotel is not.
    assert_eq!(stuck.skipped, ["cancel_flight"]);
    assert_eq!(logged(&log).len(), 4);
    assert!(logged(&log).iter().all(|l| l.starts_with("cancel_hotel")));
    assert_replays(&env, "t4").await;
}

#[tokio::test]
async fn cancellation_mid_saga_compensates_and_ends_cancelled() {
    let (env, log) = env(1).await;
    let mut t = Trip::plain("t5");
    t.wait = true;
    let handle = trip::start(env.client(), "t5", t).await.unwrap();
    env.run_until_idle().await.unwrap();
    assert!(logged(&log).is_empty());
    handle.cancel("plans changed").await.unwrap();
    match handle.result().await {
        Err(ClientError::Cancelled { reason, .. }) => assert_eq!(reason, "plans changed"),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert_eq!(
        logged(&log),
        [
            "cancel_hotel#1:hotel-t5",
            "cancel_hotel#2:hotel-t5",
            "cancel_flight:flight-t5"
        ]
    );
    assert_replays(&env, "t5").await;
}

#[tokio::test]
async fn a_passed_deadline_compensates_and_fails_with_a_timeout() {
    let (env, log) = env(0).await;
    let mut t = Trip::plain("t6");
    t.wait = true;
    t.deadline_secs = Some(3600);
    let handle = trip::start(env.client(), "t6", t).await.unwrap();
    env.advance(Duration::from_secs(3599)).await.unwrap();
    assert!(logged(&log).is_empty(), "compensated before the deadline");
    match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => {
            assert_eq!(failure.message, "saga deadline of 3600s passed")
        }
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert_eq!(
        logged(&log),
        ["cancel_hotel#1:hotel-t6", "cancel_flight:flight-t6"]
    );
    assert_replays(&env, "t6").await;
}

#[tokio::test]
async fn a_saga_that_finishes_before_its_deadline_cancels_the_timer() {
    let (env, log) = env(0).await;
    let mut t = Trip::plain("t7");
    t.deadline_secs = Some(3600);
    let handle = trip::start(env.client(), "t7", t).await.unwrap();
    assert_eq!(
        handle.result().await.unwrap(),
        "flight-t7, hotel-t7, car-t7"
    );
    assert!(logged(&log).is_empty());
    let history = env.client().history("t7").await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerCancelled { .. }))
    );
    assert_replays(&env, "t7").await;
}

#[orchestration]
async fn parallel_undo(ctx: OrchestrationContext, id: String) -> Result<(), OrchestrationError> {
    let saga = ctx.saga().parallel();
    saga.run(|saga| async move {
        let flight = ctx.call(book_flight, &id).await?;
        saga.add(cancel_flight, &flight)?;
        let hotel = ctx.call(book_hotel, &id).await?;
        saga.add(cancel_hotel, &hotel)?;
        ctx.call(book_car, &id).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn parallel_compensations_are_scheduled_together_newest_first() {
    let env = TestEnv::new(registry().register(parallel_undo))
        .await
        .unwrap();
    no_cars(&env);
    let handle = parallel_undo::start(env.client(), "p1", "p1".to_string())
        .await
        .unwrap();
    assert!(handle.result().await.is_err());
    let history = env.client().history("p1").await.unwrap();
    let scheduled: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::ActivityScheduled { activity, .. } => Some(activity.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        scheduled,
        [
            "book_flight",
            "book_hotel",
            "book_car",
            "cancel_hotel",
            "cancel_flight"
        ]
    );
    // Both were scheduled in one turn, before either completed: adjacent in the history.
    let at = |name: &str| {
        history
            .iter()
            .position(|e| matches!(&e.event, HistoryEvent::ActivityScheduled { activity, .. } if activity == name))
            .unwrap()
    };
    assert_eq!(at("cancel_flight"), at("cancel_hotel") + 1, "{history:#?}");
    assert_replays_with(&env, "p1", registry().register(parallel_undo)).await;
}

async fn assert_replays_with(env: &TestEnv, id: &str, registry: Registry) {
    let history = env.client().history(id).await.unwrap();
    let report = Replayer::new(registry).replay(&history).unwrap();
    assert!(report.is_ok(), "{id}: {report:?}");
}

#[activity]
async fn refund_later(_ctx: ActivityContext, receipt: String) -> Result<(), ActivityError> {
    let _ = receipt;
    Ok(())
}

#[orchestration]
async fn pay(ctx: OrchestrationContext, id: String) -> Result<(), OrchestrationError> {
    ctx.saga()
        .run(|saga| async move {
            let receipt = ctx.call(book_flight, &id).await?;
            // On a queue the test environment serves only when told to: the refund stays pending.
            let later = ActivityOptions::default().queue("refunds");
            saga.add_with(refund_later, &receipt, later)?;
            ctx.call(book_car, &id).await?;
            Ok(())
        })
        .await
}

#[tokio::test]
async fn a_cancellation_during_compensation_lets_it_finish() {
    let registry = || registry().register(pay).register(refund_later);
    let env = TestEnv::new(registry()).await.unwrap();
    no_cars(&env);
    let refunded: Log = Arc::default();
    let r = refunded.clone();
    env.mock_activity::<refund_later>(move |receipt| {
        r.lock().unwrap().push(receipt);
        Ok(())
    });
    let handle = pay::start(env.client(), "c1", "c1".to_string())
        .await
        .unwrap();
    env.run_until_idle().await.unwrap();
    // The refund is scheduled and waits for its queue.
    let history = env.client().history("c1").await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.event,
        HistoryEvent::ActivityScheduled { activity, .. } if activity == "refund_later"
    )));
    handle.cancel("too late").await.unwrap();
    env.run_until_idle().await.unwrap();
    env.serve("refunds");
    match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => {
            assert_eq!(failure.message, "activity `book_car` failed: no cars left")
        }
        other => panic!("expected the step's failure, got {other:?}"),
    }
    assert_eq!(*refunded.lock().unwrap(), ["flight-c1"]);
    // The refund was scheduled once: the saga waited on the same call after the cancellation.
    let history = env.client().history("c1").await.unwrap();
    let refunds = history
        .iter()
        .filter(|e| matches!(&e.event, HistoryEvent::ActivityScheduled { activity, .. } if activity == "refund_later"))
        .count();
    assert_eq!(refunds, 1);
    assert!(
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::CancelRequested { .. }))
    );
    assert_replays_with(&env, "c1", registry()).await;
}

#[tokio::test]
async fn a_terminal_compensation_error_makes_the_saga_stuck_at_once() {
    let (env, log) = env(0).await;
    no_cars(&env);
    env.mock_activity::<cancel_flight>(|_| {
        Err(ActivityError::message("ticket already used").terminal())
    });
    let handle = trip::start(env.client(), "t8", Trip::plain("t8"))
        .await
        .unwrap();
    let failure = match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => failure,
        other => panic!("expected a stuck saga, got {other:?}"),
    };
    let stuck = StuckCompensation::from_failure(&failure).expect("the stuck marker");
    assert_eq!(stuck.compensation, "cancel_flight");
    assert_eq!(stuck.attempts, 1);
    assert_eq!(stuck.last_error, "ticket already used");
    assert!(stuck.skipped.is_empty());
    assert_eq!(logged(&log), ["cancel_hotel#1:hotel-t8"]);
    let history = env.client().history("t8").await.unwrap();
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerCreated { .. })),
        "no backoff before a terminal error"
    );
    assert_replays(&env, "t8").await;
}

/// `trip` with its compensations registered in the other order: a code change the replay of an
/// old history must catch.
#[orchestration(name = "trip")]
async fn trip_reordered(ctx: OrchestrationContext, t: Trip) -> Result<String, OrchestrationError> {
    let saga = ctx.saga();
    saga.run(|saga| async move {
        let flight = ctx.call(book_flight, &t.id).await?;
        let hotel = ctx.call(book_hotel, &t.id).await?;
        saga.add(cancel_hotel, &hotel)?;
        saga.add(cancel_flight, &flight)?;
        let car = ctx.call(book_car, &t.id).await?;
        Ok(format!("{flight}, {hotel}, {car}"))
    })
    .await
}

#[tokio::test]
async fn replay_catches_compensations_reordered_in_the_code() {
    let (env, _log) = env(0).await;
    no_cars(&env);
    let handle = trip::start(env.client(), "t9", Trip::plain("t9"))
        .await
        .unwrap();
    assert!(handle.result().await.is_err());
    let history = env.client().history("t9").await.unwrap();
    let changed = Registry::new().register(trip_reordered);
    let report = Replayer::new(changed).replay(&history).unwrap();
    assert!(
        matches!(&report, ReplayReport::Diverged(d) if d.error.to_string().contains("cancel_flight")),
        "{report:?}"
    );
}
