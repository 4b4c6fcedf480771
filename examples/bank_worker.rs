//! A worker process of the bank transfer example: runs transfers and relays bank B's requests
//! against the database in `QUARK_DATABASE_URL`, with short leases, until it is killed or told to
//! stop (SIGTERM). The bank transfer test starts these and kills them at random.

use std::time::Duration;

use anyhow::Context;
use quark_history::{PostgresStore, StoreConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let url = std::env::var("QUARK_DATABASE_URL").context("QUARK_DATABASE_URL is not set")?;
    let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
    let worker = quark_examples::bank::worker(store, Duration::from_secs(2))?;
    worker
        .run_until(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
