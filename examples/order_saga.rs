//! An order saga: every step that succeeded is undone, in reverse order, when a later step fails.
//!
//! Two orders run on embedded SQLite. The first pays and ships. The second's card is declined (a
//! terminal error: no retry helps), so the saga cancels the shipment it booked and releases the
//! stock it reserved, newest first, and the order fails with the card's error. The compensations
//! are activities too, retried until they succeed (or the saga is declared stuck, which
//! `quark saga stuck` lists), and journaled like everything else: a crash mid-compensation
//! resumes it. The saga also has a deadline: an order not settled within a day compensates.
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

// ANCHOR: saga
/// Reserve, book, charge; on failure undo what was done, newest first.
#[orchestration]
async fn order_saga(ctx: OrchestrationContext, order: Order) -> Result<String, OrchestrationError> {
    ctx.saga()
        .deadline(Duration::from_secs(24 * 3600))
        .run(|saga| async move {
            let reservation = ctx.call(reserve_stock, &order.id).await?;
            saga.add(release_stock, &reservation)?;
            // A step and its undo in one call: the undo's input is made from the step's output.
            let shipment = saga
                .step(book_shipment, &order.id, cancel_shipment, |s| s.clone())
                .await?;
            let payment = ctx.call(charge_card, &order).await?;
            Ok(format!(
                "{}: paid ({payment}), {shipment} on its way",
                order.id
            ))
        })
        .await
}
// ANCHOR_END: saga

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
        match handle.result().await {
            Ok(outcome) => println!("{outcome}"),
            Err(failure) => println!("{}: {failure}", order.id),
        }
        for e in store.read_history(&order.id, HistoryRange::All).await? {
            if let quark_history::HistoryEvent::ActivityScheduled { activity, .. } = &e.event {
                println!("    #{:>2} {activity}", e.seq);
            }
        }
    }
    worker.shutdown().await;
    Ok(())
}
