//! An order saga: every step that succeeded is undone, in reverse order, when a later step fails.
//!
//! Two orders run on embedded SQLite. The first pays and ships. The second's card is declined (a
//! terminal error: no retry helps), so the saga releases the stock it reserved and cancels the
//! shipment it booked, then reports what it undid. The compensations are activities too, retried
//! until they succeed, and journaled like everything else: a crash mid-compensation resumes it.
//!
//! Run it with `cargo run -p quark-examples --example order_saga [path/to/file.db]`.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{HistoryRange, SqliteStore, Store};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    card: String,
    cents: u64,
}

#[activity]
async fn reserve_stock(_ctx: ActivityContext, order: String) -> Result<String, ActivityError> {
    Ok(format!("stock-{order}"))
}

#[activity]
async fn release_stock(_ctx: ActivityContext, reservation: String) -> Result<(), ActivityError> {
    let _ = reservation;
    Ok(())
}

#[activity]
async fn book_shipment(_ctx: ActivityContext, order: String) -> Result<String, ActivityError> {
    Ok(format!("shipment-{order}"))
}

#[activity]
async fn cancel_shipment(_ctx: ActivityContext, shipment: String) -> Result<(), ActivityError> {
    let _ = shipment;
    Ok(())
}

#[activity(retry(max_attempts = 3, initial = "100ms", max = "1s"))]
async fn charge_card(_ctx: ActivityContext, order: Order) -> Result<String, ActivityError> {
    if order.card.starts_with("0000") {
        // Declined is an answer, not an outage: retrying cannot change it.
        return Err(ActivityError::message(format!("card {} declined", order.card)).terminal());
    }
    Ok(format!("payment-{}-{}", order.id, order.cents))
}

/// Reserve, book, charge; on failure undo what was done, newest first.
#[orchestration]
async fn order_saga(ctx: OrchestrationContext, order: Order) -> Result<String, OrchestrationError> {
    let reservation = ctx.call(reserve_stock, &order.id).await?;
    let shipment = ctx.call(book_shipment, &order.id).await?;
    match ctx.call(charge_card, &order).await {
        Ok(payment) => Ok(format!(
            "{}: paid ({payment}), {shipment} on its way",
            order.id
        )),
        Err(failure) => {
            ctx.call(cancel_shipment, &shipment).await?;
            ctx.call(release_stock, &reservation).await?;
            Ok(format!(
                "{}: {failure}; compensated: cancelled {shipment}, released {reservation}",
                order.id
            ))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quark-order-saga.db".into());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await?);
    let registry = Registry::new()
        .register(order_saga)
        .register(reserve_stock)
        .register(release_stock)
        .register(book_shipment)
        .register(cancel_shipment)
        .register(charge_card);
    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(registry)
        .poll_interval(Duration::from_millis(50))
        .build()?
        .start()
        .await?;
    let client = Client::new(Arc::clone(&store));
    let run = uuid::Uuid::now_v7().simple().to_string();
    let orders = [
        Order {
            id: format!("good-{}", &run[20..]),
            card: "4242-4242".into(),
            cents: 1_500,
        },
        Order {
            id: format!("declined-{}", &run[20..]),
            card: "0000-0000".into(),
            cents: 9_900,
        },
    ];
    for order in orders {
        let handle = order_saga::start(&client, &order.id, order.clone()).await?;
        let outcome = handle.result().await?;
        println!("{outcome}");
        for e in store.read_history(&order.id, HistoryRange::All).await? {
            if let quark_history::HistoryEvent::ActivityScheduled { activity, .. } = &e.event {
                println!("    #{:>2} {activity}", e.seq);
            }
        }
    }
    worker.shutdown().await;
    Ok(())
}
