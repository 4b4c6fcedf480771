//! An event-sourced ledger: accounts are entities, transfers are workflows that call them, and a
//! balance projection keeps a read model, all on embedded SQLite.
//!
//! - **`Account`** is an entity: its state is derived from its events (`Opened`, `Deposited`,
//!   `Withdrawn`); commands validate against the state and decide events. A withdrawal larger than
//!   the balance is refused and appends nothing.
//! - **`transfer`** is an orchestration: it withdraws from one account and deposits to the other
//!   through durable entity calls, each recorded in its history and applied exactly once.
//! - **`Balances`** is a projection: it reads the global order from its checkpoint and keeps a
//!   `balances` table, the table and the checkpoint written in one transaction.
//! - Then the past: an account's state at an earlier version and at a time, the events between
//!   two versions, and the hash chain that covers every stream.
//! - And erasure: the owner's name is personal data, sealed with the owner's key; erasing the
//!   owner deletes the key, and the account still loads, its balance intact, its name redacted,
//!   its hash chain still whole.
//!
//! Personal data needs a master key: `QUARK_MASTER_KEY` (64 hex digits), or else the key file
//! beside the database, made on the first run.
//!
//! Run it with `cargo run -p quark-examples --example ledger [path/to/file.db]`.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{MasterKey, SqliteStore, Store, StoreConfig, StoreTx};
use quark_worker::Worker;
use quark_workflow::entity::{At, CallMeta, Command, Decision, Entities, Entity, Personal};
use quark_workflow::projection::{Batch, Projection, ProjectionError, Projector, position_of};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};
use serde::{Deserialize, Serialize};

