//! The test environment and the client, end to end on an in-memory SQLite store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quark_history::{IdReusePolicy, InstanceFilter, InstanceStatus};
use quark_workflow::testing::{START, TestEnv};
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, OrchestrationContext, OrchestrationError,
    Registry, Signal, StartOptions, activity, orchestration,
};

#[activity(retry(max_attempts = 3, initial = "1s", max = "10s"))]
async fn charge_card(ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    ctx.heartbeat(&format!("attempt {}", ctx.attempt()));
    Ok(format!("charged {cents}"))
}

#[activity]
async fn refund(_ctx: ActivityContext, receipt: String) -> Result<String, ActivityError> {
    Ok(format!("refunded {receipt}"))
}

#[orchestration]
async fn order(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    let receipt = ctx.call(charge_card, &cents).await?;
    match ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await {
        Err(OrchestrationError::Cancelled { reason }) => {
            ctx.call(refund, &receipt).await?;
            Err(OrchestrationError::Cancelled { reason })
        }
        other => other.map(|()| receipt),
    }
}

#[orchestration]
async fn approval(ctx: OrchestrationContext, _in: ()) -> Result<String, OrchestrationError> {
    let who = ctx.wait_for_signal::<String>("approve").await?;
    Ok(format!("approved by {who}"))
}

/// A bid: declared once, sent by the test and awaited by `auction`.
const BID: Signal<u64> = Signal::new("bid");

/// Takes bids until none comes for an hour; returns the highest.
#[orchestration]
async fn auction(ctx: OrchestrationContext, _in: ()) -> Result<u64, OrchestrationError> {
    let mut best = 0;
    while let Some(bid) = ctx.wait_for(BID).timeout(Duration::from_secs(3600)).await? {
        best = best.max(bid);
    }
    Ok(best)
}

#[orchestration]
async fn parent(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    let child = ctx.call_child(order, &cents).await?;
    Ok(format!("child said: {child}"))
}

#[orchestration]
async fn countdown(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    if n == 0 {
        return Ok(ctx.history_len() as u32);
    }
    ctx.sleep(Duration::from_secs(1)).await?;
    ctx.continue_as_new(&(n - 1))
}

fn registry() -> Registry {
    Registry::new()
        .register(order)
        .register(auction)
        .register(approval)
        .register(parent)
        .register(countdown)
        .register(charge_card)
        .register(refund)
}

#[tokio::test]
async fn a_thirty_day_timer_finishes_on_the_virtual_clock() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = order::start(env.client(), "order-1", 500).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "charged 500");
    let elapsed = quark_history::Clock::now(env.clock()).since(START);
    assert!(
        elapsed >= Duration::from_secs(30 * 24 * 3600),
        "{elapsed:?}"
    );
    let record = handle.describe().await.unwrap();
    assert_eq!(record.status, InstanceStatus::Completed);
}

#[tokio::test]
async fn a_mock_replaces_an_activity_and_retries_follow_the_policy() {
    let env = TestEnv::new(registry()).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    env.mock_activity::<charge_card>(move |cents| {
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(ActivityError::message("card network down"));
        }
        Ok(format!("mock charged {cents}"))
    });
    let handle = order::start(env.client(), "order-2", 7).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "mock charged 7");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_terminal_activity_error_fails_the_orchestration() {
    let env = TestEnv::new(registry()).await.unwrap();
    env.mock_activity::<charge_card>(|_| Err(ActivityError::message("declined").terminal()));
    let handle = order::start(env.client(), "order-3", 7).await.unwrap();
    match handle.result().await {
        Err(ClientError::Failed { failure, .. }) => {
            assert_eq!(failure.message, "activity `charge_card` failed: declined")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signal_resumes_a_waiting_orchestration() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = approval::start(env.client(), "approval-1", ())
        .await
        .unwrap();
    match handle.result().await {
        Err(ClientError::Stuck { reason, .. }) => assert!(reason.contains("signal"), "{reason}"),
        other => panic!("expected it to wait, got {other:?}"),
    }
    handle.signal("approve", &"alice").await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "approved by alice");
}

#[tokio::test]
async fn a_typed_signal_is_sent_and_received_through_one_declaration() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = auction::start(env.client(), "auction-1", ()).await.unwrap();
    handle.send(BID, &30).await.unwrap();
    env.client().send("auction-1", BID, &70).await.unwrap();
    // Sent untyped under the same name, it is the same signal.
    handle.signal(BID.name(), &50u64).await.unwrap();
    env.run_until_idle().await.unwrap();
    env.advance(Duration::from_secs(3601)).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 70);
    let bids = env
        .client()
        .history("auction-1")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(&e.event, quark_history::HistoryEvent::SignalReceived { name, .. } if name == "bid")
        })
        .count();
    assert_eq!(bids, 3);
}

