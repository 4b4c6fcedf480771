use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, activity, orchestration};

#[orchestration(nme = "x")]
async fn unknown(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    Ok(())
}

#[orchestration(name = "a", name = "b", retry(max_attempts = 2), version = 0)]
async fn misplaced(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    Ok(())
}

#[activity(version = 2, start_to_close = "30 seconds", retry(max_attempts = 0, initial = "1x"))]
async fn bad_activity(_ctx: ActivityContext) -> Result<(), ActivityError> {
    Ok(())
}

#[activity(retry(jitter = "1s"))]
async fn unknown_retry(_ctx: ActivityContext) -> Result<(), ActivityError> {
    Ok(())
}

#[activity(name = "", crate = "not a path")]
async fn bad_names(_ctx: ActivityContext) -> Result<(), ActivityError> {
    Ok(())
}

fn main() {}
