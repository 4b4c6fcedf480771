//! The rule for the outstanding work of an instance that ends, raced against a writer.
//!
//! A commit that ends an instance drops the instance's activities and timers that it read under
//! its lock (and those it enqueues itself), on both backends. Work that another transaction adds
//! while the ending commit waits for the instance is not among them on PostgreSQL, whose commit
//! locked its task rows before it waited; on SQLite the ending commit waits for the single writer
//! before it reads anything, so the same rule reads that work too and drops it.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{
    Backend, ClaimRequest, Commit, Error, Expected, HistoryEvent, NewTask, Store, TaskKind,
};

use crate::support::{conformance, start};

conformance!(it_drops_the_work_its_ending_commit_read_and_only_that,);

fn activity(instance: &str, n: u8) -> NewTask {
    NewTask::new(TaskKind::Activity, instance)
        .instance(instance)
        .payload(vec![n])
}

/// The pending work of `instance` (its activities go to a queue of its name).
async fn pending(t: &TestStore, instance: &str) -> u64 {
    t.store.queue_stats(instance).await.unwrap().pending
}

async fn it_drops_the_work_its_ending_commit_read_and_only_that(t: &TestStore) {
    // Once through `commit`, once through `commit_many` (the batch path on PostgreSQL).
    for (id, batched) in [("ends", false), ("ends-in-a-batch", true)] {
        race(t, id, batched).await;
    }
}

async fn race(t: &TestStore, id: &str, batched: bool) {
    start(t, id).await;
    t.store.enqueue(vec![activity(id, 1)]).await.unwrap();

    // A writer holds the instance: on PostgreSQL its row, on SQLite the one write lock.
    let mut writer = t.store.begin_tx().await.unwrap();
    if let Ok(conn) = writer.postgres() {
        sqlx::query("SELECT 1 FROM instances WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(conn)
            .await
            .unwrap();
    }
    let store: Arc<dyn Store> = Arc::clone(&t.store);
    let terminate = HistoryEvent::WorkflowTerminated {
        reason: "enough".into(),
    };
    let end = Commit::new().append(id, Expected::Any, [terminate]);
    let ending = tokio::spawn(async move {
        if batched {
            // A second commit, so that the batch is one.
            let other = Commit::new().enqueue(NewTask::new(TaskKind::Activity, "elsewhere"));
            let mut results = store.commit_many(vec![end, other]).await;
            results.remove(0)
        } else {
            store.commit(end).await
        }
    });
    if t.store.backend() == Backend::Postgres {
        // The ending commit has locked the instance's task rows and waits for its row.
        quark_history::testing::eventually(
            "the ending commit waits for the instance",
            async || {
                t.scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .await
                    > 0
            },
        )
        .await;
    }
    // The writer adds work for the instance and lets go.
    t.store
        .commit_tx(writer, Commit::new().enqueue(activity(id, 2)))
        .await
        .unwrap();
    ending.await.unwrap().unwrap();

    match t.store.backend() {
        // Read after the writer committed: dropped with the rest.
        Backend::Sqlite => assert_eq!(pending(t, id).await, 0, "everything it read is dropped"),
        // Not read: it stays, runs once, and its result is refused.
        _ => {
            assert_eq!(pending(t, id).await, 1, "only what it read under its lock");
            let claimed = t.store.claim(ClaimRequest::new("w", [id])).await.unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!(claimed[0].payload, vec![2], "the writer's activity");
            let lease = claimed[0].lease.clone();
            let result = HistoryEvent::SignalReceived {
                name: "result".into(),
                payload: quark_history::Payload::json(&2).unwrap(),
            };
            let refused = t
                .store
                .commit(
                    Commit::new()
                        .append(id, Expected::Any, [result])
                        .complete(lease.clone()),
                )
                .await;
            assert!(
                matches!(refused, Err(Error::InstanceClosed { .. })),
                "{refused:?}"
            );
            t.store.commit(Commit::new().complete(lease)).await.unwrap();
            assert_eq!(pending(t, id).await, 0);
        }
    }
}
