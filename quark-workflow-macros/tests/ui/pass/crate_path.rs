//! `crate = "..."` for an application that re-exports the SDK under another path.
mod sdk {
    pub use quark_workflow as quark;
}

use sdk::quark::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError};

#[sdk::quark::activity(crate = "sdk::quark")]
async fn double(_ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    Ok(n * 2)
}

#[sdk::quark::orchestration(crate = "sdk::quark")]
async fn twice(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    ctx.call(double, &n).await
}

fn main() {
    let _ = sdk::quark::Registry::new().register(twice).register(double);
}
