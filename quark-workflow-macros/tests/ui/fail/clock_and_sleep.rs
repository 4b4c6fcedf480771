use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod tokio {
    pub mod time {
        pub async fn sleep(_: std::time::Duration) {}
    }
}

#[orchestration]
async fn clocks(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _a = std::time::SystemTime::now();
    let _b = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::thread::sleep(std::time::Duration::from_secs(1));
    println!("{:?}", std::time::Instant::now());
    Ok(())
}

fn main() {}
