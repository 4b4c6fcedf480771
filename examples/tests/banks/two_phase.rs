//! The two-phase commit bank transfer under fire: 300 concurrent transfers from bank A (one
//! PostgreSQL server) to bank B (another), the engine on a third database, while worker
//! processes (`bank-worker` with `QUARK_PARTICIPANTS`), which are also the coordinators, are
//! killed with SIGKILL at random and started again. Meanwhile a reader reads both banks the
//! locking way ([`Totals::read_locked`]) as fast as it can: it must never see money in flight.
//! Afterwards the total is unchanged, every completed transfer is in both banks and every
//! refused one in neither, no account moved more than the completed transfers say, and nothing
//! is left prepared in either bank.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quark_examples::bank_two_phase::{Totals, Transfer, open_banks, transfer_atomically};
use quark_history::InstanceStatus;
use quark_history::sqlx::{self, Connection, PgConnection, PgPool, Row};
use quark_history::testing::ClusterDatabases;
use quark_workflow::Client;

use crate::{Dice, kill_workers_until_done};

const TRANSFERS: usize = 300;
const A_ACCOUNTS: usize = 40;
const B_ACCOUNTS: usize = 15;
const BALANCE: i64 = 2_000;

async fn prepared(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_across_two_servers_are_never_seen_in_flight_while_coordinators_are_killed() {
    if quark_tests::skip_slow("two-phase bank transfer under fire") {
        return;
    }
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let Some(banks) = ClusterDatabases::create(2).await else {
        t.cleanup().await;
        return;
    };
    let url = t.database_url().unwrap();
    let (a, b) = (
        PgPool::connect(&banks.urls[0]).await.unwrap(),
        PgPool::connect(&banks.urls[1]).await.unwrap(),
    );
    open_banks(&a, &b, A_ACCOUNTS, BALANCE, B_ACCOUNTS)
        .await
        .unwrap();
    let before = Totals::read(&a, &b).await.unwrap();
    assert_eq!(before.sum(), A_ACCOUNTS as i64 * BALANCE);
    let participants = format!("bank_a={},bank_b={}", banks.urls[0], banks.urls[1]);

    let client = Client::new(Arc::clone(&t.store));
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut transfers = HashMap::new();
    for n in 0..TRANSFERS {
        let transfer = Transfer {
            id: format!("t-{n}"),
            from: format!("a-{}", 1 + dice.roll(A_ACCOUNTS as u64)),
            to: format!("b-{}", 1 + dice.roll(B_ACCOUNTS as u64)),
            // Some beyond what an account holds after a few transfers: refused.
            amount: 1 + dice.roll(700) as i64,
        };
        transfer_atomically::start(&client, &transfer.id, transfer.clone())
            .await
            .unwrap();
        transfers.insert(transfer.id.clone(), transfer);
    }

    // The reader: both banks, locking, over and over until the transfers are done.
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (urls, done, reads) = (banks.urls.clone(), Arc::clone(&done), Arc::clone(&reads));
        let total = before.sum();
        tokio::spawn(async move {
            let mut ca = PgConnection::connect(&urls[0]).await.unwrap();
            let mut cb = PgConnection::connect(&urls[1]).await.unwrap();
            while !done.load(Ordering::Acquire) {
                let seen = Totals::read_locked(&mut ca, &mut cb).await.unwrap();
                assert_eq!(
                    seen.sum(),
                    total,
                    "a locking reader saw money in flight: {seen:?}"
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Three workers; every 300–700 ms one of them dies and a new one starts.
    let (workers, kills) =
        kill_workers_until_done(&t, &url, Some(&participants), TRANSFERS, &mut dice, || {
            assert!(!reader.is_finished(), "the reader stopped early")
        })
        .await;
    // What killed coordinators left prepared is finished by the survivors' recovery (decided
    // branches) and by retries (undecided ones).
    quark_history::testing::eventually("nothing is left prepared in either bank", async || {
        prepared(&a).await + prepared(&b).await == 0
    })
    .await;
    done.store(true, Ordering::Release);
    reader.await.expect("the reader never saw money in flight");
    drop(workers);
    assert!(kills >= 3, "only {kills} workers were killed");

    let after = Totals::read(&a, &b).await.unwrap();
    assert_eq!(after.sum(), before.sum(), "{before:?} became {after:?}");

    // Every completed transfer is in both banks, every refused one in neither.
    let debits = ids(&a, "SELECT id FROM transfers").await;
    let credits = ids(&b, "SELECT transfer FROM credits").await;
    let (mut completed, mut refused) = (0, 0);
    let mut a_expected: HashMap<String, i64> = HashMap::new();
    let mut b_expected: HashMap<String, i64> = HashMap::new();
    for (id, transfer) in &transfers {
        let record = t.store.get_instance(id).await.unwrap().unwrap();
        let written = (debits.contains_key(id), credits.contains_key(id));
        match record.status {
            InstanceStatus::Completed => {
                assert_eq!(written, (true, true), "{id}");
                completed += 1;
                *a_expected.entry(transfer.from.clone()).or_default() -= transfer.amount;
                *b_expected.entry(transfer.to.clone()).or_default() += transfer.amount;
            }
            InstanceStatus::Failed => {
                assert_eq!(written, (false, false), "{id}: refused, yet written");
                refused += 1;
            }
            other => panic!("{id} is {other:?}"),
        }
    }
    // Every account holds exactly what the completed transfers moved: none applied twice.
    for (pool, expected, start) in [(&a, &a_expected, BALANCE), (&b, &b_expected, 0)] {
        for row in sqlx::query("SELECT id, balance FROM accounts")
            .fetch_all(pool)
            .await
            .unwrap()
        {
            let id: String = row.get("id");
            let balance: i64 = row.get("balance");
            assert_eq!(
                balance,
                start + expected.get(&id).copied().unwrap_or(0),
                "{id}"
            );
        }
    }
    assert!(
        t.store
            .decisions()
            .await
            .unwrap()
            .iter()
            .all(|d| d.decision == quark_history::two_phase::Decision::Abort),
        "decisions to commit are forgotten once their branches are finished"
    );
    eprintln!(
        "two-phase bank transfer: {completed} completed, {refused} refused for insufficient \
         funds; {kills} workers killed with SIGKILL; {} locking reads, none saw money in flight",
        reads.load(Ordering::Relaxed)
    );
    assert!(completed > 0 && refused > 0, "both outcomes were taken");
    a.close().await;
    b.close().await;
    banks.cleanup().await;
    t.cleanup().await;
}

async fn ids(pool: &PgPool, sql: &'static str) -> HashMap<String, ()> {
    sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), ()))
        .collect()
}

/// The moment the chaos test can only hit by chance, staged: a transfer committed in bank A and
/// not yet in bank B (its coordinator died between the two commits). A reader without locks sees
/// the money in flight; the locking reader waits until recovery commits B, then sees it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locking_reader_waits_for_a_transfer_committed_in_one_bank_only() {
    use quark_history::two_phase::{Coordinator, Decision};
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let Some(banks) = ClusterDatabases::create(2).await else {
        t.cleanup().await;
        return;
    };
    let (a, b) = (
        PgPool::connect(&banks.urls[0]).await.unwrap(),
        PgPool::connect(&banks.urls[1]).await.unwrap(),
    );
    open_banks(&a, &b, 1, 100, 1).await.unwrap();
    let participants =
        quark_examples::bank_two_phase::participants(&banks.urls[0], &banks.urls[1]).unwrap();
    let c = Coordinator::new(Arc::clone(&t.store), participants);
    let gid = c.gid("staged").await.unwrap();
    let mut debit = c.begin("bank_a").await.unwrap();
    sqlx::query("UPDATE accounts SET balance = balance - 40")
        .execute(debit.connection())
        .await
        .unwrap();
    let mut credit = c.begin("bank_b").await.unwrap();
    sqlx::query("UPDATE accounts SET balance = balance + 40")
        .execute(credit.connection())
        .await
        .unwrap();
    let prepared = c.prepare(&gid, vec![debit, credit]).await.unwrap();
    assert_eq!(
        t.store
            .decide(&gid, Decision::Commit, prepared.participants())
            .await
            .unwrap(),
        Decision::Commit
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("COMMIT PREPARED '{gid}'")))
        .execute(&a)
        .await
        .unwrap();

    let unlocked = Totals::read(&a, &b).await.unwrap();
    assert_eq!(
        unlocked,
        Totals { a: 60, b: 0 },
        "money in flight, seen without locks"
    );

    let mut ca = PgConnection::connect(&banks.urls[0]).await.unwrap();
    let mut cb = PgConnection::connect(&banks.urls[1]).await.unwrap();
    let locked = tokio::spawn(async move { Totals::read_locked(&mut ca, &mut cb).await });
    // It is blocked on B's prepared row: it has not answered while B is still prepared.
    let holder: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_prepared_xacts p ON p.transaction = l.transactionid \
         WHERE p.gid = $1",
    )
    .bind(&gid)
    .fetch_one(&b)
    .await
    .unwrap();
    assert!(holder > 0, "B's branch holds its lock");
    quark_history::testing::eventually(
        "the locking reader waits on B's prepared branch",
        async || {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
            )
            .fetch_one(&b)
            .await
            .unwrap();
            waiting > 0
        },
    )
    .await;
    assert!(
        !locked.is_finished(),
        "the locking reader answered with B still prepared"
    );

    let pass = c.recover(Duration::ZERO).await.unwrap();
    assert_eq!(pass.committed, 1);
    let seen = locked.await.unwrap().unwrap();
    assert_eq!(
        seen,
        Totals { a: 60, b: 40 },
        "all of the transfer, once B committed"
    );
    a.close().await;
    b.close().await;
    banks.cleanup().await;
    t.cleanup().await;
}
