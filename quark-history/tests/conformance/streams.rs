//! Entity streams: histories of entity events, appended with an expected version, kept apart
//! from workflow instances, covered by the hash chain and the global order; and their snapshots.

use quark_history::testing::TestStore;
use quark_history::{
    ChainBreak, Commit, Error, Expected, GlobalPosition, HistoryEvent, HistoryRange,
    InstanceFilter, InstanceStatus, Payload, Snapshot, Timestamp,
};

use crate::support::{conformance, start};

conformance!(
    it_appends_to_a_stream_at_its_expected_version_and_refuses_a_stale_writer,
    it_appends_to_several_streams_in_one_commit_or_to_none,
    it_keeps_streams_and_workflow_instances_apart,
    it_keeps_a_streams_newest_snapshots_in_their_schema,
    it_verifies_a_streams_chain_against_its_recorded_head,
);

fn deposited(amount: i64) -> HistoryEvent {
    HistoryEvent::EntityEvent {
        event_type: "Deposited".into(),
        data: Payload::json(&serde_json::json!({ "amount": amount })).unwrap(),
        causation: Some(format!("cmd-{amount}")),
        correlation: Some("conversation-1".into()),
    }
}

fn amount(e: &HistoryEvent) -> i64 {
    match e {
        HistoryEvent::EntityEvent { data, .. } => {
            data.decode::<serde_json::Value>().unwrap()["amount"]
                .as_i64()
                .unwrap()
        }
        other => panic!("not an entity event: {other:?}"),
    }
}

async fn it_appends_to_a_stream_at_its_expected_version_and_refuses_a_stale_writer(t: &TestStore) {
    let s = &t.store;
    assert_eq!(s.open_stream("Account/alice", "Account").await.unwrap(), 0);
    let done = s
        .commit(Commit::new().append(
            "Account/alice",
            Expected::Seq(1),
            [deposited(10), deposited(20)],
        ))
        .await
        .unwrap();
    assert_eq!(done.appended, vec![(1, 2)]);
    // Opening it again finds it where it is.
    assert_eq!(s.open_stream("Account/alice", "Account").await.unwrap(), 2);

    // A writer that decided on version 0 is refused, and writes nothing.
    let stale = s
        .commit(Commit::new().append("Account/alice", Expected::Seq(1), [deposited(99)]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::Conflict {
                expected: 1,
                actual: 3,
                ..
            }
        ),
        "{stale:?}"
    );
    let events = s
        .read_history("Account/alice", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| amount(&e.event)).collect::<Vec<_>>(),
        [10, 20]
    );
    assert!(matches!(
        &events[0].event,
        HistoryEvent::EntityEvent { causation: Some(c), correlation: Some(r), .. }
            if c == "cmd-10" && r == "conversation-1"
    ));
    // The global order carries them like any event (on PostgreSQL once no older transaction is
    // open anywhere on the server: other tests hold some).
    let ours = async || -> Vec<i64> {
        s.read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event.instance_id == "Account/alice")
            .map(|e| amount(&e.event.event))
            .collect()
    };
    quark_history::testing::eventually("the deposits are final", async || ours().await.len() == 2)
        .await;
    assert_eq!(ours().await, [10, 20]);
    assert!(s.verify("Account/alice").await.unwrap().is_intact());
}

async fn it_appends_to_several_streams_in_one_commit_or_to_none(t: &TestStore) {
    let s = &t.store;
    s.open_stream("Account/a", "Account").await.unwrap();
    s.open_stream("Account/b", "Account").await.unwrap();
    s.commit(Commit::new().append("Account/b", Expected::Seq(1), [deposited(1)]))
        .await
        .unwrap();

    // b moved on: the transfer decided on b at version 0 lands nowhere.
    let refused = s
        .commit(
            Commit::new()
                .append("Account/a", Expected::Seq(1), [deposited(-5)])
                .append("Account/b", Expected::Seq(1), [deposited(5)]),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused:?}");
    assert_eq!(s.open_stream("Account/a", "Account").await.unwrap(), 0);
    assert_eq!(s.open_stream("Account/b", "Account").await.unwrap(), 1);

    let done = s
        .commit(
            Commit::new()
                .append("Account/a", Expected::Seq(1), [deposited(-5)])
                .append("Account/b", Expected::Seq(2), [deposited(5)]),
        )
        .await
        .unwrap();
    assert_eq!(done.appended, vec![(1, 1), (2, 2)]);
}

