use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, activity, orchestration};

#[activity]
async fn charge_card(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    Ok(cents.to_string())
}

#[orchestration]
async fn order(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    ctx.call(charge_card, &"five dollars").await
}

fn main() {}
