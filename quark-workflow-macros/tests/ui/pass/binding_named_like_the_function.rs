//! A parameter or local named like the function itself is a binding, not the generated unit type.
//! (A binding named like *another* generated type in scope is read as that unit type, as for any
//! unit struct: name bindings differently.)
use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, activity, orchestration};

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    cents: u64,
}

#[activity]
async fn total(_ctx: ActivityContext, total: u64) -> Result<u64, ActivityError> {
    Ok(total)
}

#[orchestration]
async fn order(ctx: OrchestrationContext, order: Order) -> Result<u64, OrchestrationError> {
    let sum = ctx.call(total, &order.cents).await?;
    let order = sum * 2;
    Ok(order)
}

fn main() {
    let _ = quark_workflow::Registry::new().register(order).register(total);
}
