//! The workload of the end-to-end tests, shared by the test harness and the `crash-worker` binary
//! it starts and kills.

use std::time::Duration;

use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
    orchestration,
};

/// Adds one.
#[activity(retry(max_attempts = 10, initial = "50ms", max = "500ms"))]
pub async fn increment(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n + 1)
}

/// Doubles.
#[activity(retry(max_attempts = 10, initial = "50ms", max = "500ms"))]
pub async fn double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

/// Three activities around a durable timer: `((n + 1) * 2 + 1)`.
#[orchestration]
pub async fn crash_order(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let a = ctx.call(increment, &n).await?;
    ctx.sleep(Duration::from_millis(100)).await?;
    let b = ctx.call(double, &a).await?;
    ctx.call(increment, &b).await
}

/// What [`crash_order`] returns for `n`.
pub fn expected(n: u64) -> u64 {
    (n + 1) * 2 + 1
}

/// The registry the crash workers run.
pub fn registry() -> Registry {
    Registry::new()
        .register(crash_order)
        .register(increment)
        .register(double)
}
