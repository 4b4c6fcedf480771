//! Two "services" that move money between them exactly once: the workload of
//! `examples/bank_transfer.rs`, of the `bank-worker` process and of the test that kills those
//! processes at random (`examples/tests/bank_transfer.rs`).
//!
//! - **Bank A** (schema `bank_a`) holds the source accounts. Its side of a transfer is two
//!   transactional activities: [`debit`] takes the money and, in the same transaction, writes a
//!   credit request to bank B into the outbox; [`refund`] gives it back.
//! - **Bank B** (schema `bank_b`) holds the destination accounts. It consumes requests through the
//!   outbox relay (a callback, [`consume`]) and applies each once with the inbox, in one
//!   transaction with its reply, which goes back through the outbox as a signal to the transfer.
//!   An account that is closed rejects the credit.
//! - **The transfer** ([`transfer_money`]) is a saga: debit (undone by a refund), register
//!   [`cancel_credit`] to tell bank B if the saga gives up, then wait for B's reply. A rejection or
//!   no reply within the timeout compensates: B reverses a credit it applied or remembers not to
//!   apply a late one, and A refunds. The request and the cancellation share an ordering key, so
//!   B always sees them in that order.
//!
//! Every effect is a database transaction that commits with the record of having happened (an
//! activity's completion or an inbox id), so no crash can apply one twice or lose one: the sum
//! of all balances never changes.

use std::sync::Arc;
use std::time::Duration;

use quark_history::sqlx::{self, Row};
use quark_history::{
    ClaimedMessage, DEFAULT_INBOX_WINDOW, Destination, OutboxMessage, PostgresStore, Received,
    Store, StoreTx,
};
use quark_worker::{DeliveryError, OutboxRelay, Worker};
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry,
    RetryPolicy, activity, orchestration,
};
use serde::{Deserialize, Serialize};

/// The callback bank B's consumer is registered under.
pub const BANK_B: &str = "bank_b";

/// The schemas and tables of both banks (dropped and created again).
pub const SCHEMA: &str = "
DROP SCHEMA IF EXISTS bank_a CASCADE;
DROP SCHEMA IF EXISTS bank_b CASCADE;
CREATE SCHEMA bank_a;
CREATE SCHEMA bank_b;
CREATE TABLE bank_a.accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0));
CREATE TABLE bank_a.transfers (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('debited', 'refunded')));
CREATE TABLE bank_b.accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL, open BOOLEAN NOT NULL);
CREATE TABLE bank_b.credits (
    transfer TEXT PRIMARY KEY, account TEXT NOT NULL, amount BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('credited', 'rejected', 'reversed', 'cancelled')));
";

/// A transfer from an account of bank A to one of bank B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its id: the orchestration's instance id, and the key of everything it writes.
    pub id: String,
    /// The account in bank A.
    pub from: String,
    /// The account in bank B.
    pub to: String,
    /// How much, in cents.
    pub amount: i64,
    /// How long to wait for bank B's reply before giving up, in milliseconds.
    pub reply_timeout_ms: u64,
}

/// What bank B is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Credit `amount` to `account` and reply to the transfer's instance.
    Credit {
        /// The transfer.
        transfer: String,
        /// The account in bank B.
        account: String,
        /// How much.
        amount: i64,
    },
    /// The transfer gave up: reverse its credit, or never apply it.
    Cancel {
        /// The transfer.
        transfer: String,
    },
}

/// Bank B's answer to a credit request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The money is in the account.
    Credited,
    /// The account does not take it.
    Rejected,
}

fn db(e: sqlx::Error) -> ActivityError {
    ActivityError::message(format!("database: {e}"))
}

