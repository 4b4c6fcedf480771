//! Transactional activities that write in other PostgreSQL databases (participants), on both
//! engine backends: their writes there commit with the result by two-phase commit, a failed
//! attempt's roll back, and nothing stays prepared. (Workers killed at the commit's crash points
//! are in `tests/tests/end_to_end/two_phase_crash.rs`; recovery's cases in quark-history's
//! conformance tests.)

use std::sync::Arc;
use std::time::Duration;

use quark_history::sqlx::{self, PgPool};
use quark_history::testing::{ClusterDatabases, TestStore, eventually};
use quark_history::two_phase::{Coordinator, Decision, Participants};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, ClientError, OrchestrationContext, OrchestrationError,
    Registry, activity, orchestration,
};
use serde::{Deserialize, Serialize};

quark_history::backend_tests!(
    it_commits_an_activitys_writes_in_two_databases_with_its_result,
    it_refuses_participants_to_an_activity_that_is_not_transactional,
    it_lists_and_resolves_in_doubt_transactions_from_the_command_line,
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Move {
    amount: i64,
    /// The first attempt fails after writing in both databases.
    fail_first: bool,
}

async fn add(conn: &mut sqlx::PgConnection, amount: i64) -> Result<(), ActivityError> {
    sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = 'x'")
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves money from bank A to bank B; returns the attempt that did it.
#[activity(transactional, retry(max_attempts = 3, initial = "10ms", max = "10ms"))]
async fn move_money(ctx: ActivityContext, m: Move) -> Result<u32, ActivityError> {
    // Both connections held at once.
    let mut a = ctx.participant("bank_a").await?;
    let mut b = ctx.participant("bank_b").await?;
    add(&mut a, -m.amount).await?;
    add(&mut b, m.amount).await?;
    drop((a, b));
    // Named again: the same branch.
    add(&mut *ctx.participant("bank_a").await?, 0).await?;
    if m.fail_first && ctx.attempt() == 1 {
        return Err(ActivityError::message(
            "the first attempt fails after its writes",
        ));
    }
    Ok(ctx.attempt())
}

#[orchestration]
async fn transfer(ctx: OrchestrationContext, m: Move) -> Result<u32, OrchestrationError> {
    ctx.call(move_money, &m).await
}

#[activity(retry(max_attempts = 1))]
async fn plain_writer(ctx: ActivityContext) -> Result<(), ActivityError> {
    add(&mut *ctx.participant("bank_a").await?, 1).await
}

#[orchestration]
async fn plain(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    ctx.call(plain_writer, &()).await
}

struct Banks {
    dbs: ClusterDatabases,
    a: PgPool,
    b: PgPool,
}

impl Banks {
    async fn open() -> Option<Banks> {
        let dbs = ClusterDatabases::create(2).await?;
        let a = PgPool::connect(&dbs.urls[0]).await.unwrap();
        let b = PgPool::connect(&dbs.urls[1]).await.unwrap();
        for pool in [&a, &b] {
            sqlx::raw_sql(
                "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL);
                 INSERT INTO accounts VALUES ('x', 100);",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        Some(Banks { dbs, a, b })
    }

    fn participants(&self) -> Participants {
        Participants::connect([("bank_a", &self.dbs.urls[0]), ("bank_b", &self.dbs.urls[1])])
            .unwrap()
    }

    async fn balances(&self) -> (i64, i64) {
        let read = "SELECT balance FROM accounts WHERE id = 'x'";
        (
            sqlx::query_scalar(read).fetch_one(&self.a).await.unwrap(),
            sqlx::query_scalar(read).fetch_one(&self.b).await.unwrap(),
        )
    }

    async fn prepared(&self) -> i64 {
        let count = "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()";
        let a: i64 = sqlx::query_scalar(count).fetch_one(&self.a).await.unwrap();
        let b: i64 = sqlx::query_scalar(count).fetch_one(&self.b).await.unwrap();
        a + b
    }

    async fn cleanup(self) {
        self.a.close().await;
        self.b.close().await;
        self.dbs.cleanup().await;
    }
}

async fn worker(t: &TestStore, banks: &Banks) -> quark_worker::RunningWorker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(transfer)
                .register(move_money)
                .register(plain)
                .register(plain_writer),
        )
        .participants(banks.participants())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn it_commits_an_activitys_writes_in_two_databases_with_its_result(t: &TestStore) {
    let Some(banks) = Banks::open().await else {
        return;
    };
    let running = worker(t, &banks).await;
    let client = Client::new(Arc::clone(&t.store));
    for (id, amount, fail_first, attempt) in [("t-1", 30, false, 1), ("t-2", 20, true, 2)] {
        let handle = transfer::start(&client, id, Move { amount, fail_first })
            .await
            .unwrap();
        // The retry waits on the test's clock.
        t.advance_until(
            Duration::from_millis(10),
            "the transfer completed",
            async || {
                let r = t.store.get_instance(id).await.unwrap().unwrap();
                r.status.is_closed()
            },
        )
        .await;
        assert_eq!(handle.result().await.unwrap(), attempt);
    }
    // The orchestration may see the result a moment before the branches are committed (the
    // decision is the commit point; the commits follow it): then nothing stays prepared.
    eventually("the branches are finished", async || {
        banks.prepared().await == 0
    })
    .await;
    // Both transfers once each; the failed attempt's writes rolled back in both banks.
    assert_eq!(banks.balances().await, (50, 150));
    assert!(
        t.store.decisions().await.unwrap().is_empty(),
        "the decisions of finished commits are forgotten"
    );
    running.shutdown().await;
    banks.cleanup().await;
}

async fn it_refuses_participants_to_an_activity_that_is_not_transactional(t: &TestStore) {
    let Some(banks) = Banks::open().await else {
        return;
    };
    let running = worker(t, &banks).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = plain::start(&client, "p-1", ()).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap();
    match result {
        Err(ClientError::Failed { failure, .. }) => assert!(
            failure
                .message
                .contains("declare it #[activity(transactional)]"),
            "{}",
            failure.message
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(banks.balances().await, (100, 100));
    running.shutdown().await;
    banks.cleanup().await;
}

/// Runs `quark ARGS` on `t`'s database.
async fn quark(t: &TestStore, args: &[&str]) -> String {
    use clap::Parser;
    let cli = quark_worker::cli::Cli::try_parse_from(
        std::iter::once("quark").chain(args.iter().copied()),
    )
    .unwrap();
    let mut out = Vec::new();
    quark_worker::cli::run_on(
        Arc::clone(&t.store),
        cli.command,
        cli.output,
        None,
        &mut out,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

async fn it_lists_and_resolves_in_doubt_transactions_from_the_command_line(t: &TestStore) {
    let Some(banks) = Banks::open().await else {
        return;
    };
    let c = Coordinator::new(Arc::clone(&t.store), banks.participants());
    let a = format!("--participant=bank_a={}", banks.dbs.urls[0]);
    let b = format!("--participant=bank_b={}", banks.dbs.urls[1]);
    // A transfer prepared in both banks whose coordinator died before deciding.
    let gid = c.gid("cli-1").await.unwrap();
    let mut branches = Vec::new();
    for (name, amount) in [("bank_a", -10), ("bank_b", 10)] {
        let mut branch = c.begin(name).await.unwrap();
        add(branch.connection(), amount).await.unwrap();
        branches.push(branch);
    }
    let _prepared = c.prepare(&gid, branches).await.unwrap();

    let listed: serde_json::Value =
        serde_json::from_str(&quark(t, &["--output", "json", "tx", "in-doubt", &a, &b]).await)
            .unwrap();
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows.iter()
            .all(|r| r["gid"] == gid.as_str() && r["decision"].is_null())
    );
    let participants: Vec<&str> = rows
        .iter()
        .map(|r| r["participant"].as_str().unwrap())
        .collect();
    assert_eq!(participants, ["bank_a", "bank_b"]);

    let resolved = quark(t, &["tx", "resolve", &gid, "--commit", &a, &b]).await;
    assert_eq!(resolved.trim(), format!("{gid}: commit"));
    assert_eq!(banks.balances().await, (90, 110));
    assert_eq!(banks.prepared().await, 0);

    // One decided to abort: the operator's commit is not applied, and the output says so.
    let gid = c.gid("cli-2").await.unwrap();
    let mut branch = c.begin("bank_a").await.unwrap();
    add(branch.connection(), -50).await.unwrap();
    let prepared = c.prepare(&gid, vec![branch]).await.unwrap();
    t.store
        .decide(&gid, Decision::Abort, prepared.participants())
        .await
        .unwrap();
    let resolved = quark(t, &["tx", "resolve", &gid, "--commit", &a, &b]).await;
    assert!(
        resolved.contains("abort (already decided; commit was not applied)"),
        "{resolved}"
    );
    assert_eq!(banks.balances().await, (90, 110));
    let listed = quark(t, &["--output", "json", "tx", "in-doubt", &a, &b]).await;
    assert_eq!(listed.trim(), "[]");
    banks.cleanup().await;
}
