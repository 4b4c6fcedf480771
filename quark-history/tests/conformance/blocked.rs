//! Blocked instances: a dead-lettered turn blocks its instance in the same transaction, the
//! instance reads, lists and counts as blocked with the turn's error, and re-driving the turn (or
//! a later turn that completes) sets it running again.

use std::collections::BTreeMap;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    ClaimedTask, Clock, Commit, Expected, FailAction, HistoryEvent, InstanceFilter, InstanceRecord,
    InstanceStatus, NewTask, Payload,
};

use crate::support::{claim_all, conformance, start};

conformance!(
    it_blocks_an_instance_whose_turn_is_dead_lettered_and_unblocks_it_on_redrive,
    it_keeps_a_blocked_instance_open_to_new_events_and_to_termination,
    it_unblocks_an_instance_whose_next_turn_completes,
    it_merges_a_redriven_turn_into_the_pending_turn_of_its_instance,
    it_blocks_and_unblocks_instances_in_a_batch_of_commits,
    it_does_not_block_an_instance_for_a_dead_activity,
);

const NONDETERMINISM: &str = "i: nondeterminism: event 2 was ActivityScheduled(charge) from \
     src/order.rs:10:5; the code now asks for TimerCreated at src/order.rs:11:5";

async fn describe(t: &TestStore, id: &str) -> InstanceRecord {
    t.store.get_instance(id).await.unwrap().unwrap()
}

async fn listed(t: &TestStore, status: InstanceStatus) -> Vec<String> {
    t.store
        .list_instances(InstanceFilter {
            statuses: vec![status],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn blocked_count(t: &TestStore) -> BTreeMap<String, u64> {
    t.store
        .count_instances(InstanceStatus::Blocked)
        .await
        .unwrap()
}

/// Claims the orchestration task of `id` (and leaves any other claimed task leased).
async fn claim_turn(t: &TestStore, id: &str) -> ClaimedTask {
    claim_all(&*t.store, "w", "default")
        .await
        .into_iter()
        .find(|c| c.instance_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no turn of {id} to claim"))
}

fn dead(turn: &ClaimedTask, error: &str) -> Commit {
    Commit::new().fail(
        turn.lease.clone(),
        FailAction::Dead {
            error: error.into(),
        },
    )
}

fn signal() -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "go".into(),
        payload: Payload::json(&1).unwrap(),
    }
}

/// A signal for `id` that wakes it: its next turn.
fn wake(id: &str) -> Commit {
    Commit::new()
        .append(id, Expected::Any, [signal()])
        .enqueue(NewTask::orchestration("default", id))
}

async fn it_blocks_an_instance_whose_turn_is_dead_lettered_and_unblocks_it_on_redrive(
    t: &TestStore,
) {
    start(t, "i").await;
    start(t, "other").await;
    let turn = claim_turn(t, "i").await;
    t.clock.advance(Duration::from_secs(1));
    t.store.commit(dead(&turn, NONDETERMINISM)).await.unwrap();

    let record = describe(t, "i").await;
    assert_eq!(record.status, InstanceStatus::Blocked);
    assert!(
        !record.status.is_closed(),
        "a blocked instance has not ended"
    );
    assert_eq!(record.updated_at, t.clock.now());
    let blocked = record.blocked.expect("the turn that blocks it");
    assert_eq!(blocked.error, NONDETERMINISM);
    assert_eq!(blocked.task_id, turn.lease.task_id);
    assert_eq!(blocked.since, t.clock.now());
    assert_eq!(describe(t, "other").await.blocked, None);
    assert_eq!(listed(t, InstanceStatus::Blocked).await, ["i"]);
    assert_eq!(listed(t, InstanceStatus::Running).await, ["other"]);
    let page = t
        .store
        .list_instances(InstanceFilter::default())
        .await
        .unwrap();
    let i = page.iter().find(|r| r.id == "i").unwrap();
    assert_eq!(
        i.blocked.as_ref().map(|b| b.error.as_str()),
        Some(NONDETERMINISM),
        "a listing carries the error too"
    );
    assert_eq!(blocked_count(t).await, [("default".to_string(), 1)].into());
    let dead_tasks = t.store.list_dead(None, 10).await.unwrap();
    assert_eq!(dead_tasks.len(), 1);
    assert_eq!(dead_tasks[0].task_id, blocked.task_id);

    t.clock.advance(Duration::from_secs(1));
    t.store.redrive(blocked.task_id).await.unwrap();
    let record = describe(t, "i").await;
    assert_eq!(record.status, InstanceStatus::Running);
    assert_eq!(record.blocked, None);
    assert_eq!(record.updated_at, t.clock.now());
    assert!(blocked_count(t).await.is_empty());
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
    let again = claim_turn(t, "i").await;
    assert_eq!(again.lease.task_id, blocked.task_id);
    assert_eq!(again.lease.attempt, 1, "attempts start over");
    t.store
        .commit(Commit::new().complete(again.lease))
        .await
        .unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Running);
}

async fn it_keeps_a_blocked_instance_open_to_new_events_and_to_termination(t: &TestStore) {
    start(t, "i").await;
    let first = claim_turn(t, "i").await;
    t.store.commit(dead(&first, "first")).await.unwrap();
    // A signal (or an activity result) is recorded; the instance stays blocked.
    t.store.commit(wake("i")).await.unwrap();
    let record = describe(t, "i").await;
    assert_eq!(record.status, InstanceStatus::Blocked);
    assert_eq!(record.history_len, 2);
    // The turn it woke fails as well: still blocked, by the newer turn.
    t.clock.advance(Duration::from_secs(1));
    let second = claim_turn(t, "i").await;
    t.store.commit(dead(&second, "second")).await.unwrap();
    let blocked = describe(t, "i").await.blocked.unwrap();
    assert_eq!(
        (blocked.task_id, blocked.error.as_str()),
        (second.lease.task_id, "second")
    );

    let terminated = HistoryEvent::WorkflowTerminated {
        reason: "given up".into(),
    };
    t.store
        .commit(Commit::new().append("i", Expected::Any, [terminated]))
        .await
        .unwrap();
    let record = describe(t, "i").await;
    assert_eq!(record.status, InstanceStatus::Terminated);
    assert_eq!(record.blocked, None);
    assert!(blocked_count(t).await.is_empty());
    // Re-driving a turn of an ended instance does not bring it back.
    t.store.redrive(second.lease.task_id).await.unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Terminated);
}

