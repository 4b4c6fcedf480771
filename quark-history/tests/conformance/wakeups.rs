//! Wake-ups for idle pollers.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{ClaimRequest, NewTask, Store, StoreConfig, TaskKind, Wake, Wakeups};

use crate::support::conformance;

conformance!(it_wakes_a_subscriber_when_tasks_become_visible,);

async fn next_queue_wake(wakeups: &mut Wakeups, queue: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match wakeups.wait(left).await {
            Some(Wake::Queue {
                queue: q,
                kind: TaskKind::Job,
            }) if q == queue => return,
            Some(_) => continue,
            None => panic!("no wake-up for `{queue}` within 10 s"),
        }
    }
}

async fn it_wakes_a_subscriber_when_tasks_become_visible(t: &TestStore) {
    let mut wakeups = t.store.subscribe().await.unwrap();
    t.store
        .enqueue(vec![NewTask::new(TaskKind::Job, "emails")])
        .await
        .unwrap();
    next_queue_wake(&mut wakeups, "emails").await;
    let claimed = t
        .store
        .claim(ClaimRequest::new("w", ["emails"]))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

/// PostgreSQL: another process's enqueue reaches this process's subscriber through NOTIFY, and after
/// the listener's connection is killed it reconnects, says notices may have been missed, and
/// delivers the next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_wakes_across_processes_and_survives_a_killed_listener_connection() {
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    let other = quark_history::PostgresStore::connect_with(&url, StoreConfig::default())
        .await
        .unwrap();
    let mut wakeups = t.store.subscribe().await.unwrap();

    other
        .enqueue(vec![NewTask::new(TaskKind::Job, "remote")])
        .await
        .unwrap();
    next_queue_wake(&mut wakeups, "remote").await;

    // Kill every connection of this database but ours, the listener's included.
    let killed = t
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    assert!(killed >= 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match wakeups.wait(left).await {
            Some(Wake::MayHaveMissed) => break,
            Some(_) => continue,
            None => panic!("the listener did not report its reconnection"),
        }
    }
    // The other store's pool lost its connections too; its next call reconnects.
    let mut enqueued = other
        .enqueue(vec![NewTask::new(TaskKind::Job, "after")])
        .await;
    if let Err(e) = &enqueued {
        assert!(e.is_retryable(), "a dropped connection is retryable: {e}");
        enqueued = other
            .enqueue(vec![NewTask::new(TaskKind::Job, "after")])
            .await;
    }
    enqueued.unwrap();
    next_queue_wake(&mut wakeups, "after").await;
    t.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_typed_retryable_error() {
    let result =
        quark_history::PostgresStore::connect("postgres://postgres@127.0.0.1:1/nowhere").await;
    match result {
        Err(e @ quark_history::Error::Connection(_)) => assert!(e.is_retryable()),
        other => panic!("expected a connection error, got {other:?}"),
    }
}
