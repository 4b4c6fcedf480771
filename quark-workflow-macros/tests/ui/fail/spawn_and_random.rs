use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod tokio {
    pub fn spawn<T>(t: T) -> T {
        t
    }
}
mod rand {
    pub fn random() -> u64 {
        4
    }
}
struct Uuid;
impl Uuid {
    fn new_v4() -> Self {
        Uuid
    }
}

#[orchestration]
async fn spawns(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    tokio::spawn(());
    std::thread::spawn(|| ());
    let _r = rand::random();
    let _u = Uuid::new_v4();
    Ok(())
}

fn main() {}