async fn it_unblocks_an_instance_whose_next_turn_completes(t: &TestStore) {
    start(t, "i").await;
    let turn = claim_turn(t, "i").await;
    t.store.commit(dead(&turn, "panicked")).await.unwrap();
    // Fixed code is deployed; a signal wakes the instance and its turn completes (appending
    // nothing, then appending).
    t.store.commit(wake("i")).await.unwrap();
    let turn = claim_turn(t, "i").await;
    t.store
        .commit(Commit::new().complete(turn.lease))
        .await
        .unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Running);

    let turn = claim_all(&*t.store, "w", "default").await;
    assert!(turn.is_empty(), "nothing left to run");
    t.store.commit(wake("i")).await.unwrap();
    let turn = claim_turn(t, "i").await;
    t.store.commit(dead(&turn, "panicked again")).await.unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Blocked);
    t.store.commit(wake("i")).await.unwrap();
    let turn = claim_turn(t, "i").await;
    t.store
        .commit(
            Commit::new()
                .append("i", Expected::Seq(5), [signal()])
                .complete(turn.lease),
        )
        .await
        .unwrap();
    let record = describe(t, "i").await;
    assert_eq!(record.status, InstanceStatus::Running);
    assert_eq!(record.history_len, 5);
    assert!(blocked_count(t).await.is_empty());
}

async fn it_merges_a_redriven_turn_into_the_pending_turn_of_its_instance(t: &TestStore) {
    start(t, "i").await;
    let turn = claim_turn(t, "i").await;
    t.store.commit(dead(&turn, "nondeterminism")).await.unwrap();
    // Woken while no worker ran: a pending turn waits already.
    t.store.commit(wake("i")).await.unwrap();
    t.store.redrive(turn.lease.task_id).await.unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Running);
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
    let claimed = claim_all(&*t.store, "w", "default").await;
    assert_eq!(claimed.len(), 1, "one turn per instance: {claimed:?}");
}

async fn it_blocks_and_unblocks_instances_in_a_batch_of_commits(t: &TestStore) {
    start(t, "i").await;
    start(t, "j").await;
    let claimed = claim_all(&*t.store, "w", "default").await;
    let turn_of = |id: &str| {
        claimed
            .iter()
            .find(|c| c.instance_id.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let (i, j) = (turn_of("i"), turn_of("j"));
    t.store.commit(dead(&j, "j is broken")).await.unwrap();
    t.store.commit(wake("j")).await.unwrap();
    let j = claim_turn(t, "j").await;

    let results = t
        .store
        .commit_many(vec![
            dead(&i, "i is broken"),
            // An activity result for `i`, committed after its turn died: recorded, still blocked.
            Commit::new().append("i", Expected::Any, [signal()]),
            // Fixed code ran `j`'s turn.
            Commit::new()
                .append("j", Expected::Seq(3), [signal()])
                .complete(j.lease),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let i = describe(t, "i").await;
    assert_eq!((i.status, i.history_len), (InstanceStatus::Blocked, 2));
    assert_eq!(i.blocked.unwrap().error, "i is broken");
    let j = describe(t, "j").await;
    assert_eq!((j.status, j.history_len), (InstanceStatus::Running, 3));
    assert_eq!(listed(t, InstanceStatus::Blocked).await, ["i"]);
}

async fn it_does_not_block_an_instance_for_a_dead_activity(t: &TestStore) {
    start(t, "i").await;
    let activity = NewTask::new(quark_history::TaskKind::Activity, "default").instance("i");
    t.store.enqueue(vec![activity]).await.unwrap();
    let claimed = claim_all(&*t.store, "w", "default").await;
    let activity = claimed
        .iter()
        .find(|c| c.kind == quark_history::TaskKind::Activity)
        .unwrap();
    t.store
        .commit(dead(activity, "undecodable payload"))
        .await
        .unwrap();
    assert_eq!(describe(t, "i").await.status, InstanceStatus::Running);
    assert!(blocked_count(t).await.is_empty());
}