#[tokio::test]
async fn cancellation_runs_compensation_and_ends_cancelled() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = order::start(env.client(), "order-4", 9).await.unwrap();
    env.run_until_idle().await.unwrap();
    handle.cancel("customer changed their mind").await.unwrap();
    match handle.result().await {
        Err(ClientError::Cancelled { reason, .. }) => {
            assert_eq!(reason, "customer changed their mind")
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    let history = env.client().history("order-4").await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.event,
        quark_history::HistoryEvent::ActivityScheduled { activity, .. } if activity == "refund"
    )));
}

#[tokio::test]
async fn terminate_stops_an_instance_without_running_its_code() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = approval::start(env.client(), "approval-2", ())
        .await
        .unwrap();
    handle.terminate("obsolete").await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(ClientError::Terminated { reason, .. }) if reason == "obsolete"
    ));
    assert!(handle.signal("approve", &"bob").await.is_err());
}

#[tokio::test]
async fn the_id_reuse_policy_decides_about_a_taken_id() {
    let env = TestEnv::new(registry()).await.unwrap();
    order::start(env.client(), "dup", 1).await.unwrap();
    assert!(matches!(
        order::start(env.client(), "dup", 1).await,
        Err(ClientError::Store(
            quark_history::Error::DuplicateInstance { .. }
        ))
    ));
    let again = env
        .client()
        .start_with::<order>(
            "dup",
            &1,
            StartOptions::default().id_reuse(IdReusePolicy::ReturnExisting),
        )
        .await
        .unwrap();
    assert_eq!(again.result().await.unwrap(), "charged 1");
    let listed = env
        .client()
        .list(InstanceFilter {
            instance_type: Some("order".into()),
            ..InstanceFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn a_child_orchestration_completes_into_its_parent() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = parent::start(env.client(), "parent-1", 42).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "child said: charged 42");
    let child = env.client().describe("parent-1:1").await.unwrap();
    assert_eq!(child.parent_id.as_deref(), Some("parent-1"));
}

#[tokio::test]
async fn result_follows_continue_as_new_to_the_last_run() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = countdown::start(env.client(), "count", 3).await.unwrap();
    // The last run's history: WorkflowStarted only, when `history_len` is read.
    assert_eq!(handle.result().await.unwrap(), 1);
    let first = env.client().describe("count").await.unwrap();
    assert_eq!(first.status, InstanceStatus::ContinuedAsNew);
    assert_eq!(
        env.client().describe("count~4").await.unwrap().status,
        InstanceStatus::Completed
    );
}

#[tokio::test]
async fn heartbeats_reach_the_environment_with_their_progress() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = order::start(env.client(), "order-hb", 5).await.unwrap();
    handle.result().await.unwrap();
    let beats = env.heartbeats();
    assert_eq!(beats.len(), 1);
    assert_eq!(beats[0].0.activity, "charge_card");
    assert_eq!(
        beats[0].1,
        Some(quark_history::Payload::json(&"attempt 1").unwrap())
    );
}

#[tokio::test]
async fn an_unregistered_orchestration_type_is_reported_not_lost() {
    let env = TestEnv::new(Registry::new().register(charge_card))
        .await
        .unwrap();
    let handle = order::start(env.client(), "orphan", 1).await.unwrap();
    match handle.result().await {
        Err(ClientError::Blocked { error, .. }) => {
            assert!(
                error.contains("no orchestration `order` is registered"),
                "{error}"
            )
        }
        other => panic!("expected it to be blocked, got {other:?}"),
    }
    // Not lost: blocked until a worker that has the code re-drives its turn.
    assert_eq!(
        handle.describe().await.unwrap().status,
        InstanceStatus::Blocked
    );
}

