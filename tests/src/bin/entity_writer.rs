//! Deposits `QUARK_MESSAGES` messages, each once (its id is `QUARK_WRITER-n`), into the chaos
//! accounts of the store at `QUARK_DATABASE_URL`, then exits. The entity chaos test kills it at
//! random and starts it again: a restarted writer sends every message again from the first, and
//! the inbox must apply each once.

use std::sync::Arc;

use quark_tests::ledger::{Account, Deposit, key_of};
use quark_workflow::entity::{CallMeta, Entities, EntityError};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("QUARK_DATABASE_URL")?;
    let writer = std::env::var("QUARK_WRITER")?;
    let messages: u64 = std::env::var("QUARK_MESSAGES")?.parse()?;
    let store = quark_worker::cli::open_store(Some(&url)).await?;
    let entities = Entities::new(Arc::clone(&store));
    for n in 0..messages {
        let id = format!("{writer}-{n}");
        let account = entities.entity::<Account>(key_of(n));
        loop {
            match account
                .call_once(&id, &Deposit(1), CallMeta::default())
                .await
            {
                Ok(_) => break,
                // Nothing was appended: send it again.
                Err(EntityError::Contended { .. }) => continue,
                Err(e) => return Err(anyhow::anyhow!("message {id}: {e}")),
            }
        }
    }
    Ok(())
}
