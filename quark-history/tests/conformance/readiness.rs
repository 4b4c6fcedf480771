//! What a store tells a worker's metrics and health checks: when each claimed task became
//! claimable (its queue wait), and which migrations a database lacks (readiness).

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{ClaimRequest, Clock, NewTask, TaskKind};

use crate::support::conformance;

conformance!(
    it_reports_when_each_claimed_task_became_claimable,
    it_reports_no_pending_migration_on_a_migrated_database_and_the_missing_ones_otherwise,
);

async fn it_reports_when_each_claimed_task_became_claimable(t: &TestStore) {
    let enqueued = t.clock.now();
    let delayed = enqueued + Duration::from_secs(5);
    t.store
        .enqueue(vec![
            NewTask::new(TaskKind::Activity, "q").payload(vec![1]),
            NewTask::new(TaskKind::Activity, "q")
                .payload(vec![2])
                .visible_at(delayed),
        ])
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(10));

    // One queue and one kind (PostgreSQL's statement for a single pair).
    let lease = Duration::from_secs(30);
    let mut first = t
        .store
        .claim(
            ClaimRequest::new("w1", ["q"])
                .kinds([TaskKind::Activity])
                .lease(lease),
        )
        .await
        .unwrap();
    first.sort_by_key(|c| c.payload.clone());
    let seen: Vec<_> = first.iter().map(|c| c.visible_at).collect();
    assert_eq!(seen, [enqueued, delayed]);

    // Claimed again once the lease expired (the general statement: two queues, every kind):
    // claimable since that expiry.
    let expired = t.clock.now() + lease;
    t.clock.advance(lease + Duration::from_secs(1));
    let again = t
        .store
        .claim(ClaimRequest::new("w2", ["q", "other"]))
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|c| c.visible_at == expired), "{again:?}");
}

async fn it_reports_no_pending_migration_on_a_migrated_database_and_the_missing_ones_otherwise(
    t: &TestStore,
) {
    assert_eq!(
        t.store.pending_migrations().await.unwrap(),
        Vec::<i64>::new()
    );
    let latest = t.scalar("SELECT MAX(version) FROM _sqlx_migrations").await;
    t.execute("UPDATE _sqlx_migrations SET success = false WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)")
        .await;
    assert_eq!(t.store.pending_migrations().await.unwrap(), [latest]);
    t.execute("DELETE FROM _sqlx_migrations").await;
    let all = t.store.pending_migrations().await.unwrap();
    assert_eq!((all.first(), all.last()), (Some(&1), Some(&latest)));
    t.execute("DROP TABLE _sqlx_migrations").await;
    assert_eq!(t.store.pending_migrations().await.unwrap(), all);
}
