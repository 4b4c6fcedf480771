//! Failures that used to leave an instance silently running, under the test environment: a
//! code change that breaks replay (or a panic) blocks the instance where everyone looks, until
//! fixed code is deployed and the turn re-driven; an activity result over the payload limit fails
//! into the orchestration, which decides.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quark_history::{InstanceFilter, InstanceStatus};
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, OrchestrationContext, OrchestrationError,
    Registry, activity, orchestration,
};

#[activity]
async fn step(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
    Ok(name)
}

/// The code as deployed when the instance started.
#[orchestration(name = "shipment")]
async fn shipment_v1(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    let packed = ctx.call(step, &"pack".to_string()).await?; // v1: pack
    ctx.wait_for_signal::<()>("go").await?;
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("{packed}, {shipped}"))
}

/// A change deployed without a patch: it waits where the history holds an activity.
#[orchestration(name = "shipment")]
async fn shipment_v2(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.sleep(Duration::from_secs(60)).await?; // v2: wait first
    ctx.wait_for_signal::<()>("go").await?;
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("waited, {shipped}"))
}

/// The fix: the new step behind a patch, the recorded one kept.
#[orchestration(name = "shipment")]
async fn shipment_v3(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    let packed = ctx.call(step, &"pack".to_string()).await?;
    ctx.wait_for_signal::<()>("go").await?;
    if ctx.patched("insure") {
        ctx.call(step, &"insure".to_string()).await?;
    }
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("{packed}, {shipped}"))
}

/// A bug that only shows on the second turn.
#[orchestration(name = "shipment")]
async fn shipment_panics(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.call(step, &"pack".to_string()).await?;
    ctx.wait_for_signal::<()>("go").await?;
    panic!("the label printer is not configured");
}

/// The line of this file that holds `needle`.
fn line_of(needle: &str) -> usize {
    let src = include_str!("blocked.rs");
    1 + src.lines().position(|l| l.contains(needle)).unwrap()
}

async fn blocked_ids(env: &TestEnv) -> Vec<String> {
    env.client()
        .list(InstanceFilter {
            statuses: vec![InstanceStatus::Blocked],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn a_nondeterministic_deploy_blocks_the_instance_until_fixed_code_is_redriven() {
    let env = TestEnv::new(Registry::new().register(shipment_v1).register(step))
        .await
        .unwrap();
    let handle = shipment_v1::start(env.client(), "s-1", ()).await.unwrap();
    env.run_until_idle().await.unwrap();

    env.deploy(Registry::new().register(shipment_v2).register(step));
    handle.signal("go", &()).await.unwrap();
    env.run_until_idle().await.unwrap();

    let record = handle.describe().await.unwrap();
    assert_eq!(record.status, InstanceStatus::Blocked);
    let turn = record.blocked.expect("the turn that blocks it");
    let expected_site = format!("blocked.rs:{}:", line_of("// v1: pack"));
    let actual_site = format!("blocked.rs:{}:", line_of("// v2: wait first"));
    for part in [
        "nondeterminism",
        "ActivityScheduled",
        "TimerCreated",
        &expected_site,
        &actual_site,
    ] {
        assert!(turn.error.contains(part), "{part} in {}", turn.error);
    }
    assert_eq!(blocked_ids(&env).await, ["s-1"]);
    match handle.result().await {
        Err(e @ ClientError::Blocked { .. }) => {
            let text = e.to_string();
            assert!(text.contains("is blocked"), "{text}");
            assert!(text.contains(&turn.error), "{text}");
            assert!(
                text.contains(&format!("quark dlq redrive {}", turn.task_id)),
                "{text}"
            );
            let ClientError::Blocked { task_id, .. } = e else {
                unreachable!()
            };
            assert_eq!(task_id, Some(turn.task_id));
        }
        other => panic!("expected it to be blocked, got {other:?}"),
    }

    env.deploy(Registry::new().register(shipment_v3).register(step));
    env.store().redrive(turn.task_id).await.unwrap();
    assert_eq!(
        handle.describe().await.unwrap().status,
        InstanceStatus::Running,
        "the re-drive unblocks it"
    );
    assert_eq!(handle.result().await.unwrap(), "pack, ship");
    assert_eq!(
        handle.describe().await.unwrap().status,
        InstanceStatus::Completed
    );
    assert!(blocked_ids(&env).await.is_empty());
    assert!(env.store().list_dead(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_panicking_turn_blocks_its_instance_with_the_panic_message() {
    let env = TestEnv::new(Registry::new().register(shipment_panics).register(step))
        .await
        .unwrap();
    let handle = shipment_panics::start(env.client(), "s-2", ())
        .await
        .unwrap();
    env.run_until_idle().await.unwrap();
    handle.signal("go", &()).await.unwrap();
    let task_id = match handle.result().await {
        Err(ClientError::Blocked { error, task_id, .. }) => {
            assert!(
                error.contains("panicked: the label printer is not configured"),
                "{error}"
            );
            task_id.unwrap()
        }
        other => panic!("expected it to be blocked, got {other:?}"),
    };
    env.deploy(Registry::new().register(shipment_v3).register(step));
    env.store().redrive(task_id).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), "pack, ship");
}

static EXPORTS: AtomicU32 = AtomicU32::new(0);

/// Three MiB of report, over the default payload limit of two.
#[activity]
async fn export(_ctx: ActivityContext, mib: usize) -> Result<String, ActivityError> {
    EXPORTS.fetch_add(1, Ordering::SeqCst);
    Ok("x".repeat(mib * 1024 * 1024))
}

#[orchestration]
async fn report(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    match ctx.call(export, &3).await {
        Ok(data) => Ok(format!("exported {} bytes", data.len())),
        Err(OrchestrationError::Activity { failure, .. }) if !failure.retryable => {
            Ok(format!("fell back: {}", failure.message))
        }
        Err(e) => Err(e),
    }
}

/// The number in `text` right after `before`.
fn number_after(text: &str, before: &str) -> usize {
    let rest = &text[text
        .find(before)
        .unwrap_or_else(|| panic!("{before} in {text}"))
        + before.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_activity_result_over_the_payload_limit_fails_into_the_orchestration() {
    let env = TestEnv::new(Registry::new().register(report).register(export))
        .await
        .unwrap();
    let limit = env.store().config().max_payload_bytes;
    let handle = report::start(env.client(), "r-1", ()).await.unwrap();
    let outcome = handle.result().await.unwrap();
    assert!(outcome.starts_with("fell back: "), "{outcome}");
    assert_eq!(
        number_after(&outcome, "over the payload limit of "),
        limit,
        "{outcome}"
    );
    let size = number_after(&outcome, "too large to record: ");
    assert!(size > 3 * 1024 * 1024, "{outcome}");
    assert_eq!(EXPORTS.load(Ordering::SeqCst), 1, "terminal: not retried");
    assert!(env.store().list_dead(None, 10).await.unwrap().is_empty());
}