async fn it_keeps_streams_and_workflow_instances_apart(t: &TestStore) {
    let s = &t.store;
    start(t, "order-1").await;
    s.open_stream("Account/alice", "Account").await.unwrap();

    let taken = s.open_stream("order-1", "Account").await.unwrap_err();
    assert!(
        matches!(&taken, Error::Invalid(m) if m.contains("workflow instance")),
        "{taken:?}"
    );
    let other_type = s.open_stream("Account/alice", "Cart").await.unwrap_err();
    assert!(
        matches!(&other_type, Error::Invalid(m) if m.contains("`Account`")),
        "{other_type:?}"
    );

    // A workflow event on a stream, an entity event on a workflow: refused, nothing written.
    let signal = HistoryEvent::SignalReceived {
        name: "poke".into(),
        payload: Payload::unit(),
    };
    let e = s
        .commit(Commit::new().append("Account/alice", Expected::Any, [signal]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("entity stream")),
        "{e:?}"
    );
    let e = s
        .commit(Commit::new().append("order-1", Expected::Any, [deposited(1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("workflow instance")),
        "{e:?}"
    );
    assert_eq!(s.open_stream("Account/alice", "Account").await.unwrap(), 0);
    assert_eq!(
        s.read_history("order-1", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1
    );

    // Listings show runs unless streams are asked for.
    let runs = s.list_instances(InstanceFilter::default()).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["order-1"]
    );
    let only_streams = InstanceFilter {
        statuses: vec![InstanceStatus::Stream],
        ..Default::default()
    };
    let streams = s.list_instances(only_streams).await.unwrap();
    assert_eq!(
        streams
            .iter()
            .map(|r| (r.id.as_str(), r.instance_type.as_str()))
            .collect::<Vec<_>>(),
        [("Account/alice", "Account")]
    );
}

async fn it_keeps_a_streams_newest_snapshots_in_their_schema(t: &TestStore) {
    let s = &t.store;
    s.open_stream("Account/alice", "Account").await.unwrap();
    let snap = |version: u64, schema: u32| Snapshot {
        stream_id: "Account/alice".into(),
        version,
        schema,
        state: Payload::json(&serde_json::json!({ "balance": version * 10 })).unwrap(),
        taken_at: Timestamp::from_micros(version as i64),
    };
    for version in 1..=6 {
        s.save_snapshot(snap(version * 100, 2), 4).await.unwrap();
    }
    // The newest at or before the version asked, in the schema asked.
    let newest = s
        .load_snapshot("Account/alice", 2, u64::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest, snap(600, 2));
    let before = s
        .load_snapshot("Account/alice", 2, 450)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.version, 400);
    // Only the newest four are kept: nothing at or before 200 is left.
    assert_eq!(
        s.load_snapshot("Account/alice", 2, 250).await.unwrap(),
        None
    );
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM snapshots WHERE stream_id = 'Account/alice'")
            .await,
        4
    );
    // Another schema's reader sees none of them.
    assert_eq!(
        s.load_snapshot("Account/alice", 3, u64::MAX).await.unwrap(),
        None
    );

    // An oversized state is refused and leaves what was there.
    let limit = s.config().max_payload_bytes;
    let mut huge = snap(700, 2);
    huge.state = Payload::from_bytes(quark_history::CodecTag::Json, vec![b' '; limit + 1]);
    let e = s.save_snapshot(huge, 4).await.unwrap_err();
    assert!(
        matches!(e, Error::PayloadTooLarge { size, limit: l } if size == limit + 1 && l == limit),
        "{e:?}"
    );
    assert_eq!(
        s.load_snapshot("Account/alice", 2, u64::MAX)
            .await
            .unwrap()
            .unwrap()
            .version,
        600
    );
}

async fn it_verifies_a_streams_chain_against_its_recorded_head(t: &TestStore) {
    let s = &t.store;
    s.open_stream("Account/alice", "Account").await.unwrap();
    assert!(s.verify("Account/alice").await.unwrap().is_intact());
    s.commit(Commit::new().append("Account/alice", Expected::Seq(1), (1..=4).map(deposited)))
        .await
        .unwrap();
    assert!(s.verify("Account/alice").await.unwrap().is_intact());

    t.execute("DELETE FROM history WHERE instance_id = 'Account/alice' AND seq = 4")
        .await;
    let truncated = s.verify("Account/alice").await.unwrap();
    assert_eq!(
        truncated.problem,
        Some(ChainBreak::Truncated {
            last: 3,
            recorded: 4
        })
    );
    t.execute("DELETE FROM history WHERE instance_id = 'Account/alice' AND seq = 2")
        .await;
    let missing = s.verify("Account/alice").await.unwrap();
    assert_eq!(
        missing.problem,
        Some(ChainBreak::Missing { from: 2, until: 3 })
    );
}
