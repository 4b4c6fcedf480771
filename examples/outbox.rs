//! The transactional outbox and the inbox on embedded SQLite.
//!
//! An application records a payment and, in the same transaction, two outbox messages: a signal
//! to the `shipment` orchestration waiting for it, and a ledger entry for an in-process consumer
//! (a callback). The worker's relay delivers both; the consumer applies the entry through the
//! inbox, so a re-delivery would not book it twice.
//!
//! Run it with `cargo run -p quark-examples --example outbox [path/to/file.db]`.

use std::sync::Arc;

use quark_history::sqlx::{self, SqliteConnection};
use quark_history::{
    Commit, Destination, Inbox, OutboxFilter, OutboxMessage, Received, SqliteStore, Store,
};
use quark_worker::{DeliveryError, OutboxRelay, Worker};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};

#[orchestration]
async fn shipment(ctx: OrchestrationContext, order: String) -> Result<String, OrchestrationError> {
    let cents: u64 = ctx.wait_for_signal("paid").await?;
    Ok(format!("{order} ships, {cents} cents paid"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quark-outbox.db".into());
    let sqlite = SqliteStore::open(&path).await?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());

    // ANCHOR: consumer
    // The consumer applies each ledger entry once, in the same transaction as its inbox record.
    let ledger = {
        let sqlite = sqlite.clone();
        move |message: quark_history::ClaimedMessage| {
            let sqlite = sqlite.clone();
            async move {
                let entry = String::from_utf8_lossy(&message.payload).into_owned();
                let outcome = Inbox::new()
                    .once(
                        &sqlite,
                        &message.idempotency_key,
                        async |conn: &mut SqliteConnection| {
                            sqlx::query("CREATE TABLE IF NOT EXISTS ledger (entry TEXT NOT NULL)")
                                .execute(&mut *conn)
                                .await
                                .map_err(quark_history::Error::from)?;
                            sqlx::query("INSERT INTO ledger (entry) VALUES (?1)")
                                .bind(&entry)
                                .execute(&mut *conn)
                                .await
                                .map_err(quark_history::Error::from)?;
                            Ok::<_, quark_history::Error>(())
                        },
                    )
                    .await
                    .map_err(|e| DeliveryError::retry(e.to_string()))?;
                if outcome == Received::Duplicate {
                    println!("ledger: {} was booked before", message.idempotency_key);
                }
                Ok(())
            }
        }
    };
    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(Registry::new().register(shipment))
        .outbox(OutboxRelay::new().callback("ledger", ledger))
        .build()?
        .start()
        .await?;
    // ANCHOR_END: consumer

    let client = Client::new(Arc::clone(&store));
    let order = format!("order-{}", uuid::Uuid::now_v7().simple());
    let handle = shipment::start(&client, &order, order.clone()).await?;

    // ANCHOR: send
    // The messages exist if and only if this commit does.
    store
        .commit(
            Commit::new()
                .send(OutboxMessage::json(
                    Destination::signal(&order, "paid"),
                    &4_200u64,
                )?)
                .send(
                    OutboxMessage::json(
                        Destination::callback("ledger"),
                        &format!("{order}: +4200"),
                    )?
                    .idempotency_key(format!("ledger-{order}")),
                ),
        )
        .await?;
    // ANCHOR_END: send

    println!("{}", handle.result().await?);
    for m in store.list_outbox(OutboxFilter::default().limit(2)).await? {
        println!("{:>4}  {:<5}  {}", m.id, m.state, m.destination);
    }
    worker.shutdown().await;
    Ok(())
}
