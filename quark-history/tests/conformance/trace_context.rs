//! The trace context (`traceparent`) stored with a task: kept through claims, retries, death and
//! re-drive; the first one kept when orchestration tasks merge; a malformed one refused before
//! anything is written.

use quark_history::Clock;
use quark_history::testing::TestStore;
use quark_history::{
    Commit, Error, FailAction, IdReusePolicy, MAX_TRACEPARENT, NewInstance, NewTask, Payload,
    TaskKind,
};

use crate::support::{claim_all, conformance};

conformance!(
    it_keeps_a_tasks_trace_context_through_claims_retries_death_and_redrive,
    it_keeps_the_first_trace_context_of_an_instance_s_merged_turns,
    it_refuses_a_malformed_trace_context_and_writes_nothing,
);

const A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const B: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn it_keeps_a_tasks_trace_context_through_claims_retries_death_and_redrive(t: &TestStore) {
    t.store
        .enqueue(vec![
            NewTask::new(TaskKind::Activity, "q")
                .payload(vec![1])
                .traceparent(A),
            NewTask::new(TaskKind::Job, "q").payload(vec![2]),
        ])
        .await
        .unwrap();
    let mut claimed = claim_all(&*t.store, "w", "q").await;
    claimed.sort_by_key(|c| c.payload[0]);
    assert_eq!(claimed[0].traceparent.as_deref(), Some(A));
    assert_eq!(
        claimed[1].traceparent, None,
        "a task created outside a trace"
    );

    let task = claimed.remove(0);
    t.store
        .commit(Commit::new().fail(
            task.lease,
            FailAction::Retry {
                at: t.clock.now(),
                error: None,
            },
        ))
        .await
        .unwrap();
    let again = claim_all(&*t.store, "w", "q").await.remove(0);
    assert_eq!(again.lease.attempt, 2);
    assert_eq!(again.traceparent.as_deref(), Some(A), "a retry keeps it");

    t.store
        .commit(Commit::new().fail(
            again.lease,
            FailAction::Dead {
                error: "gave up".into(),
            },
        ))
        .await
        .unwrap();
    let dead = t.store.list_dead(Some("q"), 10).await.unwrap();
    t.store.redrive(dead[0].task_id).await.unwrap();
    let revived = claim_all(&*t.store, "w", "q").await.remove(0);
    assert_eq!(revived.lease.task_id, dead[0].task_id);
    assert_eq!(
        revived.traceparent.as_deref(),
        Some(A),
        "a dead task keeps it, and its re-drive continues the trace"
    );
}

fn instance(id: &str, traceparent: Option<&str>) -> NewInstance {
    let mut new = NewInstance::new(id, "order", Payload::json(&1).unwrap());
    new.traceparent = traceparent.map(str::to_string);
    new
}

async fn it_keeps_the_first_trace_context_of_an_instance_s_merged_turns(t: &TestStore) {
    // One instance alone (one statement on PostgreSQL), then two in a batch (another statement).
    t.store
        .create_instance(instance("one", Some(A)), IdReusePolicy::RejectDuplicate)
        .await
        .unwrap();
    t.store
        .create_instances(
            vec![instance("two", Some(B)), instance("three", None)],
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();
    // Wake-ups while the first turns are pending merge into them: "one" and "two" keep the
    // context they were created in, "three" takes the first it is given.
    t.store
        .enqueue(vec![
            NewTask::orchestration("default", "one").traceparent(B),
            NewTask::orchestration("default", "two"),
            NewTask::orchestration("default", "three").traceparent(A),
            NewTask::orchestration("default", "three").traceparent(B),
        ])
        .await
        .unwrap();
    let turns = claim_all(&*t.store, "w", "default").await;
    assert_eq!(turns.len(), 3, "one turn per instance: {turns:?}");
    let of = |id: &str| {
        turns
            .iter()
            .find(|c| c.instance_id.as_deref() == Some(id))
            .and_then(|c| c.traceparent.clone())
    };
    assert_eq!(of("one").as_deref(), Some(A));
    assert_eq!(of("two").as_deref(), Some(B));
    assert_eq!(of("three").as_deref(), Some(A));
}

async fn it_refuses_a_malformed_trace_context_and_writes_nothing(t: &TestStore) {
    let too_long = "0".repeat(MAX_TRACEPARENT + 1);
    for bad in [too_long.as_str(), "00-abc def", "00-abc\n"] {
        let refused = t
            .store
            .enqueue(vec![
                NewTask::new(TaskKind::Job, "q").payload(vec![1]),
                NewTask::new(TaskKind::Job, "q").traceparent(bad),
            ])
            .await;
        assert!(
            matches!(refused, Err(Error::Invalid(ref m)) if m.contains("traceparent")),
            "{bad:?}: {refused:?}"
        );
        let refused = t
            .store
            .create_instance(instance("bad", Some(bad)), IdReusePolicy::RejectDuplicate)
            .await;
        assert!(
            matches!(refused, Err(Error::Invalid(_))),
            "{bad:?}: {refused:?}"
        );
    }
    assert!(
        claim_all(&*t.store, "w", "q").await.is_empty(),
        "the good task of a refused batch was not written either"
    );
    assert!(t.store.get_instance("bad").await.unwrap().is_none());
}
