//! Creating, reading and listing instances.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Commit, Error, Expected, HistoryEvent, HistoryRange, IdReusePolicy, InstanceFilter,
    InstanceStatus, NewInstance, Payload, TaskKind,
};

use crate::support::{claim_all, conformance, start};

conformance!(
    it_lists_instances_by_id_prefix_exactly,
    it_creates_an_instance_with_its_started_event_and_first_task,
    it_rejects_a_duplicate_id_unless_told_to_return_the_existing_run,
    it_lists_instances_by_type_status_and_time_in_pages,
    it_closes_an_instance_with_its_final_event_and_refuses_more,
    it_refuses_an_oversized_input_and_writes_nothing,
    it_creates_many_instances_in_one_transaction_or_none,
);

async fn it_creates_an_instance_with_its_started_event_and_first_task(t: &TestStore) {
    let created = start(t, "order-1").await;
    assert_eq!(created.status, InstanceStatus::Running);
    assert_eq!(created.history_len, 1);
    assert_eq!(created.instance_type, "order");

    let history = t
        .store
        .read_history("order-1", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].seq, 1);
    match &history[0].event {
        HistoryEvent::WorkflowStarted {
            instance_type,
            input,
            ..
        } => {
            assert_eq!(instance_type, "order");
            assert_eq!(
                input.decode::<serde_json::Value>().unwrap(),
                serde_json::json!({"id": "order-1"})
            );
        }
        other => panic!("expected WorkflowStarted, got {other:?}"),
    }

    let tasks = claim_all(&*t.store, "w1", "default").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].kind, TaskKind::Orchestration);
    assert_eq!(tasks[0].instance_id.as_deref(), Some("order-1"));
    assert_eq!(tasks[0].lease.attempt, 1);
}

