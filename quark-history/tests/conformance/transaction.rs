//! Transactions the caller writes in: its own rows and a commit land together or not at all, a
//! lost lease takes the caller's rows with it, and inbox ids recorded in the transaction
//! deduplicate.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Backend, ClaimRequest, Commit, Destination, Error, Expected, HistoryEvent, HistoryRange,
    OutboxFilter, OutboxMessage, Payload, StoreTx,
};

use crate::support::{conformance, start};

conformance!(
    it_commits_the_callers_rows_with_the_commit,
    it_rolls_the_callers_rows_back_when_the_lease_was_lost,
    it_writes_nothing_of_a_dropped_transaction,
    it_records_inbox_ids_in_the_transaction,
    it_runs_a_handler_once_per_id_under_a_savepoint,
);

/// Runs one statement in the transaction, whichever database it is on.
async fn exec(tx: &mut StoreTx, sql: &str) {
    let sql = quark_history::sqlx::AssertSqlSafe(sql.to_string());
    match tx.backend() {
        Backend::Postgres => {
            quark_history::sqlx::query(sql)
                .execute(tx.postgres().unwrap())
                .await
                .unwrap();
        }
        _ => {
            quark_history::sqlx::query(sql)
                .execute(tx.sqlite().unwrap())
                .await
                .unwrap();
        }
    }
}

async fn effects_table(t: &TestStore) {
    t.execute("CREATE TABLE effects (id TEXT PRIMARY KEY)")
        .await;
}

fn marker() -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "marker".into(),
        payload: Payload::unit(),
    }
}

async fn it_commits_the_callers_rows_with_the_commit(t: &TestStore) {
    effects_table(t).await;
    start(t, "o-1").await;
    let task = t
        .store
        .claim(ClaimRequest::new("w", ["default"]))
        .await
        .unwrap()
        .remove(0);
    let mut tx = t.store.begin_tx().await.unwrap();
    exec(&mut tx, "INSERT INTO effects (id) VALUES ('a')").await;
    if t.store.backend() == Backend::Postgres {
        // Not visible outside the transaction before it commits (on SQLite the transaction
        // holds the only writer connection, which the test's raw handle also uses).
        assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 0);
    }
    let committed = t
        .store
        .commit_tx(
            tx,
            Commit::new()
                .append("o-1", Expected::Any, [marker()])
                .send(OutboxMessage::new(
                    Destination::callback("c"),
                    b"m".to_vec(),
                ))
                .complete(task.lease),
        )
        .await
        .unwrap();
    assert_eq!(committed.appended, vec![(2, 2)]);
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 1);
    let history = t
        .store
        .read_history("o-1", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let outbox = t.store.list_outbox(OutboxFilter::default()).await.unwrap();
    assert_eq!(outbox.len(), 1);
    let stats = t.store.queue_stats("default").await.unwrap();
    assert_eq!((stats.pending, stats.leased), (0, 0));
}

async fn it_rolls_the_callers_rows_back_when_the_lease_was_lost(t: &TestStore) {
    effects_table(t).await;
    start(t, "o-1").await;
    let lease = Duration::from_secs(10);
    let first = t
        .store
        .claim(ClaimRequest::new("w1", ["default"]).lease(lease))
        .await
        .unwrap()
        .remove(0);
    let mut tx = t.store.begin_tx().await.unwrap();
    exec(&mut tx, "INSERT INTO effects (id) VALUES ('first')").await;
    // The lease runs out and another worker takes the task. On SQLite the open transaction holds
    // the only writer, so the takeover happens before it begins; the fence is the same.
    let err = if t.store.backend() == Backend::Sqlite {
        tx.rollback().await.unwrap();
        t.clock.advance(lease + Duration::from_secs(1));
        let second = t
            .store
            .claim(ClaimRequest::new("w2", ["default"]).lease(lease))
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        let mut tx = t.store.begin_tx().await.unwrap();
        exec(&mut tx, "INSERT INTO effects (id) VALUES ('first')").await;
        t.store
            .commit_tx(
                tx,
                Commit::new()
                    .append("o-1", Expected::Any, [marker()])
                    .complete(first.lease),
            )
            .await
            .unwrap_err()
    } else {
        t.clock.advance(lease + Duration::from_secs(1));
        let second = t
            .store
            .claim(ClaimRequest::new("w2", ["default"]).lease(lease))
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        t.store
            .commit_tx(
                tx,
                Commit::new()
                    .append("o-1", Expected::Any, [marker()])
                    .complete(first.lease),
            )
            .await
            .unwrap_err()
    };
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 0);
    let history = t
        .store
        .read_history("o-1", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "nothing of the fenced commit landed");
}

