use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

// Stand-ins with tokio's paths; the check is by path.
mod tokio {
    pub mod time {
        pub use std::time::Duration;
        pub struct Instant;
        impl Instant {
            pub fn now() {}
        }
        pub fn interval(_: Duration) {}
        pub async fn timeout<F>(_: Duration, f: F) -> F {
            f
        }
        pub fn pause() {}
    }
    pub mod task {
        pub async fn yield_now() {}
        pub fn spawn_blocking<F>(f: F) -> F {
            f
        }
        pub fn block_in_place<F>(f: F) -> F {
            f
        }
        pub fn id() {}
        pub struct JoinSet;
        impl JoinSet {
            pub fn new() -> Self {
                JoinSet
            }
        }
    }
}

use tokio::task::JoinSet;

#[orchestration]
async fn runtime(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    // Deterministic, so accepted: a `Duration` re-exported by tokio.
    let d = tokio::time::Duration::from_secs(1);
    tokio::time::Instant::now();
    tokio::time::interval(d);
    tokio::time::timeout(d, async {}).await;
    tokio::time::pause();
    tokio::task::yield_now().await;
    tokio::task::spawn_blocking(|| ());
    tokio::task::block_in_place(|| ());
    tokio::task::id();
    let _set = JoinSet::new();
    Ok(())
}

fn main() {}