#[tokio::test]
async fn a_malformed_input_fails_the_instance_with_a_payload_error() {
    let env = TestEnv::new(registry()).await.unwrap();
    let input = quark_history::Payload::json(&"not a number").unwrap();
    env.store()
        .create_instance(
            quark_history::NewInstance::new("bad-input", "order", input),
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();
    match env.client().result::<String>("bad-input").await {
        Err(ClientError::Failed { failure, .. }) => {
            assert!(
                failure.message.starts_with("payload:"),
                "{}",
                failure.message
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_child_still_completes_after_its_parent_was_terminated() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = parent::start(env.client(), "parent-2", 3).await.unwrap();
    // The parent starts its child; the child charges and starts its 30-day timer.
    env.run_until_idle().await.unwrap();
    handle.terminate("no longer needed").await.unwrap();
    let child = order::handle(env.client(), "parent-2:1");
    assert_eq!(child.result().await.unwrap(), "charged 3");
    assert!(matches!(
        handle.result().await,
        Err(ClientError::Terminated { .. })
    ));
}

#[tokio::test]
async fn a_panicking_activity_is_retried_like_any_failure() {
    let env = TestEnv::new(registry()).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    env.mock_activity::<charge_card>(move |cents| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("activity bug on the first attempt");
        }
        Ok(format!("charged {cents} at last"))
    });
    let handle = order::start(env.client(), "order-panic", 8).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "charged 8 at last");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_running_child() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = parent::start(env.client(), "parent-3", 4).await.unwrap();
    // The child charges and starts its 30-day timer.
    env.run_until_idle().await.unwrap();
    handle.cancel("order withdrawn").await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(ClientError::Cancelled { reason, .. }) if reason == "order withdrawn"
    ));
    let child = order::handle(env.client(), "parent-3:1");
    match child.result().await {
        Err(ClientError::Cancelled { reason, .. }) => {
            assert_eq!(reason, "parent `parent-3` cancelled: order withdrawn")
        }
        other => panic!("expected the child to be cancelled, got {other:?}"),
    }
    // The child compensated.
    let history = env.client().history("parent-3:1").await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.event,
        quark_history::HistoryEvent::ActivityScheduled { activity, .. } if activity == "refund"
    )));
}

#[tokio::test]
async fn an_instance_on_another_queue_runs_once_that_queue_is_served() {
    let env = TestEnv::new(registry()).await.unwrap();
    let handle = env
        .client()
        .start_with::<order>("elsewhere", &6, StartOptions::default().queue("priority"))
        .await
        .unwrap();
    assert_eq!(env.run_until_idle().await.unwrap(), 0);
    env.serve("priority");
    assert_eq!(handle.result().await.unwrap(), "charged 6");
    assert_eq!(handle.describe().await.unwrap().queue, "priority");
}

/// Sends one message to a webhook and one to a callback, with its result.
#[activity]
async fn announce(ctx: ActivityContext, what: String) -> Result<(), ActivityError> {
    let outbox = ctx.outbox();
    outbox.send(
        quark_history::Destination::http("https://example.invalid/hook"),
        &what,
    )?;
    outbox.send(quark_history::Destination::callback("audit"), &what)?;
    Ok(())
}

#[orchestration]
async fn announcer(ctx: OrchestrationContext, what: String) -> Result<(), OrchestrationError> {
    ctx.call(announce, &what).await
}

#[tokio::test]
async fn the_environment_relays_the_outbox_records_webhooks_and_calls_callbacks() {
    let env = TestEnv::new(Registry::new().register(announcer).register(announce))
        .await
        .unwrap();
    let audited = Arc::new(std::sync::Mutex::new(Vec::new()));
    env.outbox_callback("audit", {
        let audited = Arc::clone(&audited);
        move |m| {
            audited.lock().unwrap().push(m.payload.clone());
            Ok(())
        }
    });
    let handle = announcer::start(env.client(), "news", "shipped".to_string())
        .await
        .unwrap();
    handle.result().await.unwrap();
    env.run_until_idle().await.unwrap();

    let sent = env.outbox_sent();
    assert_eq!(
        sent.len(),
        1,
        "only the webhook's message is recorded: {sent:?}"
    );
    assert_eq!(
        sent[0].destination,
        quark_history::Destination::http("https://example.invalid/hook")
    );
    assert_eq!(sent[0].payload, br#""shipped""#.to_vec());
    assert_eq!(*audited.lock().unwrap(), vec![br#""shipped""#.to_vec()]);
    let pending = env
        .store()
        .list_outbox(quark_history::OutboxFilter::default())
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        pending
            .iter()
            .all(|m| m.state == quark_history::MessageState::Sent),
        "every message is settled as sent: {pending:?}"
    );
}
