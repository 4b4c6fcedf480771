use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

struct Order {
    cents: u64,
}

#[orchestration]
async fn order(_ctx: OrchestrationContext, order: Order) -> Result<u64, OrchestrationError> {
    Ok(order.cents)
}

fn main() {}
