//! Golden histories: recorded runs of a sample orchestration, checked in under
//! `tests/histories/`, must replay against the current code.
//!
//! After an intended, compatible change, or to add a scenario, re-record them with
//! `QUARK_BLESS_HISTORIES=1 cargo test -p quark-workflow --test replay -- --test-threads=1` and
//! review the diff.
//! (The recorded call sites point into this file: re-record after moving the sample code.)

use std::path::PathBuf;
use std::time::Duration;

use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, OrchestrationContext, OrchestrationError,
    Registry, ReplayReport, Replayer, activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    item: String,
    cents: u64,
}

#[activity]
async fn reserve_stock(_ctx: ActivityContext, item: String) -> Result<String, ActivityError> {
    Ok(format!("reservation of {item}"))
}

#[activity]
async fn charge_card(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    Ok(format!("receipt for {cents}"))
}

#[activity]
async fn refund(_ctx: ActivityContext, receipt: String) -> Result<(), ActivityError> {
    let _ = receipt;
    Ok(())
}

#[orchestration(name = "sample_order")]
async fn sample_order(
    ctx: OrchestrationContext,
    order: Order,
) -> Result<String, OrchestrationError> {
    let reservation = ctx.call(reserve_stock, &order.item).await?;
    let receipt = ctx.call(charge_card, &order.cents).await?;
    let approval = ctx
        .wait_for_signal::<bool>("approve")
        .timeout(Duration::from_secs(3600));
    match approval.await {
        Ok(Some(true)) => Ok(format!("{reservation}, {receipt}")),
        Ok(_) => {
            ctx.call(refund, &receipt).await?;
            Err(OrchestrationError::failed("not approved in time"))
        }
        Err(OrchestrationError::Cancelled { reason }) => {
            ctx.call(refund, &receipt).await?;
            Err(OrchestrationError::Cancelled { reason })
        }
        Err(e) => Err(e),
    }
}

/// The same orchestration after an incompatible edit: it charges before it reserves.
#[orchestration(name = "sample_order")]
async fn sample_order_reordered(
    ctx: OrchestrationContext,
    order: Order,
) -> Result<String, OrchestrationError> {
    let receipt = ctx.call(charge_card, &order.cents).await?;
    let reservation = ctx.call(reserve_stock, &order.item).await?;
    Ok(format!("{reservation}, {receipt}"))
}

fn registry() -> Registry {
    Registry::new()
        .register(sample_order)
        .register(reserve_stock)
        .register(charge_card)
        .register(refund)
}

fn histories() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/histories")
}

const SCENARIOS: [&str; 3] = ["approved", "timed_out", "cancelled"];

/// Runs one scenario live and returns its history as pretty JSON.
async fn record(scenario: &str) -> String {
    let env = TestEnv::new(registry()).await.unwrap();
    let order = Order {
        item: "teapot".into(),
        cents: 1999,
    };
    let handle = sample_order::start(env.client(), scenario, order)
        .await
        .unwrap();
    env.run_until_idle().await.unwrap();
    let result = match scenario {
        "approved" => {
            handle.signal("approve", &true).await.unwrap();
            handle.result().await
        }
        "cancelled" => {
            handle.cancel("customer asked").await.unwrap();
            handle.result().await
        }
        _ => handle.result().await,
    };
    match (scenario, &result) {
        ("approved", Ok(_))
        | ("timed_out", Err(ClientError::Failed { .. }))
        | ("cancelled", Err(ClientError::Cancelled { .. })) => {}
        _ => panic!("scenario {scenario} ended with {result:?}"),
    }
    let history = env.client().history(scenario).await.unwrap();
    serde_json::to_string_pretty(&history).unwrap() + "\n"
}

#[tokio::test]
async fn golden_histories_replay_against_the_current_code() {
    let bless = std::env::var_os("QUARK_BLESS_HISTORIES").is_some();
    let replayer = Replayer::new(registry());
    for scenario in SCENARIOS {
        let path = histories().join(format!("{scenario}.json"));
        if bless {
            std::fs::write(&path, record(scenario).await).unwrap();
        }
        let report = replayer.replay_file(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (record it with QUARK_BLESS_HISTORIES=1)",
                path.display()
            )
        });
        match report {
            ReplayReport::Ok { events, .. } => assert!(events > 5, "{scenario}: {events} events"),
            ReplayReport::Diverged(d) => panic!("{scenario}: {d}"),
            other => panic!("{scenario}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_fresh_recording_matches_the_golden_file_event_for_event() {
    // Beyond replaying: the current code, run live, records the same events (ignoring times,
    // hashes and call sites, which move with the source).
    let strip = |json: &str| -> Vec<serde_json::Value> {
        let mut events: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        for e in &mut events {
            let obj = e.as_object_mut().unwrap();
            obj.remove("recorded_at");
            obj.remove("hash");
            if let Some(b) = obj["event"]
                .as_object_mut()
                .and_then(|o| o.values_mut().next())
                .and_then(|body| body.as_object_mut())
            {
                b.remove("site");
                b.remove("fire_at");
            }
        }
        events
    };
    let golden = std::fs::read_to_string(histories().join("timed_out.json")).unwrap();
    assert_eq!(strip(&record("timed_out").await), strip(&golden));
}

#[tokio::test]
async fn an_incompatible_edit_is_reported_with_both_source_lines() {
    // Recorded now, so that its call sites point at this file as it is.
    let history = record("approved").await;
    let replayer = Replayer::new(Registry::new().register(sample_order_reordered));
    let report = replayer.replay_json(&history).unwrap();
    let ReplayReport::Diverged(d) = report else {
        panic!("expected a divergence, got {report:?}");
    };
    assert_eq!(d.error.expected, "ActivityScheduled(reserve_stock)");
    assert_eq!(d.error.actual, "asks for ActivityScheduled(charge_card)");
    let expected = d.expected_line.as_deref().unwrap_or_default();
    let actual = d.actual_line.as_deref().unwrap_or_default();
    assert!(expected.contains("ctx.call(reserve_stock"), "{d}");
    assert!(actual.contains("ctx.call(charge_card"), "{d}");
}
