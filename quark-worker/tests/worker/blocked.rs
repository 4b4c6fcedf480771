//! Failures that used to leave an instance silently running, on the worker runtime and both
//! backends: a deploy that breaks replay blocks the instance, and the client, the command line and
//! the metrics say so with the error; a fixed deploy and a re-drive resume it. An activity result
//! over the payload limit fails into its orchestration, which decides.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quark_history::testing::{TestStore, eventually};
use quark_history::{HistoryEvent, HistoryRange, InstanceFilter, InstanceStatus};
use quark_worker::cli::{Cli, run_on};
use quark_worker::{RunningWorker, Worker};
use quark_workflow::{
    ActivityContext, ActivityError, Client, ClientError, OrchestrationContext, OrchestrationError,
    Registry, StartOptions, activity, orchestration,
};

use crate::metrics::{scrape, value};

quark_history::backend_tests!(
    it_blocks_an_instance_on_a_nondeterministic_deploy_and_resumes_it_after_a_fixed_one,
    it_fails_an_oversized_activity_result_into_its_orchestration,
);

#[activity]
async fn step(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
    Ok(name)
}

/// The code as deployed when the instance started.
#[orchestration(name = "parcel")]
async fn parcel_v1(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    let packed = ctx.call(step, &"pack".to_string()).await?; // v1: pack
    ctx.wait_for_signal::<()>("go").await?;
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("{packed}, {shipped}"))
}

/// A change deployed without a patch: it waits where the history holds an activity.
#[orchestration(name = "parcel")]
async fn parcel_v2(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.sleep(Duration::from_secs(60)).await?; // v2: wait first
    ctx.wait_for_signal::<()>("go").await?;
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("waited, {shipped}"))
}

/// The fix: the new step behind a patch, the recorded one kept.
#[orchestration(name = "parcel")]
async fn parcel_v3(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    let packed = ctx.call(step, &"pack".to_string()).await?;
    ctx.wait_for_signal::<()>("go").await?;
    if ctx.patched("insure") {
        ctx.call(step, &"insure".to_string()).await?;
    }
    let shipped = ctx.call(step, &"ship".to_string()).await?;
    Ok(format!("{packed}, {shipped}"))
}

/// A queue of this test's own: the metrics recorder is the process's, shared by every test.
fn own_queue(t: &TestStore) -> String {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "blocked-{}-{}",
        t.store.backend(),
        &unique[unique.len() - 8..]
    )
}

async fn deploy(t: &TestStore, queue: &str, registry: Registry) -> RunningWorker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .queues([queue])
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        .metrics_addr("127.0.0.1:0".parse().unwrap())
        .workflows(registry)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// Runs a `quark` command line against the test's store.