/// Bank A: takes the money and asks bank B to credit it, in one transaction with the activity's
/// completion. Insufficient funds fail the transfer (terminal, nothing to undo).
#[activity(transactional, retry(max_attempts = 20, initial = "50ms", max = "1s"))]
pub async fn debit(ctx: ActivityContext, t: Transfer) -> Result<(), ActivityError> {
    {
        let mut tx = ctx.transaction().await?;
        let conn = tx.postgres()?;
        let taken = sqlx::query(
            "UPDATE bank_a.accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2",
        )
        .bind(&t.from)
        .bind(t.amount)
        .execute(&mut *conn)
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
        sqlx::query(
            "INSERT INTO bank_a.transfers (id, account, amount, state) VALUES ($1, $2, $3, 'debited')",
        )
        .bind(&t.id)
        .bind(&t.from)
        .bind(t.amount)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    let request = Request::Credit {
        transfer: t.id.clone(),
        account: t.to.clone(),
        amount: t.amount,
    };
    ctx.outbox().message(request_message(&t.id, &request)?);
    Ok(())
}

/// Bank A: gives a debited transfer's money back (once: the transfer's state says whether it was).
#[activity(transactional, retry(max_attempts = 20, initial = "50ms", max = "1s"))]
pub async fn refund(ctx: ActivityContext, t: Transfer) -> Result<(), ActivityError> {
    let mut tx = ctx.transaction().await?;
    let conn = tx.postgres()?;
    let refunded = sqlx::query(
        "UPDATE bank_a.transfers SET state = 'refunded' WHERE id = $1 AND state = 'debited'",
    )
    .bind(&t.id)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    if refunded == 1 {
        sqlx::query("UPDATE bank_a.accounts SET balance = balance + $2 WHERE id = $1")
            .bind(&t.from)
            .bind(t.amount)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Tells bank B the transfer gave up. The message is written with the activity's completion; it
/// follows the credit request on the transfer's ordering key.
#[activity(retry(max_attempts = 20, initial = "50ms", max = "1s"))]
pub async fn cancel_credit(ctx: ActivityContext, transfer: String) -> Result<(), ActivityError> {
    let request = Request::Cancel {
        transfer: transfer.clone(),
    };
    ctx.outbox().message(request_message(&transfer, &request)?);
    Ok(())
}

fn request_message(transfer: &str, request: &Request) -> Result<OutboxMessage, ActivityError> {
    Ok(OutboxMessage::json(Destination::callback(BANK_B), request)
        .map_err(|e| ActivityError::message(e).terminal())?
        .ordering_key(format!("transfer:{transfer}")))
}

/// The transfer saga. Returns bank B's reply; fails (after compensating) when it is not
/// `Credited`.
#[orchestration]
pub async fn transfer_money(
    ctx: OrchestrationContext,
    t: Transfer,
) -> Result<Reply, OrchestrationError> {
    ctx.saga()
        .compensation_retry(RetryPolicy::new(
            100,
            Duration::from_millis(200),
            Duration::from_secs(5),
        ))
        .run(|saga| async move {
            saga.step(debit, &t, refund, |()| t.clone()).await?;
            // If the saga gives up from here on, bank B must hear of it.
            saga.add(cancel_credit, &t.id)?;
            let reply: Option<Reply> = ctx
                .wait_for_signal("credit_reply")
                .timeout(Duration::from_millis(t.reply_timeout_ms))
                .await?;
            match reply {
                Some(Reply::Credited) => Ok(Reply::Credited),
                Some(Reply::Rejected) => Err(OrchestrationError::failed(format!(
                    "bank B rejected the credit to {}",
                    t.to
                ))),
                None => Err(OrchestrationError::failed(format!(
                    "no reply from bank B within {} ms",
                    t.reply_timeout_ms
                ))),
            }
        })
        .await
}

/// Bank B's side of one request, in one transaction with its inbox record and its reply.
async fn apply(
    store: &PostgresStore,
    tx: &mut StoreTx,
    request: &Request,
) -> Result<(), quark_history::Error> {
    let conn = tx.postgres()?;
    match request {
        Request::Credit {
            transfer,
            account,
            amount,
        } => {
            let cancelled: Option<String> = sqlx::query_scalar(
                "SELECT state FROM bank_b.credits WHERE transfer = $1 FOR UPDATE",
            )
            .bind(transfer)
            .fetch_optional(&mut *conn)
            .await?;
            if cancelled.is_some() {
                // The transfer gave up before this arrived: never apply it, and nobody waits
                // for a reply.
                return Ok(());
            }
            let open: Option<bool> =
                sqlx::query_scalar("SELECT open FROM bank_b.accounts WHERE id = $1 FOR UPDATE")
                    .bind(account)
                    .fetch_optional(&mut *conn)
                    .await?;
            let reply = if open == Some(true) {
                sqlx::query("UPDATE bank_b.accounts SET balance = balance + $2 WHERE id = $1")
                    .bind(account)
                    .bind(amount)
                    .execute(&mut *conn)
                    .await?;
                Reply::Credited
            } else {
                Reply::Rejected
            };
            let state = match reply {
                Reply::Credited => "credited",
                Reply::Rejected => "rejected",
            };
            sqlx::query(
                "INSERT INTO bank_b.credits (transfer, account, amount, state) VALUES ($1, $2, $3, $4)",
            )
            .bind(transfer)
            .bind(account)
            .bind(amount)
            .bind(state)
            .execute(&mut *conn)
            .await?;
            let answer = OutboxMessage::json(
                Destination::signal(transfer.as_str(), "credit_reply"),
                &reply,
            )?;
            store.send_tx(tx, vec![answer]).await?;
        }
        Request::Cancel { transfer } => {
            let row = sqlx::query(
                "SELECT account, amount, state FROM bank_b.credits WHERE transfer = $1 FOR UPDATE",
            )
            .bind(transfer)
            .fetch_optional(&mut *conn)
            .await?;
            match row {
                None => {
                    sqlx::query(
                        "INSERT INTO bank_b.credits (transfer, account, amount, state) \
                         VALUES ($1, '', 0, 'cancelled')",
                    )
                    .bind(transfer)
                    .execute(&mut *conn)
                    .await?;
                }
                Some(row) if row.try_get::<String, _>("state")? == "credited" => {
                    let account: String = row.try_get("account")?;
                    let amount: i64 = row.try_get("amount")?;
                    sqlx::query("UPDATE bank_b.accounts SET balance = balance - $2 WHERE id = $1")
                        .bind(&account)
                        .bind(amount)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("UPDATE bank_b.credits SET state = 'reversed' WHERE transfer = $1")
                        .bind(transfer)
                        .execute(&mut *conn)
                        .await?;
                }
                // Rejected, reversed or cancelled already: nothing to undo.
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Bank B's consumer: applies each request once per message (its idempotency key), however often
/// the relay delivers it.
pub async fn consume(store: PostgresStore, message: ClaimedMessage) -> Result<(), DeliveryError> {
    let request: Request = serde_json::from_slice(&message.payload)
        .map_err(|e| DeliveryError::permanent(format!("not a bank request: {e}")))?;
    let retry = |e: quark_history::Error| DeliveryError::retry(e.to_string());
    let mut tx = store.begin_tx().await.map_err(retry)?;
    // A duplicate (`Received::Duplicate`) was applied by an earlier delivery: nothing to do.
    let _: Received<()> = tx
        .once(
            &message.idempotency_key,
            DEFAULT_INBOX_WINDOW,
            async |tx: &mut StoreTx| apply(&store, tx, &request).await,
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    Ok(())
}

/// The registry of the transfer saga and bank A's activities.
pub fn registry() -> Registry {
    Registry::new()
        .register(transfer_money)
        .register(debit)
        .register(refund)
        .register(cancel_credit)
}

/// A worker that runs transfers and relays bank B's requests and replies.
pub fn worker(store: PostgresStore, lease: Duration) -> Result<Worker, quark_worker::BuildError> {
    Worker::builder()
        .store(Arc::new(store.clone()) as Arc<dyn Store>)
        .workflows(registry())
        .lease(lease)
        .heartbeat(lease / 4)
        .affinity_delay(Duration::from_millis(200))
        .outbox(
            // Leases as short as the tasks' (a killed worker's messages go to another within
            // seconds, not the default minute), and retries that outlast any outage.
            OutboxRelay::new()
                .lease(lease.max(Duration::from_secs(1)) * 2)
                .timeout(lease.max(Duration::from_secs(1)) / 2)
                .max_attempts(1000)
                .backoff(Duration::from_millis(50), Duration::from_secs(1))
                .callback(BANK_B, move |message| consume(store.clone(), message)),
        )
        .build()
}

/// Creates both banks: `a_accounts` accounts in A with `balance` each, `b_accounts` in B with
/// none, of which the ids in `closed` are closed.
pub async fn open_banks(
    pool: &sqlx::PgPool,
    a_accounts: usize,
    balance: i64,
    b_accounts: usize,
    closed: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    sqlx::query(
        "INSERT INTO bank_a.accounts (id, balance) SELECT 'a-' || n, $2 FROM generate_series(1, $1) n",
    )
    .bind(a_accounts as i64)
    .bind(balance)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO bank_b.accounts (id, balance, open) \
         SELECT 'b-' || n, 0, NOT (('b-' || n) = ANY($2)) FROM generate_series(1, $1) n",
    )
    .bind(b_accounts as i64)
    .bind(closed)
    .execute(pool)
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
    /// Reads them.
    pub async fn read(pool: &sqlx::PgPool) -> Result<Totals, sqlx::Error> {
        let a: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(balance), 0)::bigint FROM bank_a.accounts")
                .fetch_one(pool)
                .await?;
        let b: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(balance), 0)::bigint FROM bank_b.accounts")
                .fetch_one(pool)
                .await?;
        Ok(Totals { a, b })
    }

    /// Both together.
    pub fn sum(self) -> i64 {
        self.a + self.b
    }
}
