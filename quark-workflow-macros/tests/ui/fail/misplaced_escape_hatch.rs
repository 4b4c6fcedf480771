use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

#[orchestration]
async fn misplaced(_ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let doubled = match n {
        #[allow_nondeterministic]
        0 => 0,
        n => n * 2,
    };
    Ok(doubled)
}

fn main() {}
