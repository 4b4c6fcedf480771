//! PostgreSQL: a commit the database rolls back for a deadlock is run again, not failed (a failed
//! activity result would release its task, and the activity's code would run a second time).

use std::sync::Arc;

use quark_history::testing::{self, eventually};
use quark_history::{Commit, Expected, HistoryEvent, HistoryRange, NewTask, Payload, Store};

use crate::support::start;

#[tokio::test]
async fn a_commit_rolled_back_for_a_deadlock_is_run_again() {
    let Some(t) = testing::postgres().await else {
        return;
    };
    let id = "deadlocked";
    start(&t, id).await;
    assert_eq!(
        t.scalar(
            "SELECT count(*) FROM tasks WHERE instance_id = 'deadlocked' AND kind = 'orchestration'"
        )
        .await,
        1,
        "the instance's turn is queued"
    );

    // Another transaction holds the instance's row. Its deadlock check waits far longer than the
    // commit's (1 s, the server's default): whichever of two waiters checks first is the one
    // rolled back, and on a loaded machine the order of two equal timers is not the order they
    // started in.
    let mut other = t.store.begin_tx().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '30s'")
        .execute(other.postgres().unwrap())
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(other.postgres().unwrap())
        .await
        .unwrap();

    // A result for the instance: its commit locks the instance's turn row, then waits for the
    // instance's row.
    let store: Arc<dyn Store> = Arc::clone(&t.store);
    let result = HistoryEvent::SignalReceived {
        name: "result".into(),
        payload: Payload::json(&1).unwrap(),
    };
    let commit = Commit::new()
        .append(id, Expected::Any, [result])
        .enqueue(NewTask::orchestration("default", id));
    let committing = tokio::spawn(async move { store.commit(commit).await });
    eventually("the commit waits for the instance's row", async || {
        t.scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0
    })
    .await;

    // The other transaction now wants the turn row: a deadlock. The commit waited first, so its
    // deadlock check runs first and the database rolls it back; the other gets the row.
    sqlx::query("SELECT 1 FROM tasks WHERE instance_id = $1 AND kind = 'orchestration' FOR UPDATE")
        .bind(id)
        .execute(other.postgres().unwrap())
        .await
        .unwrap();
    drop(other);

    committing
        .await
        .unwrap()
        .expect("the commit ran again once the deadlock was broken");
    let history = t.store.read_history(id, HistoryRange::All).await.unwrap();
    let results = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
        .count();
    assert_eq!(results, 1, "written once");
    t.cleanup().await;
}
