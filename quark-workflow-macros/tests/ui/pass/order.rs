//! The documented shape: typed calls, every argument, the generated client stubs.
use std::time::Duration;

use quark_workflow::{
    ActivityContext, ActivityError, Activity, Client, Orchestration, OrchestrationContext,
    OrchestrationError, Registry, activity, orchestration,
};

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub cents: u64,
}

/// Charges the card.
#[activity(
    name = "charge_card",
    queue = "payments",
    retry(max_attempts = 3, initial = "1s", max = "1m"),
    start_to_close = "30s",
    schedule_to_close = "5m",
    heartbeat = "10s",
    transactional
)]
pub async fn charge_card(ctx: ActivityContext, payment: Payment) -> Result<String, ActivityError> {
    ctx.heartbeat(&"charging");
    Ok(format!("receipt for {}", payment.cents))
}

#[activity]
async fn notify(_ctx: ActivityContext) -> Result<(), ActivityError> {
    Ok(())
}

/// Processes an order.
#[orchestration(name = "process_order", version = 2, queue = "orders")]
pub async fn process_order(
    ctx: OrchestrationContext,
    payment: Payment,
) -> Result<String, OrchestrationError> {
    let receipt = ctx.call(charge_card, &payment).await?;
    ctx.sleep(Duration::from_secs(60)).await?;
    ctx.call(notify, &()).await?;
    Ok(receipt)
}

#[orchestration]
async fn no_input(_ctx: OrchestrationContext) -> Result<u8, OrchestrationError> {
    Ok(1)
}

#[allow(dead_code)]
async fn client_side(client: &Client) -> Result<String, Box<dyn std::error::Error>> {
    let handle = process_order::start(client, "order-1", Payment { cents: 500 }).await?;
    let same = process_order::handle(client, handle.id());
    let _: u8 = no_input::start(client, "n-1", ()).await?.result().await?;
    Ok(same.result().await?)
}

fn main() {
    assert_eq!(<process_order as Orchestration>::NAME, "process_order");
    assert_eq!(<process_order as Orchestration>::VERSION, 2);
    assert_eq!(<process_order as Orchestration>::queue(), "orders");
    let options = <charge_card as Activity>::options();
    assert_eq!(options.queue.as_deref(), Some("payments"));
    assert_eq!(options.retry.max_attempts, 3);
    assert_eq!(options.retry.max, Duration::from_secs(60));
    assert_eq!(options.start_to_close, Some(Duration::from_secs(30)));
    assert_eq!(options.heartbeat, Some(Duration::from_secs(10)));
    assert!(options.transactional);
    assert_eq!(<notify as Activity>::NAME, "notify");
    let registry = Registry::new()
        .register(process_order)
        .register(no_input)
        .register(charge_card)
        .register(notify);
    assert!(registry.has_orchestration("process_order") && registry.has_activity("charge_card"));
}
