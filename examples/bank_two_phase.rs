//! Money between two banks on two PostgreSQL servers, in one atomic step: the two-phase commit
//! variant of [`crate::bank`]. The workload of the `bank-worker` process when
//! `QUARK_PARTICIPANTS` names the banks, and of the test that kills those processes at random
//! (`examples/tests/bank_two_phase.rs`).
//!
//! - **Bank A** (participant `bank_a`, its own database) holds the source accounts, **bank B**
//!   (participant `bank_b`, another server) the destination accounts.
//! - **The transfer** ([`transfer_atomically`]) is one orchestration calling one transactional
//!   activity, [`move_money`]: it debits A and credits B in branches of one two-phase
//!   transaction, which commits with the activity's result (the decision is written in the
//!   engine's database in the same transaction) or not at all. Insufficient funds fail it, and
//!   nothing is written anywhere.
//!
//! Where the saga of [`crate::bank`] lets a reader of both banks see money in flight (debited in
//! A, not yet credited in B), here no reader that locks what it reads ([`Totals::read_locked`])
//! ever does: a prepared branch holds its row locks until it is committed, so such a reader
//! waits for it. Every writer and reader touches A before B, so none of them waits in a circle.

use std::sync::Arc;
use std::time::Duration;

use quark_history::sqlx::{self, Connection, PgConnection};
use quark_history::two_phase::Participants;
use quark_history::{PostgresStore, Store};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
    orchestration,
};
use serde::{Deserialize, Serialize};

/// The participant that holds bank A.
pub const BANK_A: &str = "bank_a";
/// The participant that holds bank B.
pub const BANK_B: &str = "bank_b";

/// Bank A's tables (in its own database).
pub const SCHEMA_A: &str = "
DROP TABLE IF EXISTS accounts, transfers;
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0));
CREATE TABLE transfers (id TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL);
";

/// Bank B's tables (in its own database).
pub const SCHEMA_B: &str = "
DROP TABLE IF EXISTS accounts, credits;
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL);
CREATE TABLE credits (transfer TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL);
";

/// A transfer from an account of bank A to one of bank B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its id: the orchestration's instance id, and the key of what it writes.
    pub id: String,
    /// The account in bank A.
    pub from: String,
    /// The account in bank B.
    pub to: String,
    /// How much, in cents.
    pub amount: i64,
}

fn db(e: sqlx::Error) -> ActivityError {
    ActivityError::message(format!("database: {e}"))
}

/// Debits A and credits B, atomically across both servers and with the activity's result.
#[activity(transactional, retry(max_attempts = 50, initial = "50ms", max = "1s"))]
pub async fn move_money(ctx: ActivityContext, t: Transfer) -> Result<(), ActivityError> {
    {
        let mut a = ctx.participant(BANK_A).await?;
        let taken = sqlx::query(
            "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2",
        )
        .bind(&t.from)
        .bind(t.amount)
        .execute(&mut *a)
        .await
        .map_err(db)?
        .rows_affected();
        if taken == 0 {
            return Err(ActivityError::message(format!(
                "insufficient funds in {} for {}",
                t.from, t.amount
            ))
            .terminal());
        }
        sqlx::query("INSERT INTO transfers (id, account, amount) VALUES ($1, $2, $3)")
            .bind(&t.id)
            .bind(&t.from)
            .bind(t.amount)
            .execute(&mut *a)
            .await
            .map_err(db)?;
    }
    let mut b = ctx.participant(BANK_B).await?;
    sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
        .bind(&t.to)
        .bind(t.amount)
        .execute(&mut *b)
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO credits (transfer, account, amount) VALUES ($1, $2, $3)")
        .bind(&t.id)
        .bind(&t.to)
        .bind(t.amount)
        .execute(&mut *b)
        .await
        .map_err(db)?;
    Ok(())
}

/// A transfer: one atomic step.
#[orchestration]
pub async fn transfer_atomically(
    ctx: OrchestrationContext,
    t: Transfer,
) -> Result<(), OrchestrationError> {
    ctx.call(move_money, &t).await
}

/// The registry of the transfer.
pub fn registry() -> Registry {
    Registry::new()
        .register(transfer_atomically)
        .register(move_money)
}

/// The participants: bank A at `a`, bank B at `b`.
pub fn participants(a: &str, b: &str) -> Result<Participants, quark_history::Error> {
    Participants::connect([(BANK_A, a), (BANK_B, b)])
}

/// A worker that runs transfers, with leases of `lease`.
pub fn worker(
    store: PostgresStore,
    participants: Participants,
    lease: Duration,
) -> Result<Worker, quark_worker::BuildError> {
    Worker::builder()
        .store(Arc::new(store) as Arc<dyn Store>)
        .workflows(registry())
        .participants(participants)
        .lease(lease)
        .heartbeat(lease / 4)
        .affinity_delay(Duration::from_millis(200))
        .build()
}

/// Creates both banks: `a_accounts` accounts in A (at `a`) with `balance` each, `b_accounts` in
/// B (at `b`) with none.
pub async fn open_banks(
    a: &sqlx::PgPool,
    b: &sqlx::PgPool,
    a_accounts: usize,
    balance: i64,
    b_accounts: usize,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA_A).execute(a).await?;
    sqlx::raw_sql(SCHEMA_B).execute(b).await?;
    sqlx::query(
        "INSERT INTO accounts (id, balance) SELECT 'a-' || n, $2 FROM generate_series(1, $1) n",
    )
    .bind(a_accounts as i64)
    .bind(balance)
    .execute(a)
    .await?;
    sqlx::query(
        "INSERT INTO accounts (id, balance) SELECT 'b-' || n, 0 FROM generate_series(1, $1) n",
    )
    .bind(b_accounts as i64)
    .execute(b)
    .await?;
    Ok(())
}

/// The balances of both banks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// The sum over bank A.
    pub a: i64,
    /// The sum over bank B.
    pub b: i64,
}

impl Totals {
    /// Reads both banks as a reader that must not see money in flight does: every account row
    /// locked `FOR SHARE`, bank A first, and both kept until both are read. A transfer prepared
    /// or committed in one bank and not yet in the other holds its rows there, so the reader
    /// waits for it to finish.
    pub async fn read_locked(
        a: &mut PgConnection,
        b: &mut PgConnection,
    ) -> Result<Totals, sqlx::Error> {
        let sum = "SELECT COALESCE(sum(balance), 0)::bigint FROM \
                   (SELECT balance FROM accounts ORDER BY id FOR SHARE) locked";
        let mut ta = a.begin().await?;
        let sum_a: i64 = sqlx::query_scalar(sum).fetch_one(&mut *ta).await?;
        let mut tb = b.begin().await?;
        let sum_b: i64 = sqlx::query_scalar(sum).fetch_one(&mut *tb).await?;
        tb.commit().await?;
        ta.commit().await?;
        Ok(Totals { a: sum_a, b: sum_b })
    }

    /// Reads both banks one after the other without locks, as a report would: it can see a
    /// transfer committed in one bank and not yet in the other.
    pub async fn read(a: &sqlx::PgPool, b: &sqlx::PgPool) -> Result<Totals, sqlx::Error> {
        let sum = "SELECT COALESCE(sum(balance), 0)::bigint FROM accounts";
        Ok(Totals {
            a: sqlx::query_scalar(sum).fetch_one(a).await?,
            b: sqlx::query_scalar(sum).fetch_one(b).await?,
        })
    }

    /// Both together.
    pub fn sum(self) -> i64 {
        self.a + self.b
    }
}
