// A rejected orchestration or activity still becomes its type: registering it, starting it or
// calling it elsewhere compiles, so the one real error is the only one.
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    activity, orchestration,
};

#[activity(retry(max_attempts = 0))]
async fn charge(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    Ok(cents.to_string())
}

#[orchestration]
async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    let _at = std::time::SystemTime::now();
    ctx.call(charge, &cents).await
}

#[activity]
fn not_async(_ctx: ActivityContext, cents: u64) -> Result<u64, ActivityError> {
    Ok(cents)
}

#[allow(dead_code)]
async fn start(client: &Client) {
    let _ = checkout::start(client, "order-1", 500).await;
}

fn main() {
    let _registry = Registry::new()
        .register(checkout)
        .register(charge)
        .register(not_async);
}
