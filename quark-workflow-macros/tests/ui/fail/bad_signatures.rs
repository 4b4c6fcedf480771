use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, activity, orchestration};

#[orchestration]
fn not_async(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    Ok(())
}

#[orchestration]
async fn generic<T>(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    Ok(())
}

#[orchestration]
async fn no_context() -> Result<(), OrchestrationError> {
    Ok(())
}

#[activity]
async fn two_inputs(_ctx: ActivityContext, a: u32, b: u32) -> Result<u32, ActivityError> {
    Ok(a + b)
}

#[activity]
async fn no_result(_ctx: ActivityContext) -> u32 {
    1
}

#[orchestration]
struct NotAFunction;

fn main() {}
