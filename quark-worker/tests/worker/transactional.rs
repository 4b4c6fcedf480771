//! Transactional activities on the worker runtime, on both backends: the activity's own writes,
//! its outbox messages and its result commit together, so a failed attempt leaves nothing behind
//! and a completed one is written once; inbox ids received in the transaction deduplicate.
//! (Crashes at each point of a transactional activity are in
//! `tests/tests/end_to_end/transactional_crash.rs`.)

use std::sync::Arc;
use std::time::Duration;

use quark_history::Clock;
use quark_history::testing::{TestStore, eventually};
use quark_history::{Backend, Destination, OutboxFilter, Received, StoreTx};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, ClientError, OrchestrationContext, OrchestrationError,
    Registry, activity, orchestration,
};
use serde::{Deserialize, Serialize};

quark_history::backend_tests!(
    it_commits_a_transactional_activitys_writes_and_messages_once_with_its_result,
    it_refuses_a_transaction_to_an_activity_that_is_not_transactional,
    it_applies_an_inbox_message_once_across_two_activities,
    it_sends_an_ordinary_activitys_messages_with_its_result,
    it_holds_no_more_transactions_at_once_than_the_worker_allows,
    it_does_not_count_a_lease_lost_for_a_task_whose_commit_is_written,
);

/// Runs one statement of the activity's own in its transaction, on either database.
async fn exec(tx: &mut StoreTx, sql: String) -> Result<(), ActivityError> {
    let sql = quark_history::sqlx::AssertSqlSafe(sql);
    match tx.backend() {
        Backend::Postgres => {
            quark_history::sqlx::query(sql)
                .execute(tx.postgres()?)
                .await?;
        }
        _ => {
            quark_history::sqlx::query(sql)
                .execute(tx.sqlite()?)
                .await?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposit {
    id: String,
    fail_first: bool,
}

/// Writes a row and sends a message; the first attempt fails after both when asked to.
#[activity(transactional, retry(max_attempts = 3, initial = "10ms", max = "10ms"))]
async fn deposit(ctx: ActivityContext, d: Deposit) -> Result<u32, ActivityError> {
    {
        let mut tx = ctx.transaction().await?;
        let sql = format!(
            "INSERT INTO deposits (id, attempt) VALUES ('{}', {})",
            d.id,
            ctx.attempt()
        );
        exec(&mut tx, sql).await?;
    }
    ctx.outbox()
        .send(Destination::callback("deposits"), &d.id)?;
    if d.fail_first && ctx.attempt() == 1 {
        return Err(ActivityError::message(
            "the first attempt fails after its writes",
        ));
    }
    Ok(ctx.attempt())
}

#[orchestration]
async fn make_deposit(ctx: OrchestrationContext, d: Deposit) -> Result<u32, OrchestrationError> {
    ctx.call(deposit, &d).await
}

#[activity(retry(max_attempts = 1))]
async fn not_transactional(ctx: ActivityContext) -> Result<(), ActivityError> {
    let _tx = ctx.transaction().await?;
    Ok(())
}

#[orchestration]
async fn wants_a_transaction(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    ctx.call(not_transactional, &()).await
}

/// Applies a credit once per message id.
#[activity(transactional)]
async fn credit(ctx: ActivityContext, message_id: String) -> Result<String, ActivityError> {
    let outcome = ctx
        .inbox()
        .once(&message_id, async |tx: &mut StoreTx| {
            exec(
                tx,
                format!("INSERT INTO credits (message_id) VALUES ('{message_id}')"),
            )
            .await
        })
        .await?;
    Ok(match outcome {
        Received::First(()) => "applied".into(),
        Received::Duplicate => "duplicate".into(),
    })
}

#[orchestration]
async fn credit_twice(
    ctx: OrchestrationContext,
    message_id: String,
) -> Result<Vec<String>, OrchestrationError> {
    let first = ctx.call(credit, &message_id).await?;
    let second = ctx.call(credit, &message_id).await?;
    Ok(vec![first, second])
}

/// Not transactional: its messages are written with its result all the same.
#[activity]
async fn announce(ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    ctx.outbox()
        .send(Destination::callback("announcements"), &n)?;
    Ok(n)
}

#[orchestration]
async fn announce_three(ctx: OrchestrationContext) -> Result<u32, OrchestrationError> {
    let mut sum = 0;
    for n in 1..=3 {
        sum += ctx.call(announce, &n).await?;
    }
    Ok(sum)
}

/// Open transactions of the `counted` activity, per gauge (one per test, since the backends' tests
/// may run at the same time): (open now, most at once).
static GAUGES: std::sync::Mutex<Vec<(String, usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn gauge(name: &str, change: isize) -> usize {
    let mut gauges = GAUGES.lock().unwrap();
    let i = match gauges.iter().position(|(n, _, _)| n == name) {
        Some(i) => i,
        None => {
            gauges.push((name.to_string(), 0, 0));
            gauges.len() - 1
        }
    };
    let (_, open, most) = &mut gauges[i];
    *open = open.checked_add_signed(change).unwrap();
    *most = (*most).max(*open);
    *most
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Counted {
    gauge: String,
    n: u32,
}

/// Counts itself open while it writes a row in its transaction.
#[activity(transactional)]
async fn counted(ctx: ActivityContext, c: Counted) -> Result<(), ActivityError> {
    /// Counts the activity closed however it ends (an attempt whose lease is lost is dropped).
    struct Open(String);
    impl Drop for Open {
        fn drop(&mut self) {
            gauge(&self.0, -1);
        }
    }
    let mut tx = ctx.transaction().await?;
    gauge(&c.gauge, 1);
    let _open = Open(c.gauge.clone());
    crate::support::meet(&c.gauge).await;
    exec(&mut tx, format!("INSERT INTO counted (n) VALUES ({})", c.n)).await?;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Calls `counted` `n` times at once.
#[orchestration]
async fn count_many(
    ctx: OrchestrationContext,
    (gauge, n): (String, u32),
) -> Result<u32, OrchestrationError> {
    let calls: Vec<_> = (0..n)
        .map(|n| {
            let c = Counted {
                gauge: gauge.clone(),
                n,
            };
            ctx.call(counted, &c)
        })
        .collect();
    for done in ctx.join(calls).await {
        done?;
    }
    Ok(n)
}

async fn worker(t: &TestStore) -> quark_worker::RunningWorker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(make_deposit)
                .register(deposit)
                .register(wants_a_transaction)
                .register(not_transactional)
                .register(credit_twice)
                .register(credit)
                .register(announce_three)
                .register(announce)
                .register(count_many)
                .register(counted),
        )
        .transactions(2)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn it_commits_a_transactional_activitys_writes_and_messages_once_with_its_result(
    t: &TestStore,
) {
    t.execute("CREATE TABLE deposits (id TEXT, attempt BIGINT)")
        .await;
    let running = worker(t).await;
    let client = Client::new(Arc::clone(&t.store));
    for (id, fail_first, attempts) in [("d-1", false, 1), ("d-2", true, 2)] {
        let d = Deposit {
            id: id.into(),
            fail_first,
        };
        let handle = make_deposit::start(&client, id, d).await.unwrap();
        // The retry waits on the test's clock.
        t.advance_until(
            Duration::from_millis(10),
            "the deposit completed",
            async || {
                let r = t.store.get_instance(id).await.unwrap().unwrap();
                r.status.is_closed()
            },
        )
        .await;
        let ran = handle.result().await.unwrap();
        assert_eq!(ran, attempts);
        // One row, written by the attempt that completed; the failed attempt's row is gone.
        let rows = format!("SELECT count(*) FROM deposits WHERE id = '{id}'");
        assert_eq!(t.scalar(&rows).await, 1);
        let last = format!("SELECT max(attempt) FROM deposits WHERE id = '{id}'");
        assert_eq!(t.scalar(&last).await, i64::from(attempts));
    }
    // One message per completed activity, none from the failed attempt.
    let messages = t.store.list_outbox(OutboxFilter::default()).await.unwrap();
    let mut payloads: Vec<String> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["d-1", "d-2"]);
    running.shutdown().await;
}

async fn it_refuses_a_transaction_to_an_activity_that_is_not_transactional(t: &TestStore) {
    let running = worker(t).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = wants_a_transaction::start(&client, "w-1", ())
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap();
    match result {
        Err(ClientError::Failed { failure, .. }) => assert!(
            failure
                .message
                .contains("has no transaction: declare it #[activity(transactional)]"),
            "{}",
            failure.message
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    running.shutdown().await;
}

async fn it_applies_an_inbox_message_once_across_two_activities(t: &TestStore) {
    t.execute("CREATE TABLE credits (message_id TEXT)").await;
    let running = worker(t).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = credit_twice::start(&client, "c-1", "msg-7".to_string())
        .await
        .unwrap();
    let outcomes = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcomes, ["applied", "duplicate"]);
    assert_eq!(t.scalar("SELECT count(*) FROM credits").await, 1);
    running.shutdown().await;
}

async fn it_sends_an_ordinary_activitys_messages_with_its_result(t: &TestStore) {
    let running = worker(t).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = announce_three::start(&client, "a-1", ()).await.unwrap();
    let sum = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sum, 6);
    // Each result went with the turn it unblocked (the worker continues the orchestration in the
    // activity's commit): the messages must have gone with it.
    let messages = t.store.list_outbox(OutboxFilter::default()).await.unwrap();
    let mut sent: Vec<u32> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    sent.sort();
    assert_eq!(sent, [1, 2, 3]);
    running.shutdown().await;
}

async fn it_holds_no_more_transactions_at_once_than_the_worker_allows(t: &TestStore) {
    t.execute("CREATE TABLE counted (n BIGINT)").await;
    let running = worker(t).await;
    let client = Client::new(Arc::clone(&t.store));
    let name = format!("{:?}", t.store.backend());
    // PostgreSQL: the first two transactions wait for each other, so two at once is certain.
    // SQLite has one writer connection: one transaction at a time, whatever the worker allows.
    let allowed = match t.store.backend() {
        Backend::Postgres => {
            crate::support::arrange_meeting(&name, 2);
            2
        }
        _ => 1,
    };
    // Forty activities scheduled by one turn: the worker has slots for all of them at once, and
    // without the bound on PostgreSQL as many would open a transaction as the pool has connections.
    let handle = count_many::start(&client, "many", (name.clone(), 40))
        .await
        .unwrap();
    // Forty results arriving one after another can keep the orchestration's turn conflicting
    // until it backs off, on the test's clock.
    t.advance_until(
        Duration::from_secs(1),
        "the activities completed",
        async || {
            let r = t.store.get_instance("many").await.unwrap().unwrap();
            r.status.is_closed()
        },
    )
    .await;
    assert_eq!(handle.result().await.unwrap(), 40);
    assert_eq!(t.scalar("SELECT count(*) FROM counted").await, 40);
    let most = gauge(&name, 0);
    assert_eq!(
        most, allowed,
        "transactions open at once; the worker allows 2, the store {allowed}"
    );
    running.shutdown().await;
}

/// The lease keeper extends the leases of the tasks in flight. A task's row is gone as soon as
/// the commit that settles it is written, a moment before the task leaves the worker's books:
/// the keeper must not take that for a lost lease (before, it warned, counted
/// `quark_lease_lost_total` and cancelled the task). The deposit's commit is held right after it
/// is written until the keeper has run twice; no lease is lost.
async fn it_does_not_count_a_lease_lost_for_a_task_whose_commit_is_written(t: &TestStore) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, mpsc};
    t.execute("CREATE TABLE deposits (id TEXT, attempt BIGINT)")
        .await;
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let held = Arc::new(AtomicBool::new(false));
    let hook = {
        let (gate, held) = (Arc::clone(&gate), Arc::clone(&held));
        move |point: quark_worker::FaultPoint, _attempt: u32| {
            if point == quark_worker::FaultPoint::AfterTransactionalCommit
                && let Some(gate) = gate.lock().unwrap().take()
            {
                held.store(true, Ordering::SeqCst);
                let _ = gate.recv();
            }
        }
    };
    let id = format!("keeper-{}", uuid::Uuid::now_v7());
    let running = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(&id)
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(20))
        .fault_hook(hook)
        .workflows(Registry::new().register(make_deposit).register(deposit))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let d = Deposit {
        id: "kept".into(),
        fail_first: false,
    };
    let handle = make_deposit::start(&client, "kept", d).await.unwrap();
    eventually("the deposit's commit is written and held", async || {
        held.load(Ordering::SeqCst)
    })
    .await;
    // Two heartbeats after the commit was written: each of the keeper's rounds heartbeats, then
    // extends the leases in flight, so the round between them tried the deposit's.
    for _ in 0..2 {
        t.clock.advance(Duration::from_secs(1));
        let now = t.clock.now();
        eventually("the keeper ran a round", async || {
            t.store
                .list_workers()
                .await
                .unwrap()
                .iter()
                .any(|w| w.id == id && w.heartbeat_at >= now)
        })
        .await;
    }
    release.send(()).unwrap();
    assert_eq!(handle.result().await.unwrap(), 1);
    assert_eq!(running.worker().metrics().lease_lost, 0);
    running.shutdown().await;
}
