//! Placement: one placement coordinator at a time under a lease whose epoch fences its moves, and
//! where live instances are.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    AffinityMove, ClaimRequest, Clock, Commit, Error, Expected, HistoryEvent, NewTask, Payload,
    Placed, TaskKind,
};

use crate::support::{conformance, start};

conformance!(
    it_gives_a_role_to_one_holder_at_a_time_and_a_new_epoch_at_each_change_of_hands,
    it_moves_instances_only_under_the_current_lead,
    it_tells_where_running_instances_are,
    it_skips_an_instance_held_by_another_transaction_instead_of_waiting,
    it_makes_the_worker_of_an_activity_that_appends_to_an_entity_its_home,
);

const TTL: Duration = Duration::from_secs(10);

async fn it_gives_a_role_to_one_holder_at_a_time_and_a_new_epoch_at_each_change_of_hands(
    t: &TestStore,
) {
    let first = t.store.lead("placement", "w1", TTL).await.unwrap().unwrap();
    assert_eq!((first.holder.as_str(), first.epoch), ("w1", 1));
    assert_eq!(
        first.expires_at.as_micros(),
        t.clock.now().as_micros() + 10_000_000
    );
    assert_eq!(t.store.lead("placement", "w2", TTL).await.unwrap(), None);
    // Another role is independent.
    assert_eq!(
        t.store
            .lead("other", "w2", TTL)
            .await
            .unwrap()
            .unwrap()
            .epoch,
        1
    );
    // Renewing keeps the epoch and extends the lease.
    t.clock.advance(TTL / 2);
    let renewed = t.store.lead("placement", "w1", TTL).await.unwrap().unwrap();
    assert_eq!(renewed.epoch, 1);
    assert!(renewed.expires_at > first.expires_at);
    t.clock.advance(TTL / 2 + Duration::from_millis(1));
    assert_eq!(
        t.store.lead("placement", "w2", TTL).await.unwrap(),
        None,
        "still w1's"
    );
    // Expired: the next holder gets the next epoch, and the old one cannot renew.
    t.clock.advance(TTL);
    let second = t.store.lead("placement", "w2", TTL).await.unwrap().unwrap();
    assert_eq!((second.holder.as_str(), second.epoch), ("w2", 2));
    assert_eq!(t.store.lead("placement", "w1", TTL).await.unwrap(), None);
    // Resigning hands it on at once; resigning a lead that passed on changes nothing.
    t.store.resign(&renewed).await.unwrap();
    assert_eq!(t.store.lead("placement", "w1", TTL).await.unwrap(), None);
    t.store.resign(&second).await.unwrap();
    let third = t.store.lead("placement", "w1", TTL).await.unwrap().unwrap();
    assert_eq!(third.epoch, 3);
}

/// Gives `id` an affinity to `worker` by running a turn of it there, with `events`.
async fn run_turn_with(t: &TestStore, id: &str, worker: &str, events: Vec<HistoryEvent>) {
    start(t, id).await;
    let task = t
        .store
        .claim(ClaimRequest::new(worker, ["default"]).limit(10))
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.instance_id.as_deref() == Some(id))
        .expect("the instance's first turn");
    t.store
        .commit(
            Commit::new()
                .append(id, Expected::Any, events)
                .complete(task.lease),
        )
        .await
        .unwrap();
}

async fn run_turn(t: &TestStore, id: &str, worker: &str) {
    run_turn_with(t, id, worker, Vec::new()).await;
}

fn owned((a, b): (&str, &str)) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// Each of `ids` that runs, with its worker.
async fn where_(t: &TestStore, ids: &[String]) -> Vec<(String, String)> {
    t.store
        .affinities(ids)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.instance, p.worker))
        .collect()
}

async fn it_moves_instances_only_under_the_current_lead(t: &TestStore) {
    run_turn(t, "a", "w1").await;
    run_turn(t, "b", "w1").await;
    let old = t.store.lead("placement", "c1", TTL).await.unwrap().unwrap();
    let moved = t
        .store
        .move_affinities(
            &[
                AffinityMove::new("a", "w1", "w2"),
                AffinityMove::new("b", "w9", "w2"),
            ],
            Some(&old),
        )
        .await
        .unwrap();
    assert_eq!(moved, [true, false], "b is not on w9: compare-and-set");
    let ids = ["a".to_owned(), "b".to_owned()];
    assert_eq!(where_(t, &ids).await, [("a", "w2"), ("b", "w1")].map(owned));
    // The lease passes to c2 while c1 still believes it leads: c1's moves are refused whole.
    t.clock.advance(TTL * 2);
    let new = t.store.lead("placement", "c2", TTL).await.unwrap().unwrap();
    let err = t
        .store
        .move_affinities(&[AffinityMove::new("b", "w1", "w3")], Some(&old))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotLeader { ref role, epoch: 1 } if role == "placement"),
        "{err:?}"
    );
    assert_eq!(
        where_(t, &ids).await[1],
        owned(("b", "w1")),
        "nothing moved"
    );
    // An expired lead is refused too, even before anyone else takes the role.
    assert_eq!(
        t.store
            .move_affinities(&[AffinityMove::new("b", "w1", "w3")], Some(&new))
            .await
            .unwrap(),
        [true]
    );
    t.clock.advance(TTL);
    assert!(matches!(
        t.store
            .move_affinities(&[AffinityMove::new("b", "w3", "w1")], Some(&new))
            .await,
        Err(Error::NotLeader { epoch: 2, .. })
    ));
}