async fn it_writes_nothing_of_a_dropped_transaction(t: &TestStore) {
    effects_table(t).await;
    let mut tx = t.store.begin_tx().await.unwrap();
    exec(&mut tx, "INSERT INTO effects (id) VALUES ('a')").await;
    drop(tx);
    // The store is usable at once (on SQLite the writer was handed back).
    start(t, "o-1").await;
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 0);
    let mut tx = t.store.begin_tx().await.unwrap();
    exec(&mut tx, "INSERT INTO effects (id) VALUES ('b')").await;
    tx.rollback().await.unwrap();
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 0);
}

async fn it_records_inbox_ids_in_the_transaction(t: &TestStore) {
    effects_table(t).await;
    let window = Duration::from_secs(3600);
    // A recorded id that rolls back is not recorded.
    let mut tx = t.store.begin_tx().await.unwrap();
    assert!(tx.receive("m-1", window).await.unwrap());
    tx.rollback().await.unwrap();
    for round in 0..2 {
        let mut tx = t.store.begin_tx().await.unwrap();
        let new = tx.receive("m-1", window).await.unwrap();
        assert_eq!(new, round == 0);
        if new {
            exec(&mut tx, "INSERT INTO effects (id) VALUES ('m-1')").await;
        }
        t.store.commit_tx(tx, Commit::new()).await.unwrap();
    }
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 1);
    // Past the window the id counts as new again.
    t.clock.advance(window + Duration::from_secs(1));
    let mut tx = t.store.begin_tx().await.unwrap();
    assert!(tx.receive("m-1", window).await.unwrap());
    tx.rollback().await.unwrap();
}

async fn it_runs_a_handler_once_per_id_under_a_savepoint(t: &TestStore) {
    effects_table(t).await;
    let window = Duration::from_secs(3600);
    let mut tx = t.store.begin_tx().await.unwrap();
    exec(&mut tx, "INSERT INTO effects (id) VALUES ('before')").await;
    // A failing handler: its write and its id are undone, the earlier write stands.
    let failed = tx
        .once("m-1", window, async |tx: &mut StoreTx| {
            exec(tx, "INSERT INTO effects (id) VALUES ('m-1 first try')").await;
            Err::<(), Error>(Error::Invalid("handler failed".into()))
        })
        .await;
    assert!(failed.is_err());
    let first = tx
        .once("m-1", window, async |tx: &mut StoreTx| {
            exec(tx, "INSERT INTO effects (id) VALUES ('m-1')").await;
            Ok::<_, Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(first, quark_history::Received::First(7));
    let again: Result<quark_history::Received<()>, Error> = tx
        .once("m-1", window, async |_tx: &mut StoreTx| {
            panic!("a duplicate must not run")
        })
        .await;
    assert!(matches!(again, Ok(quark_history::Received::Duplicate)));
    t.store.commit_tx(tx, Commit::new()).await.unwrap();
    assert_eq!(t.scalar("SELECT count(*) FROM effects").await, 2);
    assert_eq!(
        t.scalar("SELECT count(*) FROM effects WHERE id = 'm-1 first try'")
            .await,
        0
    );
}
