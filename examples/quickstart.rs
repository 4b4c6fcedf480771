//! Quark's quickstart: an order-processing workflow, durable on embedded SQLite.
//!
//! `process_order` reserves stock, charges the card (the card network fails twice, and the
//! activity's retry policy carries it through), waits on a durable timer, waits for an approval
//! signal, ships through a child orchestration, and emails a receipt. Progress is printed as each
//! event is journaled, and the whole history at the end.
//!
//! Interrupt it with Ctrl-C and run it again: it resumes the order where it stopped, because
//! everything it did is in `quark-quickstart.db`.
//!
//! Run it with `cargo run -p quark-examples --example quickstart [path/to/file.db]`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quark_history::{
    HistoryEvent, HistoryRange, InstanceFilter, InstanceStatus, SqliteStore, Store,
};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    Signal, activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    item: String,
    cents: u64,
    email: String,
}

#[activity]
async fn reserve_inventory(_ctx: ActivityContext, item: String) -> Result<String, ActivityError> {
    Ok(format!("reservation for {item}"))
}

/// The card network is flaky: the first two attempts fail, the third goes through.
#[activity(
    retry(max_attempts = 5, initial = "200ms", max = "2s"),
    start_to_close = "10s"
)]
async fn charge_card(ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    if ctx.attempt() < 3 {
        return Err(ActivityError::message(format!(
            "card network timeout (attempt {})",
            ctx.attempt()
        )));
    }
    Ok(format!("receipt-{cents}-{}", ctx.info().instance_id))
}

#[activity]
async fn book_courier(_ctx: ActivityContext, order_id: String) -> Result<String, ActivityError> {
    Ok(format!("parcel {order_id}-P1"))
}

#[activity]
async fn email_receipt(_ctx: ActivityContext, to: String) -> Result<(), ActivityError> {
    let _ = to;
    Ok(())
}

/// A child orchestration: shipping has its own history.
#[orchestration]
async fn ship_order(
    ctx: OrchestrationContext,
    order_id: String,
) -> Result<String, OrchestrationError> {
    ctx.call(book_courier, &order_id).await
}

/// A manager's decision: the orchestration waits for it, the manager's code sends it.
const APPROVE: Signal<bool> = Signal::new("approve");

#[orchestration]
async fn process_order(
    ctx: OrchestrationContext,
    order: Order,
) -> Result<String, OrchestrationError> {
    ctx.call(reserve_inventory, &order.item).await?;
    let receipt = ctx.call(charge_card, &order.cents).await?;
    // A cooling-off period: durable, so it survives a restart.
    ctx.sleep(Duration::from_secs(2)).await?;
    let approved = ctx.wait_for(APPROVE).await?;
    if !approved {
        return Ok(format!("{} was not approved", order.id));
    }
    let parcel = ctx.call_child(ship_order, &order.id).await?;
    ctx.call(email_receipt, &order.email).await?;
    Ok(format!("{}: {receipt}, {parcel}", order.id))
}

/// Prints every event journaled for `id` (and its children) from `from` on; returns where it got to.
async fn print_progress(store: &dyn Store, id: &str, from: u64) -> anyhow::Result<u64> {
    let events = store.read_history(id, HistoryRange::From(from)).await?;
    let mut next = from;
    for e in events {
        let what = match &e.event {
            HistoryEvent::WorkflowStarted { .. } => "started".to_string(),
            HistoryEvent::ActivityScheduled { activity, .. } => format!("calls {activity}"),
            HistoryEvent::ActivityCompleted {
                command, attempt, ..
            } => {
                format!("activity #{command} done (attempt {attempt})")
            }
            HistoryEvent::ActivityFailed {
                command, failure, ..
            } => {
                format!("activity #{command} failed: {}", failure.message)
            }
            HistoryEvent::TimerCreated { fire_at, .. } => format!("sleeps until {fire_at}"),
            HistoryEvent::TimerFired { .. } => "timer fired".into(),
            HistoryEvent::SignalReceived { name, .. } => format!("got signal `{name}`"),
            HistoryEvent::ChildStarted { instance_id, .. } => {
                format!("started child {instance_id}")
            }
            HistoryEvent::ChildCompleted { .. } => "child completed".into(),
            other => other.kind().to_string(),
        };
        println!("  [{id} #{:>2}] {what}", e.seq);
        next = e.seq + 1;
    }
    Ok(next)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quark-quickstart.db".into());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&path)
            .await
            .with_context(|| format!("opening {path}"))?,
    );
    let client = Client::new(Arc::clone(&store));

    // Resume an unfinished order, or start a new one.
    let running = store
        .list_instances(InstanceFilter {
            instance_type: Some("process_order".into()),
            statuses: vec![InstanceStatus::Running],
            limit: 1,
            ..Default::default()
        })
        .await?;
    let id = match running.first() {
        Some(order) => {
            println!(
                "resuming {} from {path} ({} events so far)",
                order.id, order.history_len
            );
            order.id.clone()
        }
        None => {
            let id = format!("order-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
            let order = Order {
                id: id.clone(),
                item: "espresso machine".into(),
                cents: 24_900,
                email: "ada@example.com".into(),
            };
            process_order::start(&client, &id, order).await?;
            println!("started {id} in {path}");
            id
        }
    };

    let registry = Registry::new()
        .register(process_order)
        .register(ship_order)
        .register(reserve_inventory)
        .register(charge_card)
        .register(book_courier)
        .register(email_receipt);
    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(registry)
        .poll_interval(Duration::from_millis(50))
        .shutdown_grace(Duration::from_secs(5))
        .build()?;
    let running_worker = worker.start().await?;

    // Follow the order; approve it once it waits for the signal; stop on Ctrl-C.
    let mut next = 1;
    let mut approved = false;
    let interrupted = loop {
        next = print_progress(&*store, &id, next).await?;
        let record = client.describe(&id).await?;
        if record.status.is_closed() {
            break false;
        }
        let history = store.read_history(&id, HistoryRange::All).await?;
        let timer_fired = history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerFired { .. }));
        let signalled = history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }));
        if timer_fired && !signalled && !approved {
            println!("  (a manager approves {id})");
            client.send(&id, APPROVE, &true).await?;
            approved = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = quark_worker::shutdown_signal() => break true,
        }
    };
    running_worker.shutdown().await;
    if interrupted {
        println!("\ninterrupted; run again to resume {id}");
        return Ok(());
    }

    let result: String = client.result(&id).await?;
    println!("\nresult: {result}\n\nhistory of {id}:");
    println!("{:>4}  {:<27}  {:<20}", "seq", "recorded at", "event");
    for e in store.read_history(&id, HistoryRange::All).await? {
        println!("{:>4}  {}  {:<20}", e.seq, e.recorded_at, e.event.kind());
    }
    let report = store.verify(&id).await?;
    println!(
        "hash chain: {} events, {}",
        report.events,
        if report.is_intact() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    anyhow::ensure!(report.is_intact(), "the hash chain is broken");
    Ok(())
}
