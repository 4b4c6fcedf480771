//! `quark workflow replay`: a history exported with `quark workflow history --output json` is
//! replayed against the orchestrations linked into the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use quark_history::Store;
use quark_worker::cli::{Cli, run_on};
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
    orchestration,
};

#[activity]
async fn wrap(_ctx: ActivityContext, item: String) -> Result<String, ActivityError> {
    Ok(format!("wrapped {item}"))
}

#[activity]
async fn weigh(_ctx: ActivityContext, item: String) -> Result<String, ActivityError> {
    Ok(format!("{item}: 2 kg"))
}

#[orchestration(name = "replayed_parcel")]
async fn parcel_v1(ctx: OrchestrationContext, item: String) -> Result<String, OrchestrationError> {
    ctx.call(wrap, &item).await
}

/// The same orchestration after an incompatible edit: it weighs before it wraps.
#[orchestration(name = "replayed_parcel")]
async fn parcel_v2(ctx: OrchestrationContext, item: String) -> Result<String, OrchestrationError> {
    ctx.call(weigh, &item).await?;
    ctx.call(wrap, &item).await
}

fn v1() -> Registry {
    Registry::new().register(parcel_v1).register(wrap)
}

fn v2() -> Registry {
    Registry::new()
        .register(parcel_v2)
        .register(wrap)
        .register(weigh)
}

async fn quark(
    store: &Arc<dyn Store>,
    registry: Option<Registry>,
    args: &[&str],
) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("quark").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run_on(
        Arc::clone(store),
        cli.command,
        cli.output,
        registry,
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out)?)
}

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quark-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn it_replays_an_exported_history_and_reports_a_divergence() {
    let env = TestEnv::new(v1()).await.unwrap();
    let handle = parcel_v1::start(env.client(), "parcel-1", "teapot".to_string())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "wrapped teapot");
    let store = env.store();

    let dir = scratch("replay");
    let json = dir.join("parcel-1.json");
    let exported = quark(
        store,
        None,
        &["workflow", "history", "parcel-1", "-o", "json"],
    )
    .await
    .unwrap();
    std::fs::write(&json, exported).unwrap();
    let jsonl = dir.join("parcel-1.jsonl");
    let exported = quark(
        store,
        None,
        &["workflow", "history", "parcel-1", "-o", "jsonl"],
    )
    .await
    .unwrap();
    std::fs::write(&jsonl, exported).unwrap();

    // Against the code that wrote it, both forms replay.
    let said = quark(
        store,
        Some(v1()),
        &["workflow", "replay", path(&json), path(&jsonl)],
    )
    .await
    .unwrap();
    assert_eq!(said.matches("replays (").count(), 2, "{said}");

    // Against the edited code, it diverges: the command says where, in JSON too, and fails.
    let mut out = Vec::new();
    let cli =
        Cli::try_parse_from(["quark", "workflow", "replay", path(&json), "-o", "json"]).unwrap();
    let err = run_on(
        Arc::clone(store),
        cli.command,
        cli.output,
        Some(v2()),
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("1 of 1 histories do not replay"),
        "{err:#}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report[0]["ok"], false, "{report}");
    let error = report[0]["error"].as_str().unwrap();
    assert!(error.contains("wrap") && error.contains("weigh"), "{error}");

    // Without linked orchestrations there is nothing to replay against; a file that is not a
    // history is named.
    let err = quark(store, None, &["workflow", "replay", path(&json)])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no orchestrations are linked"),
        "{err}"
    );
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[{\"not\": \"an event\"}]").unwrap();
    let err = quark(store, Some(v1()), &["workflow", "replay", path(&bad)])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("is not a history"), "{err:#}");
    std::fs::remove_dir_all(dir).unwrap();
}
