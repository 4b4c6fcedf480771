//! The bank transfer example under fire: 1,000 concurrent transfers between two PostgreSQL
//! schemas while worker processes (`bank-worker`) are killed with SIGKILL at random and started
//! again. Afterwards money is neither made nor lost (the sum of all balances is what it was),
//! every account holds exactly what the transfers that completed moved (none applied twice), and
//! every transfer ended one way or the other, consistently in both banks. Every tenth transfer
//! gives up waiting for bank B at once, so the compensation that reverses a credit (or stops a
//! late one) runs too.

use std::collections::HashMap;
use std::sync::Arc;

use quark_examples::bank::{Totals, Transfer, open_banks, transfer_money};
use quark_history::sqlx::{self, PgPool, Row};
use quark_history::testing::Raw;
use quark_history::{InstanceStatus, MessageState, OutboxFilter};
use quark_workflow::Client;

use crate::{Dice, kill_workers_until_done};

const TRANSFERS: usize = 1_000;
const A_ACCOUNTS: usize = 50;
const B_ACCOUNTS: usize = 20;
const BALANCE: i64 = 3_000;

async fn pending_messages(t: &quark_history::testing::TestStore) -> usize {
    t.store
        .list_outbox(
            OutboxFilter::default()
                .state(MessageState::Pending)
                .limit(10_000),
        )
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_transfers_keep_the_total_while_workers_are_killed() {
    if quark_tests::skip_slow("bank transfer under fire") {
        return;
    }
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    let Raw::Postgres(pool) = t.raw().clone() else {
        unreachable!("a PostgreSQL test store")
    };
    let closed = vec!["b-19".to_string(), "b-20".to_string()];
    open_banks(&pool, A_ACCOUNTS, BALANCE, B_ACCOUNTS, &closed)
        .await
        .unwrap();
    let before = Totals::read(&pool).await.unwrap();
    assert_eq!(before.sum(), A_ACCOUNTS as i64 * BALANCE);

    let client = Client::new(Arc::clone(&t.store));
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let mut transfers = HashMap::new();
    for n in 0..TRANSFERS {
        let transfer = Transfer {
            id: format!("t-{n}"),
            from: format!("a-{}", 1 + dice.roll(A_ACCOUNTS as u64)),
            to: format!("b-{}", 1 + dice.roll(B_ACCOUNTS as u64)),
            amount: 1 + dice.roll(400) as i64,
            // Every tenth transfer gives up on bank B's reply at once: its saga compensates
            // while its credit request may still be on its way or already applied.
            reply_timeout_ms: if n % 10 == 0 { 1 } else { 120_000 },
        };
        transfer_money::start(&client, &transfer.id, transfer.clone())
            .await
            .unwrap();
        transfers.insert(transfer.id.clone(), transfer);
    }

    // Three workers; every 300–700 ms one of them dies and a new one starts.
    let (workers, kills) =
        kill_workers_until_done(&t, &url, None, TRANSFERS, &mut dice, || {}).await;
    // The last messages (cancellations, late replies) are relayed by the survivors.
    quark_history::testing::eventually("every outbox message was relayed", async || {
        pending_messages(&t).await == 0
    })
    .await;
    drop(workers);
    assert!(kills >= 3, "only {kills} workers were killed");

    // Money is neither made nor lost.
    let after = Totals::read(&pool).await.unwrap();
    assert_eq!(after.sum(), before.sum(), "{before:?} became {after:?}");

    // Each transfer ended consistently in both banks.
    let a_state = states(&pool, "SELECT id, state FROM bank_a.transfers").await;
    let b_state = states(&pool, "SELECT transfer, state FROM bank_b.credits").await;
    let (mut completed, mut rejected, mut refused, mut gave_up) = (0, 0, 0, 0);
    let mut a_expected: HashMap<String, i64> = HashMap::new();
    let mut b_expected: HashMap<String, i64> = HashMap::new();
    for (id, transfer) in &transfers {
        let record = t.store.get_instance(id).await.unwrap().unwrap();
        let a = a_state.get(id).map(String::as_str);
        let b = b_state.get(id).map(String::as_str);
        match record.status {
            InstanceStatus::Completed => {
                assert_eq!((a, b), (Some("debited"), Some("credited")), "{id}");
                completed += 1;
                *a_expected.entry(transfer.from.clone()).or_default() -= transfer.amount;
                *b_expected.entry(transfer.to.clone()).or_default() += transfer.amount;
            }
            InstanceStatus::Failed => match (a, b) {
                (None, None) => refused += 1, // insufficient funds: nothing happened
                (Some("refunded"), Some("rejected")) => rejected += 1,
                (Some("refunded"), Some("reversed" | "cancelled")) => gave_up += 1,
                other => panic!("{id} failed with the banks in {other:?}"),
            },
            other => panic!("{id} is {other:?}"),
        }
    }
    // Every account holds exactly what the completed transfers moved: none applied twice.
    for (table, expected, start) in [
        ("bank_a.accounts", &a_expected, BALANCE),
        ("bank_b.accounts", &b_expected, 0),
    ] {
        let sql = format!("SELECT id, balance FROM {table}");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            let id: String = row.get("id");
            let balance: i64 = row.get("balance");
            let moved = expected.get(&id).copied().unwrap_or(0);
            assert_eq!(balance, start + moved, "{table} {id}");
        }
    }
    // Nothing is left but the reply timeouts' timers, which fire into closed instances later.
    let stats = t.store.queue_stats("default").await.unwrap();
    assert_eq!(
        (stats.leased, stats.dead, stats.held),
        (0, 0, 0),
        "{stats:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE kind <> 'timer'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "tasks other than timers left behind");
    eprintln!(
        "bank transfer: {completed} completed, {rejected} rejected by bank B, {refused} refused \
         for insufficient funds, {gave_up} gave up; {kills} workers killed with SIGKILL"
    );
    assert!(
        completed > 0 && rejected > 0 && refused > 0 && gave_up > 0,
        "every path was taken"
    );
    t.cleanup().await;
}

async fn states(pool: &PgPool, sql: &'static str) -> HashMap<String, String> {
    sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}