async fn it_rejects_a_duplicate_id_unless_told_to_return_the_existing_run(t: &TestStore) {
    start(t, "dup").await;
    let again = NewInstance::new("dup", "other", Payload::json(&1).unwrap());
    match t
        .store
        .create_instance(again.clone(), IdReusePolicy::RejectDuplicate)
        .await
    {
        Err(Error::DuplicateInstance { id }) => assert_eq!(id, "dup"),
        other => panic!("expected DuplicateInstance, got {other:?}"),
    }
    let existing = t
        .store
        .create_instance(again, IdReusePolicy::ReturnExisting)
        .await
        .unwrap();
    assert!(!existing.created);
    assert_eq!(
        existing.instance.instance_type, "order",
        "the existing run is returned unchanged"
    );
    // Neither call wrote anything.
    assert_eq!(
        t.store
            .read_history("dup", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(claim_all(&*t.store, "w", "default").await.len(), 1);
}

async fn it_lists_instances_by_type_status_and_time_in_pages(t: &TestStore) {
    for i in 0..5 {
        start(t, &format!("o-{i}")).await;
        t.clock.advance(Duration::from_secs(1));
    }
    let mut payment = NewInstance::new("p-1", "payment", Payload::unit());
    payment.queue = "payments".into();
    t.store
        .create_instance(payment, IdReusePolicy::RejectDuplicate)
        .await
        .unwrap();
    // Complete o-3.
    t.store
        .commit(Commit::new().append(
            "o-3",
            Expected::Seq(2),
            [HistoryEvent::WorkflowCompleted {
                output: Payload::json(&"ok").unwrap(),
            }],
        ))
        .await
        .unwrap();

    let orders = t
        .store
        .list_instances(InstanceFilter {
            instance_type: Some("order".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = orders.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["o-4", "o-3", "o-2", "o-1", "o-0"], "newest first");

    let completed = t
        .store
        .list_instances(InstanceFilter {
            statuses: vec![InstanceStatus::Completed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].id, "o-3");
    assert_eq!(
        completed[0]
            .output
            .as_ref()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "ok"
    );

    let first = orders[4].created_at;
    let window = t
        .store
        .list_instances(InstanceFilter {
            created_from: Some(first + Duration::from_secs(1)),
            created_until: Some(first + Duration::from_secs(3)),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = window.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["o-2", "o-1"]);

    // Pages of two, following the cursor, cover everything once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = t
            .store
            .list_instances(InstanceFilter {
                after: after.clone(),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|i| (i.created_at, i.id.clone()));
        seen.extend(page.into_iter().map(|i| i.id));
    }
    assert_eq!(seen, ["p-1", "o-4", "o-3", "o-2", "o-1", "o-0"]);
}

async fn it_closes_an_instance_with_its_final_event_and_refuses_more(t: &TestStore) {
    start(t, "closing").await;
    let failure = quark_history::Failure::terminal("card declined");
    t.store
        .commit(Commit::new().append(
            "closing",
            Expected::Any,
            [HistoryEvent::WorkflowFailed { failure }],
        ))
        .await
        .unwrap();
    let record = t.store.get_instance("closing").await.unwrap().unwrap();
    assert_eq!(record.status, InstanceStatus::Failed);

    let signal = HistoryEvent::SignalReceived {
        name: "approve".into(),
        payload: Payload::unit(),
    };
    match t
        .store
        .commit(Commit::new().append("closing", Expected::Any, [signal]))
        .await
    {
        Err(Error::InstanceClosed { id, status }) => {
            assert_eq!(id, "closing");
            assert_eq!(status, InstanceStatus::Failed);
        }
        other => panic!("expected InstanceClosed, got {other:?}"),
    }
    assert_eq!(
        t.store
            .read_history("closing", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        2
    );

    match t
        .store
        .commit(Commit::new().append("nobody", Expected::Any, []))
        .await
    {
        Err(Error::InstanceNotFound { id }) => assert_eq!(id, "nobody"),
        other => panic!("expected InstanceNotFound, got {other:?}"),
    }
}

async fn it_refuses_an_oversized_input_and_writes_nothing(t: &TestStore) {
    let limit = t.store.config().max_payload_bytes;
    assert_eq!(limit, 2 * 1024 * 1024, "the default limit is 2 MiB");
    let big = Payload::json(&"x".repeat(limit)).unwrap();
    let size = big.len();
    match t
        .store
        .create_instance(
            NewInstance::new("big", "order", big),
            IdReusePolicy::RejectDuplicate,
        )
        .await
    {
        Err(Error::PayloadTooLarge { size: s, limit: l }) => {
            assert_eq!((s, l), (size, limit));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(t.store.get_instance("big").await.unwrap().is_none());
    assert!(claim_all(&*t.store, "w", "default").await.is_empty());

    // An event over the limit in an append is refused the same way, and the commit writes nothing.
    start(t, "small").await;
    let huge = HistoryEvent::SignalReceived {
        name: "s".into(),
        payload: Payload::json(&"y".repeat(limit)).unwrap(),
    };
    let result = t
        .store
        .commit(
            Commit::new()
                .append("small", Expected::Any, [huge])
                .enqueue(quark_history::NewTask::new(TaskKind::Activity, "default")),
        )
        .await;
    assert!(
        matches!(result, Err(Error::PayloadTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(
        t.store
            .read_history("small", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1
    );
    let tasks = claim_all(&*t.store, "w", "default").await;
    assert_eq!(
        tasks.len(),
        1,
        "only the instance's own orchestration task exists"
    );
}

fn new_instance(id: &str, n: u32) -> NewInstance {
    NewInstance::new(id, "order", Payload::json(&n).unwrap())
}

async fn it_creates_many_instances_in_one_transaction_or_none(t: &TestStore) {
    let batch: Vec<NewInstance> = (0..50)
        .map(|n| new_instance(&format!("b-{n}"), n))
        .collect();
    let created = t
        .store
        .create_instances(batch, IdReusePolicy::RejectDuplicate)
        .await
        .unwrap();
    assert_eq!(created.len(), 50);
    for (n, c) in created.iter().enumerate() {
        assert!(c.created);
        assert_eq!(c.instance.id, format!("b-{n}"));
        let history = t
            .store
            .read_history(&c.instance.id, HistoryRange::All)
            .await
            .unwrap();
        assert_eq!(history.len(), 1);
        assert!(t.store.verify(&c.instance.id).await.unwrap().is_intact());
        match &history[0].event {
            HistoryEvent::WorkflowStarted { input, .. } => {
                assert_eq!(input.decode::<u32>().unwrap(), n as u32)
            }
            other => panic!("{other:?}"),
        }
    }
    let tasks = claim_all(&*t.store, "w", "default").await;
    assert_eq!(tasks.len(), 50);
    assert!(tasks.iter().all(|t| t.kind == TaskKind::Orchestration));

    // One taken id: with RejectDuplicate nothing of the batch is created.
    let batch = vec![
        new_instance("c-1", 1),
        new_instance("b-3", 3),
        new_instance("c-2", 2),
    ];
    let err = t
        .store
        .create_instances(batch.clone(), IdReusePolicy::RejectDuplicate)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateInstance { ref id } if id == "b-3"),
        "{err:?}"
    );
    assert!(t.store.get_instance("c-1").await.unwrap().is_none());
    assert!(t.store.get_instance("c-2").await.unwrap().is_none());
    // With ReturnExisting the others are created and the taken one is returned as it is.
    let created = t
        .store
        .create_instances(batch, IdReusePolicy::ReturnExisting)
        .await
        .unwrap();
    let flags: Vec<(&str, bool)> = created
        .iter()
        .map(|c| (c.instance.id.as_str(), c.created))
        .collect();
    assert_eq!(flags, [("c-1", true), ("b-3", false), ("c-2", true)]);
    assert_eq!(created[1].instance.input.decode::<u32>().unwrap(), 3);
    // An id named twice is refused before anything is written.
    let twice = vec![new_instance("d-1", 1), new_instance("d-1", 2)];
    let err = t
        .store
        .create_instances(twice, IdReusePolicy::ReturnExisting)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(t.store.get_instance("d-1").await.unwrap().is_none());
}

/// A prefix is matched as text, case and all: `%` and `_` are not patterns.
async fn it_lists_instances_by_id_prefix_exactly(t: &TestStore) {
    for id in [
        "order-1", "order-2", "Order-3", "orders", "ord%x", "ord_y", "refund-1",
    ] {
        t.store
            .create_instance(
                NewInstance::new(id, "t", Payload::unit()),
                IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
    }
    let with = async |prefix: &str| {
        let mut ids: Vec<String> = t
            .store
            .list_instances(InstanceFilter {
                id_prefix: Some(prefix.into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(with("order-").await, ["order-1", "order-2"]);
    assert_eq!(with("order").await, ["order-1", "order-2", "orders"]);
    assert_eq!(with("Order").await, ["Order-3"]);
    assert_eq!(with("ord%").await, ["ord%x"]);
    assert_eq!(with("ord_").await, ["ord_y"]);
    assert!(with("zzz").await.is_empty());
    assert_eq!(with("").await.len(), 7, "an empty prefix matches every id");
}
