use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

// Stand-ins with the paths of the popular crates; the check is by path.
mod chrono {
    pub struct Utc;
    impl Utc {
        pub fn now() {}
    }
}
mod fastrand {
    pub fn u64(_: std::ops::RangeFull) -> u64 {
        4
    }
}
mod reqwest {
    pub async fn get(_: &str) {}
}

#[orchestration]
async fn libraries(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    chrono::Utc::now();
    let _n = fastrand::u64(..);
    reqwest::get("https://example.invalid").await;
    let _child = std::process::Command::new("ls");
    Ok(())
}

fn main() {}