async fn quark(t: &TestStore, args: &[&str]) -> String {
    let cli = Cli::try_parse_from([&["quark"], args].concat()).unwrap();
    let mut out = Vec::new();
    run_on(
        Arc::clone(&t.store),
        cli.command,
        cli.output,
        None,
        &mut out,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

fn line_of(needle: &str) -> usize {
    let src = include_str!("blocked.rs");
    1 + src.lines().position(|l| l.contains(needle)).unwrap()
}

async fn it_blocks_an_instance_on_a_nondeterministic_deploy_and_resumes_it_after_a_fixed_one(
    t: &TestStore,
) {
    let queue = own_queue(t);
    let client = Client::new(Arc::clone(&t.store));
    let v1 = deploy(
        t,
        &queue,
        Registry::new().register(parcel_v1).register(step),
    )
    .await;
    let options = StartOptions::default().queue(&queue);
    let handle = client
        .start_with::<parcel_v1>("p-1", &(), options)
        .await
        .unwrap();
    eventually("the parcel is packed", async || {
        let history = t
            .store
            .read_history("p-1", HistoryRange::All)
            .await
            .unwrap();
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
    })
    .await;
    v1.shutdown().await;

    // The new code goes out without a patch, and the instance's next turn meets it.
    let v2 = deploy(
        t,
        &queue,
        Registry::new().register(parcel_v2).register(step),
    )
    .await;
    let metrics = v2.metrics_addr().unwrap();
    handle.signal("go", &()).await.unwrap();
    eventually("the instance is blocked", async || {
        handle.describe().await.unwrap().status == InstanceStatus::Blocked
    })
    .await;

    let turn = handle.describe().await.unwrap().blocked.unwrap();
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
    let listed = client
        .list(InstanceFilter {
            statuses: vec![InstanceStatus::Blocked],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].blocked.as_ref(), Some(&turn));
    match tokio::time::timeout(Duration::from_secs(10), handle.result()).await {
        Ok(Err(ClientError::Blocked { error, task_id, .. })) => {
            assert_eq!((error, task_id), (turn.error.clone(), Some(turn.task_id)));
        }
        other => panic!("expected the client to report it blocked, got {other:?}"),
    }
    let blocked_gauge = [("queue", queue.as_str())];
    eventually("the gauge counts the blocked instance", async || {
        value(
            &scrape(metrics).await,
            "quark_instances_blocked",
            &blocked_gauge,
        ) == 1.0
    })
    .await;

    let described = quark(t, &["workflow", "describe", "p-1"]).await;
    assert!(described.contains("status:   blocked\n"), "{described}");
    assert!(
        described.contains(&format!("error:    {}\n", turn.error)),
        "{described}"
    );
    assert!(
        described.contains(&format!("`quark dlq redrive {}`", turn.task_id)),
        "{described}"
    );
    let json = quark(t, &["workflow", "describe", "p-1", "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["status"], "blocked");
    assert_eq!(json["blocked"]["error"], turn.error.as_str());
    let blocked = quark(t, &["workflow", "list", "--status", "blocked"]).await;
    assert!(
        blocked
            .lines()
            .any(|l| l.starts_with("p-1 ") && l.contains("blocked")),
        "{blocked}"
    );
    let running = quark(t, &["workflow", "list", "--status", "running"]).await;
    assert!(!running.contains("p-1"), "{running}");
    v2.shutdown().await;

    // The fix goes out, and the operator re-drives the turn.
    let v3 = deploy(
        t,
        &queue,
        Registry::new().register(parcel_v3).register(step),
    )
    .await;
    let redriven = quark(t, &["dlq", "redrive", &turn.task_id.to_string()]).await;
    assert_eq!(
        redriven,
        format!("task {} is back on its queue\n", turn.task_id)
    );
    let output = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output, "pack, ship");
    let record = handle.describe().await.unwrap();
    assert_eq!(
        (record.status, record.blocked),
        (InstanceStatus::Completed, None)
    );
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
    let metrics = v3.metrics_addr().unwrap();
    eventually("the gauge is back to zero", async || {
        value(
            &scrape(metrics).await,
            "quark_instances_blocked",
            &blocked_gauge,
        ) == 0.0
    })
    .await;
    v3.shutdown().await;
}

/// Three MiB of report, over the default payload limit of two.
#[activity]
async fn export(_ctx: ActivityContext, mib: usize) -> Result<String, ActivityError> {
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

async fn it_fails_an_oversized_activity_result_into_its_orchestration(t: &TestStore) {
    let running = Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        .workflows(Registry::new().register(report).register(export))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let handle = report::start(&client, "r-1", ()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    let limit = t.store.config().max_payload_bytes;
    assert!(outcome.starts_with("fell back: "), "{outcome}");
    assert!(
        outcome.contains(&format!("over the payload limit of {limit} bytes")),
        "{outcome}"
    );
    let size: usize = outcome
        .split("too large to record: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a size in {outcome}"));
    assert!(size > limit, "{outcome}");
    let history = t
        .store
        .read_history("r-1", HistoryRange::All)
        .await
        .unwrap();
    let failed = history.iter().find_map(|e| match &e.event {
        HistoryEvent::ActivityFailed {
            attempt, failure, ..
        } => Some((*attempt, failure.retryable)),
        _ => None,
    });
    assert_eq!(failed, Some((1, false)), "terminal at the first attempt");
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
    assert_eq!(
        running.worker().metrics().failed,
        0,
        "nothing dead-lettered"
    );
    running.shutdown().await;
}
