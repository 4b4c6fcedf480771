//! A worker process of the bank transfer examples: runs transfers against the database in
//! `QUARK_DATABASE_URL`, with short leases, until it is killed or told to stop (SIGTERM). The
//! bank transfer tests start these and kill them at random.
//!
//! Without `QUARK_PARTICIPANTS` it runs the saga of `quark_examples::bank` and relays bank B's
//! requests; with `QUARK_PARTICIPANTS=bank_a=postgres://...,bank_b=postgres://...` it runs the
//! two-phase commit variant of `quark_examples::bank_two_phase`, whose banks are those two
//! databases.

use std::time::Duration;

use anyhow::Context;
use quark_history::two_phase::Participants;
use quark_history::{PostgresStore, StoreConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let url = std::env::var("QUARK_DATABASE_URL").context("QUARK_DATABASE_URL is not set")?;
    let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
    let lease = Duration::from_secs(2);
    let worker = match std::env::var("QUARK_PARTICIPANTS") {
        Ok(specs) => {
            let pairs = specs
                .split(',')
                .map(Participants::parse_spec)
                .collect::<Result<Vec<_>, _>>()?;
            let participants = Participants::connect(pairs)?;
            quark_examples::bank_two_phase::worker(store, participants, lease)?
        }
        Err(_) => quark_examples::bank::worker(store, lease)?,
    };
    worker
        .run_until(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