// ANCHOR: entity
/// A bank account, event-sourced.
struct Account;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AccountState {
    /// The owner's name: personal data, sealed in the journal.
    owner: Option<Personal<String>>,
    cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: Personal<String> },
    Deposited { cents: i64 },
    Withdrawn { cents: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Refusal {
    NotOpen,
    AlreadyOpen,
    Insufficient { balance: i64, asked: i64 },
}

impl Entity for Account {
    const TYPE: &'static str = "Account";
    const SNAPSHOT_EVERY: u64 = 50;
    type State = AccountState;
    type Event = AccountEvent;
    type Rejection = Refusal;

    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => state.owner = Some(owner.clone()),
            AccountEvent::Deposited { cents } => state.cents += cents,
            AccountEvent::Withdrawn { cents } => state.cents -= cents,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Open {
    owner: String,
}

impl Command<Account> for Open {
    const NAME: &'static str = "Open";
    type Reply = ();
    fn handle(&self, state: &AccountState) -> Result<Decision<AccountEvent, ()>, Refusal> {
        if state.owner.is_some() {
            return Err(Refusal::AlreadyOpen);
        }
        Ok(Decision::emit([AccountEvent::Opened {
            owner: Personal::Known(self.owner.clone()),
        }]))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Deposit {
    cents: i64,
}

impl Command<Account> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = i64;
    fn handle(&self, state: &AccountState) -> Result<Decision<AccountEvent, i64>, Refusal> {
        if state.owner.is_none() {
            return Err(Refusal::NotOpen);
        }
        Ok(
            Decision::emit([AccountEvent::Deposited { cents: self.cents }])
                .reply(state.cents + self.cents),
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Withdraw {
    cents: i64,
}

impl Command<Account> for Withdraw {
    const NAME: &'static str = "Withdraw";
    type Reply = i64;
    fn handle(&self, state: &AccountState) -> Result<Decision<AccountEvent, i64>, Refusal> {
        if state.owner.is_none() {
            return Err(Refusal::NotOpen);
        }
        if self.cents > state.cents {
            return Err(Refusal::Insufficient {
                balance: state.cents,
                asked: self.cents,
            });
        }
        Ok(
            Decision::emit([AccountEvent::Withdrawn { cents: self.cents }])
                .reply(state.cents - self.cents),
        )
    }
}
// ANCHOR_END: entity

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    cents: i64,
}

// ANCHOR: workflow
/// Moves money between two accounts: each call is durable and applied once.
#[orchestration]
async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<String, OrchestrationError> {
    let taken = ctx
        .entity::<Account>(&t.from)
        .call(&Withdraw { cents: t.cents })
        .await?;
    if let Err(refusal) = taken {
        return Ok(format!("refused: {refusal:?}"));
    }
    let credited = ctx
        .entity::<Account>(&t.to)
        .call(&Deposit { cents: t.cents })
        .await?;
    match credited {
        Ok(balance) => Ok(format!("moved {} to {}, now {balance}", t.cents, t.to)),
        // The destination refused: put the money back, durably too.
        Err(refusal) => {
            ctx.entity::<Account>(&t.from)
                .call(&Deposit { cents: t.cents })
                .await?
                .map_err(|r| OrchestrationError::Failed(format!("refund refused: {r:?}")))?;
            Ok(format!("refunded: {refusal:?}"))
        }
    }
}
// ANCHOR_END: workflow

// ANCHOR: projection
/// Balances per account in a table of the application's, kept from the accounts' events.
struct Balances;

impl Projection for Balances {
    const NAME: &'static str = "ledger_balances";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Account>()? {
            let delta = match e.event.event {
                AccountEvent::Opened { .. } => 0,
                AccountEvent::Deposited { cents } => cents,
                AccountEvent::Withdrawn { cents } => -cents,
            };
            quark_history::sqlx::query(
                "INSERT INTO balances (account, cents) VALUES (?1, ?2) \
                 ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents",
            )
            .bind(&e.key)
            .bind(delta)
            .execute(batch.tx().sqlite()?)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut StoreTx, _version: u32) -> Result<(), ProjectionError> {
        quark_history::sqlx::query("DELETE FROM balances")
            .execute(tx.sqlite()?)
            .await?;
        Ok(())
    }
}
// ANCHOR_END: projection

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quark-ledger.db".into());
    let config = StoreConfig::default().master_key(master_key(&path)?);
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_with(&format!("sqlite://{path}"), config).await?);
    // The application's own table, in the same database as the journal.
    let mut tx = store.begin_tx().await?;
    quark_history::sqlx::query(
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL)",
    )
    .execute(tx.sqlite()?)
    .await?;
    tx.commit().await?;

    // Fresh account names per run, so that the example can run again on the same file.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (alice, bob) = (
        format!("alice-{}", &run[24..]),
        format!("bob-{}", &run[24..]),
    );

    // ANCHOR: commands
    let entities = Entities::new(Arc::clone(&store));
    let a = entities.entity::<Account>(&alice);
    a.call(&Open {
        owner: "Alice".into(),
    })
    .await?;
    a.call(&Deposit { cents: 10_000 }).await?;
    entities
        .entity::<Account>(&bob)
        .call_with(
            &Open {
                owner: "Bob".into(),
            },
            CallMeta::caused_by("signup-form-42"),
        )
        .await?;
    // A refusal is the domain's answer, and appends nothing.
    let refused = a.call(&Withdraw { cents: 1_000_000 }).await.unwrap_err();
    println!("withdrawing 10,000.00 from {alice}: {refused}");
    // ANCHOR_END: commands

    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(
            Registry::new()
                .register(transfer)
                .entity_command::<Account, Withdraw>()
                .entity_command::<Account, Deposit>(),
        )
        .poll_interval(Duration::from_millis(50))
        .build()?
        .start()
        .await?;
    let client = Client::new(Arc::clone(&store));
    for (i, cents) in [2_500, 99_999, 1_500].into_iter().enumerate() {
        let t = Transfer {
            from: alice.clone(),
            to: bob.clone(),
            cents,
        };
        let outcome = transfer::start(&client, format!("transfer-{}-{i}", &run[24..]), t)
            .await?
            .result()
            .await?;
        println!("transfer {cents}: {outcome}");
    }
    worker.shutdown().await;

    // ANCHOR: read_model
    // A stable owner id: a run of this program takes back the lease its last run held.
    let balances = Projector::new(Arc::clone(&store), Balances).owner("ledger-example");
    balances.catch_up(|_, _| {}).await?;
    // Read your own write: wait until the read model has passed Alice's last event.
    let last = position_of(&*store, a.stream_id(), a.version().await?).await?;
    if let Some(position) = last {
        balances
            .wait_for(position, Duration::from_secs(5), Duration::from_millis(10))
            .await?;
    }
    let mut tx = store.begin_tx().await?;
    for account in [&alice, &bob] {
        let cents: i64 =
            quark_history::sqlx::query_scalar("SELECT cents FROM balances WHERE account = ?1")
                .bind(account)
                .fetch_one(tx.sqlite()?)
                .await?;
        println!("read model: {account} has {:.2}", cents as f64 / 100.0);
    }
    tx.rollback().await?;
    balances.release().await?;
    // ANCHOR_END: read_model

    // ANCHOR: time_travel
    let now = a.version().await?;
    let (then, _) = a.state_at(At::Version(2)).await?;
    println!(
        "{alice} at version 2 of {now}: {:.2}; now: {:.2}",
        then.cents as f64 / 100.0,
        a.state().await?.cents as f64 / 100.0
    );
    let diff = a.diff(2, now).await?;
    for e in &diff.events {
        println!(
            "    v{} {} (caused by {})",
            e.version,
            e.event_type,
            e.causation.as_deref().unwrap_or("-")
        );
    }
    let chain = store.verify(a.stream_id()).await?;
    println!(
        "hash chain of {}: {} events, {}",
        a.stream_id(),
        chain.events,
        if chain.is_intact() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    // ANCHOR_END: time_travel

    // ANCHOR: erasure
    // Alice asks to be forgotten: her key goes, her account stays.
    entities.erase_subject(&alice).await?;
    let after = a.state().await?;
    println!(
        "after erasure: owner {:?}, balance {:.2}, hash chain {}",
        after.owner,
        after.cents as f64 / 100.0,
        if store.verify(a.stream_id()).await?.is_intact() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    // ANCHOR_END: erasure
    Ok(())
}

/// The master key: `QUARK_MASTER_KEY`, or the key file beside the database (made, readable by
/// its owner only, on the first run). A real deployment keeps it out of the database's reach.
fn master_key(db: &str) -> anyhow::Result<MasterKey> {
    if let Ok(hex) = std::env::var("QUARK_MASTER_KEY") {
        return Ok(MasterKey::from_hex(&hex)?);
    }
    let file = format!("{db}.master-key");
    if let Ok(hex) = std::fs::read_to_string(&file) {
        return Ok(MasterKey::from_hex(&hex)?);
    }
    let hex = MasterKey::generate_hex()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&file)?, hex.as_bytes())?;
    Ok(MasterKey::from_hex(&hex)?)
}
