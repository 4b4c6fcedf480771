//! Money between two services, exactly once: the transfer saga of [`quark_examples::bank`] on
//! PostgreSQL, with bank A and bank B in two schemas of one database.
//!
//! It opens both banks, runs 200 concurrent transfers on two workers (some to closed accounts,
//! which bank B rejects, some beyond what the source account holds), stops one worker halfway
//! (its leases are handed back and the other finishes its work), then shows how each transfer
//! ended and checks that the sum of all balances did not change. `examples/tests/bank_transfer.rs`
//! runs the same with 1,000 transfers while killing worker processes.
//!
//! Run it with `cargo run -p quark-examples --example bank_transfer [postgres://...]`; by default
//! it uses (and creates) the database `quark_bank_example` on `127.0.0.1:5432`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use quark_examples::bank::{Totals, Transfer, open_banks, transfer_money, worker};
use quark_history::sqlx::{self, Connection};
use quark_history::{
    InstanceStatus, MessageState, OutboxFilter, OutboxStore, PostgresStore, Store,
};
use quark_workflow::Client;

const TRANSFERS: u64 = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => default_database().await?,
    };
    let store = PostgresStore::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    // A fresh start: both banks, and no transfers from an earlier run.
    sqlx::raw_sql("TRUNCATE instances, history, tasks, outbox, inbox CASCADE")
        .execute(store.pool())
        .await?;
    let closed = ["b-9".to_string(), "b-10".to_string()];
    open_banks(store.pool(), 20, 2_000, 10, &closed).await?;
    let before = Totals::read(store.pool()).await?;
    println!(
        "before: bank A {} + bank B {} = {}",
        before.a,
        before.b,
        before.sum()
    );

    let first = worker(store.clone(), Duration::from_secs(5))?
        .start()
        .await?;
    let second = worker(store.clone(), Duration::from_secs(5))?
        .start()
        .await?;
    let client = Client::new(std::sync::Arc::new(store.clone()) as std::sync::Arc<dyn Store>);
    let mut handles = Vec::new();
    for n in 0..TRANSFERS {
        let transfer = Transfer {
            id: format!("transfer-{n}"),
            from: format!("a-{}", 1 + n * 7 % 20),
            to: format!("b-{}", 1 + n * 3 % 10),
            amount: 50 + (n * 37 % 400) as i64,
            reply_timeout_ms: 60_000,
        };
        let id = transfer.id.clone();
        handles.push(transfer_money::start(&client, id, transfer).await?);
    }
    // Halfway, one worker stops; the other carries on with everything.
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    let mut stopped = Some(first);
    for (i, handle) in handles.into_iter().enumerate() {
        if i == TRANSFERS as usize / 2
            && let Some(worker) = stopped.take()
        {
            worker.shutdown().await;
            println!("one worker stopped; the other finishes");
        }
        let outcome = match handle.result().await {
            Ok(reply) => format!("{reply:?}"),
            Err(e) => {
                let text = e.to_string();
                if text.contains("insufficient funds") {
                    "refused: insufficient funds".into()
                } else if text.contains("rejected") {
                    "rejected by bank B, refunded".into()
                } else {
                    format!("failed: {text}")
                }
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    for (outcome, n) in &outcomes {
        println!("{n:>4}  {outcome}");
    }
    let status = store.get_instance("transfer-0").await?.map(|r| r.status);
    ensure!(
        status.is_some_and(InstanceStatus::is_closed),
        "transfer-0 did not end"
    );
    // Cancellations may still be on their way to bank B: let the relay finish.
    let pending = OutboxFilter::default().state(MessageState::Pending);
    while !store.list_outbox(pending.clone()).await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.shutdown().await;
    let after = Totals::read(store.pool()).await?;
    println!(
        "after:  bank A {} + bank B {} = {}",
        after.a,
        after.b,
        after.sum()
    );
    ensure!(after.sum() == before.sum(), "money was made or lost");
    Ok(())
}

/// `quark_bank_example` on the local server, created if it does not exist.
async fn default_database() -> anyhow::Result<String> {
    let server = "postgres://postgres@127.0.0.1:5432";
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .context("connecting to PostgreSQL on 127.0.0.1:5432 (or pass a URL)")?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'quark_bank_example')",
    )
    .fetch_one(&mut admin)
    .await?;
    if !exists {
        sqlx::raw_sql("CREATE DATABASE quark_bank_example")
            .execute(&mut admin)
            .await?;
    }
    Ok(format!("{server}/quark_bank_example"))
}
