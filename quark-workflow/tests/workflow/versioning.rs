//! Retiring a patch: which running instances still take its old branch under the new code.

use std::time::Duration;

use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry,
    ReplayReport, Replayer, activity, orchestration,
};

#[activity]
async fn step(_ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
    Ok(name)
}

/// The code as deployed when the instances started.
#[orchestration(name = "flow")]
async fn flow_v1(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.wait_for_signal::<()>("go").await?;
    let a = ctx.call(step, &"a".to_string()).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(a)
}

/// The new code: an audit step behind a patch.
#[orchestration(name = "flow")]
async fn flow_v2(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.wait_for_signal::<()>("go").await?;
    let a = ctx.call(step, &"a".to_string()).await?;
    if ctx.patched("audit") {
        ctx.call(step, &"audit".to_string()).await?;
    }
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(a)
}

#[tokio::test]
async fn only_instances_past_the_patch_point_under_old_code_depend_on_the_old_branch() {
    let env = TestEnv::new(Registry::new().register(flow_v1).register(step))
        .await
        .unwrap();
    // Finished: no longer matters. (Run first: waiting for it moves the virtual clock.)
    let done = flow_v1::start(env.client(), "done", ()).await.unwrap();
    done.signal("go", &()).await.unwrap();
    done.result().await.unwrap();
    // Past the patch point under the old code: sleeping after `a`.
    let past = flow_v1::start(env.client(), "past", ()).await.unwrap();
    past.signal("go", &()).await.unwrap();
    // Not there yet: still waiting for its signal.
    flow_v1::start(env.client(), "waiting", ()).await.unwrap();
    env.run_until_idle().await.unwrap();

    let new_code = Replayer::new(Registry::new().register(flow_v2).register(step));
    let old = new_code
        .old_branch_instances(env.client(), "audit")
        .await
        .unwrap();
    assert_eq!(old, ["past"]);

    let history = env.client().history("past").await.unwrap();
    match new_code.replay(&history).unwrap() {
        ReplayReport::Ok { old_branches, .. } => assert!(old_branches.contains("audit")),
        other => panic!("expected the old history to replay, got {other:?}"),
    }
}
