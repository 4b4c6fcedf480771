use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod tokio {
    macro_rules! select {
        ($($t:tt)*) => {
            ()
        };
    }
    pub(crate) use select;
}

#[orchestration]
async fn races(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    tokio::select! {
        _ = async {} => {}
        _ = async {} => {}
    };
    // Biased is deterministic: no error here.
    tokio::select! {
        biased;
        _ = async {} => {}
    };
    Ok(())
}

fn main() {}