async fn it_tells_where_running_instances_are(t: &TestStore) {
    run_turn(t, "on-w1", "w1").await;
    start(t, "never-ran").await;
    let end = HistoryEvent::WorkflowCompleted {
        output: Payload::json(&"done").unwrap(),
    };
    run_turn_with(t, "ended", "w2", vec![end]).await;
    let asked: Vec<String> = ["ended", "ghost", "never-ran", "on-w1"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        t.store.affinities(&asked).await.unwrap(),
        [Placed {
            instance: "on-w1".into(),
            worker: "w1".into(),
            queue: "default".into()
        }],
        "only running instances that have a worker"
    );
    assert!(t.store.affinities(&[]).await.unwrap().is_empty());
}

/// A move never waits for the traffic of the instances it moves: one whose row (or one of whose
/// tasks) another transaction holds is skipped, reported as not moved, and the others move. On
/// PostgreSQL only: SQLite has one writer, so nothing else holds a row while the moves run.
async fn it_skips_an_instance_held_by_another_transaction_instead_of_waiting(t: &TestStore) {
    #[cfg(feature = "postgres")]
    if let quark_history::testing::Raw::Postgres(pool) = t.raw() {
        use sqlx::Acquire;
        for id in ["busy", "free", "queued"] {
            run_turn(t, id, "w1").await;
        }
        // `queued` has a pending turn (a signal woke it), whose task row another transaction
        // holds too.
        t.store
            .commit(
                Commit::new()
                    .append("queued", Expected::Any, [signal_event()])
                    .enqueue(quark_history::NewTask::orchestration("default", "queued")),
            )
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let mut holder = conn.begin().await.unwrap();
        sqlx::query("SELECT id FROM instances WHERE id = 'busy' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        sqlx::query("SELECT id FROM tasks WHERE instance_id = 'queued' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        let moves: Vec<AffinityMove> = ["busy", "free", "queued"]
            .iter()
            .map(|id| AffinityMove::new(*id, "w1", "w2"))
            .collect();
        // Waiting for the holder would never end: it commits only after the moves return.
        let moved = tokio::time::timeout(
            Duration::from_secs(10),
            t.store.move_affinities(&moves, None),
        )
        .await
        .expect("the moves waited for a row another transaction holds")
        .unwrap();
        assert_eq!(moved, [false, true, false]);
        holder.rollback().await.unwrap();
        let ids = ["busy", "free", "queued"].map(String::from);
        assert_eq!(
            where_(t, &ids).await,
            [("busy", "w1"), ("free", "w2"), ("queued", "w1")].map(owned)
        );
        // Free again, they move.
        let moved = t.store.move_affinities(&moves, None).await.unwrap();
        assert_eq!(moved, [true, false, true]);
    }
}

fn signal_event() -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "go".into(),
        payload: Payload::json(&1).unwrap(),
    }
}

/// An activity of `instance` claimed by `worker` (the only activity task ready).
async fn activity_on(t: &TestStore, instance: &str, worker: &str) -> quark_history::Lease {
    t.store
        .enqueue(vec![
            NewTask::new(TaskKind::Activity, "default").instance(instance),
        ])
        .await
        .unwrap();
    let claimed = t
        .store
        .claim(ClaimRequest::new(worker, ["default"]).limit(10))
        .await
        .unwrap();
    claimed
        .into_iter()
        .find(|c| c.kind == TaskKind::Activity)
        .expect("the activity")
        .lease
}

fn entity_event(n: i64) -> HistoryEvent {
    HistoryEvent::EntityEvent {
        event_type: "Deposited".into(),
        data: Payload::json(&n).unwrap(),
        causation: None,
        correlation: None,
    }
}

/// An entity's home is the worker whose activity last appended to its stream (where the entity
/// is live now), whether the commit is written alone or in a batch; an activity that does not
/// append to the stream leaves its home alone. `affinities` lists streams with their home and
/// an empty queue.
async fn it_makes_the_worker_of_an_activity_that_appends_to_an_entity_its_home(t: &TestStore) {
    run_turn(t, "caller", "w1").await;
    let stream = "Account/alice".to_string();
    t.store.open_stream(&stream, "Account").await.unwrap();
    assert!(
        where_(t, std::slice::from_ref(&stream)).await.is_empty(),
        "no home before any command"
    );

    let lease = activity_on(t, "caller", "w1").await;
    t.store
        .commit(
            Commit::new()
                .append(&stream, Expected::Seq(1), [entity_event(1)])
                .complete(lease),
        )
        .await
        .unwrap();
    // A stream has no queue of its own.
    assert_eq!(
        t.store
            .affinities(std::slice::from_ref(&stream))
            .await
            .unwrap(),
        [Placed {
            instance: stream.clone(),
            worker: "w1".into(),
            queue: String::new(),
        }]
    );

    // In a batch, next to another commit.
    let lease = activity_on(t, "caller", "w2").await;
    let results = t
        .store
        .commit_many(vec![
            Commit::new().append("caller", Expected::Any, [signal_event()]),
            Commit::new()
                .append(&stream, Expected::Seq(2), [entity_event(2)])
                .complete(lease),
        ])
        .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        where_(t, std::slice::from_ref(&stream)).await,
        [owned((stream.as_str(), "w2"))]
    );

    // An activity on w3 that appends elsewhere does not make w3 the entity's home.
    let lease = activity_on(t, "caller", "w3").await;
    t.store
        .commit(
            Commit::new()
                .append("caller", Expected::Any, [signal_event()])
                .complete(lease),
        )
        .await
        .unwrap();
    assert_eq!(
        where_(t, std::slice::from_ref(&stream)).await,
        [owned((stream.as_str(), "w2"))]
    );
}
