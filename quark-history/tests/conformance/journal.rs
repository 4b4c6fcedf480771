//! Appending, reading, the global order and the hash chain.

use std::time::Duration;

use quark_history::Store;
use quark_history::testing::TestStore;
use quark_history::{
    Backend, ChainBreak, Commit, Error, Expected, GlobalPosition, HistoryEvent, HistoryRange,
    Payload,
};

use crate::support::{conformance, start};

conformance!(
    it_appends_at_the_expected_sequence_number_and_reports_a_race_as_a_conflict,
    it_reads_a_history_whole_from_a_sequence_number_and_by_time,
    it_reads_many_histories_at_once_each_from_its_own_sequence_number,
    it_reads_all_events_in_commit_order_across_instances,
    it_names_the_first_tampered_event_when_verifying_the_chain,
    it_names_deleted_events_as_missing_and_a_cut_history_as_truncated,
    it_reports_an_undecodable_event_with_its_instance_and_sequence_number,
);

fn signal(n: u32) -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: format!("s{n}"),
        payload: Payload::json(&n).unwrap(),
    }
}

async fn it_appends_at_the_expected_sequence_number_and_reports_a_race_as_a_conflict(
    t: &TestStore,
) {
    start(t, "a").await;
    let done = t
        .store
        .commit(Commit::new().append("a", Expected::Seq(2), [signal(1), signal(2)]))
        .await
        .unwrap();
    assert_eq!(done.appended, vec![(2, 3)]);

    // A writer that read the history before that append expects 2 and must lose.
    match t
        .store
        .commit(Commit::new().append("a", Expected::Seq(2), [signal(9)]))
        .await
    {
        Err(e @ Error::Conflict { .. }) => {
            assert!(e.is_retryable());
            let Error::Conflict {
                id,
                expected,
                actual,
            } = e
            else {
                unreachable!()
            };
            assert_eq!((id.as_str(), expected, actual), ("a", 2, 4));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let history = t.store.read_history("a", HistoryRange::All).await.unwrap();
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        history[2].event,
        signal(2),
        "the losing append left no trace"
    );
    let record = t.store.get_instance("a").await.unwrap().unwrap();
    assert_eq!(record.history_len, 3);
    assert!(record.history_bytes > 0);
}

async fn it_reads_a_history_whole_from_a_sequence_number_and_by_time(t: &TestStore) {
    start(t, "r").await; // seq 1 at T0
    for n in 0..4 {
        t.clock.advance(Duration::from_secs(10));
        t.store
            .commit(Commit::new().append("r", Expected::Any, [signal(n)]))
            .await
            .unwrap();
    } // seqs 2..=5 at T0+10s .. T0+40s
    let all = t.store.read_history("r", HistoryRange::All).await.unwrap();
    assert_eq!(all.len(), 5);
    let from = t
        .store
        .read_history("r", HistoryRange::From(4))
        .await
        .unwrap();
    assert_eq!(from.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    let page = t
        .store
        .read_history("r", HistoryRange::Seq { from: 2, until: 4 })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3],
        "a page: from inclusive, until exclusive"
    );
    let t0 = all[0].recorded_at;
    let window = t
        .store
        .read_history(
            "r",
            HistoryRange::Time {
                from: t0 + Duration::from_secs(20),
                until: t0 + Duration::from_secs(40),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4],
        "from inclusive, until exclusive"
    );
    assert!(
        t.store
            .read_history("unknown", HistoryRange::All)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn it_reads_many_histories_at_once_each_from_its_own_sequence_number(t: &TestStore) {
    for id in ["m1", "m2", "m3"] {
        start(t, id).await;
    }
    // m1: 4 events, m2: 1 (just started), m3: 3.
    t.store
        .commit(
            Commit::new()
                .append("m1", Expected::Seq(2), [signal(1), signal(2), signal(3)])
                .append("m3", Expected::Seq(2), [signal(7), signal(8)]),
        )
        .await
        .unwrap();
    let asked = [
        ("m3".to_string(), 2),
        ("m1".to_string(), 1),
        ("nobody".to_string(), 1),
        ("m2".to_string(), 2),
        ("m1".to_string(), 4),
    ];
    let read = t.store.read_histories(&asked).await.unwrap();
    let seqs: Vec<Vec<(String, u64)>> = read
        .iter()
        .map(|h| h.iter().map(|e| (e.instance_id.clone(), e.seq)).collect())
        .collect();
    let expected = |id: &str, seqs: std::ops::RangeInclusive<u64>| -> Vec<(String, u64)> {
        seqs.map(|s| (id.to_string(), s)).collect()
    };
    assert_eq!(
        seqs,
        vec![
            expected("m3", 2..=3),
            expected("m1", 1..=4),
            Vec::new(),
            Vec::new(),
            expected("m1", 4..=4),
        ],
        "each answer in the order asked, from its own sequence number, nothing for an unknown instance"
    );
    // The same events as one read each, payloads and hashes included.
    for ((id, from), events) in asked.iter().zip(&read) {
        let one = t
            .store
            .read_history(id, HistoryRange::From(*from))
            .await
            .unwrap();
        assert_eq!(&one, events);
    }
    assert!(t.store.read_histories(&[]).await.unwrap().is_empty());
}

async fn it_reads_all_events_in_commit_order_across_instances(t: &TestStore) {
    start(t, "x").await;
    start(t, "y").await;
    t.store
        .commit(
            Commit::new()
                .append("x", Expected::Any, [signal(1)])
                .append("y", Expected::Any, [signal(2)]),
        )
        .await
        .unwrap();
    // On PostgreSQL events become readable once every older transaction in the cluster has ended
    // (other tests may hold some open), so read until all four arrived, pages of two at a time.
    let mut seen = Vec::new();
    let mut after = GlobalPosition::START;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 4 && tokio::time::Instant::now() < deadline {
        let page = t.store.read_all(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        if let Some(last) = page.last() {
            after = last.position;
        }
        seen.extend(page.into_iter().map(|g| (g.event.instance_id, g.event.seq)));
    }
    let expected = [("x", 1), ("y", 1), ("x", 2), ("y", 2)].map(|(i, s)| (i.to_string(), s));
    assert_eq!(seen, expected);
}

async fn it_names_the_first_tampered_event_when_verifying_the_chain(t: &TestStore) {
    start(t, "v").await;
    t.store
        .commit(Commit::new().append("v", Expected::Any, [signal(1), signal(2), signal(3)]))
        .await
        .unwrap();
    let report = t.store.verify("v").await.unwrap();
    assert!(report.is_intact());
    assert_eq!(report.events, 4);

    // Someone edits event 3 behind the engine's back: a different, still valid, signal.
    let forged = serde_json::to_string(&signal(7)).unwrap();
    let sql = match t.store.backend() {
        Backend::Postgres => {
            format!(
                "UPDATE history SET payload = convert_to('{forged}', 'UTF8') WHERE instance_id = 'v' AND seq = 3"
            )
        }
        _ => format!(
            "UPDATE history SET payload = CAST('{forged}' AS BLOB) WHERE instance_id = 'v' AND seq = 3"
        ),
    };
    assert_eq!(t.execute(&sql).await, 1);
    // The forged row still decodes...
    let history = t.store.read_history("v", HistoryRange::All).await.unwrap();
    assert_eq!(history[2].event, signal(7));
    // ...but the chain names it.
    let report = t.store.verify("v").await.unwrap();
    assert_eq!(report.first_mismatch, Some(3));
    assert_eq!(report.problem, Some(ChainBreak::Altered { seq: 3 }));
    assert!(!report.is_intact());
    assert!(matches!(
        t.store.verify("none").await,
        Err(Error::InstanceNotFound { .. })
    ));
}

/// Rows deleted behind the engine's back: from the middle, they are missing (not an alteration of
/// the event after them); from the end, the history is truncated, which only the head recorded on
/// the instance row can tell; a row added past that head is noticed too.
async fn it_names_deleted_events_as_missing_and_a_cut_history_as_truncated(t: &TestStore) {
    for id in ["mid", "end"] {
        start(t, id).await;
        t.store
            .commit(Commit::new().append(
                id,
                Expected::Any,
                [signal(1), signal(2), signal(3), signal(4), signal(5)],
            ))
            .await
            .unwrap();
        assert!(t.store.verify(id).await.unwrap().is_intact(), "{id}");
    }

    // Events 3 and 4 of 6 deleted.
    assert_eq!(
        t.execute("DELETE FROM history WHERE instance_id = 'mid' AND seq IN (3, 4)")
            .await,
        2
    );
    let report = t.store.verify("mid").await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak::Missing { from: 3, until: 5 })
    );
    assert_eq!(report.first_mismatch, Some(3));
    assert_eq!(
        ChainBreak::Missing { from: 3, until: 5 }.to_string(),
        "events 3 to 4 are missing"
    );

    // The last two deleted: what is left is a valid chain, but shorter than the recorded one.
    assert_eq!(
        t.execute("DELETE FROM history WHERE instance_id = 'end' AND seq >= 5")
            .await,
        2
    );
    let report = t.store.verify("end").await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak::Truncated {
            last: 4,
            recorded: 6
        })
    );
    assert_eq!((report.events, report.first_mismatch), (4, Some(5)));
    // Everything but the instance row deleted.
    t.execute("DELETE FROM history WHERE instance_id = 'end'")
        .await;
    assert_eq!(
        t.store.verify("end").await.unwrap().problem,
        Some(ChainBreak::Truncated {
            last: 0,
            recorded: 6
        })
    );

    // An event added past the recorded head, chained correctly: copied from a twin whose history
    // is the same but one event longer (the chain hashes content, not the instance id).
    for id in ["extra", "twin"] {
        t.store
            .create_instance(
                quark_history::NewInstance::new(id, "order", Payload::json(&0).unwrap()),
                quark_history::IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
        t.store
            .commit(Commit::new().append(id, Expected::Any, (1..=5).map(signal)))
            .await
            .unwrap();
    }
    t.store
        .commit(Commit::new().append("twin", Expected::Any, [signal(6)]))
        .await
        .unwrap();
    let copied = t
        .execute(
            "INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
             SELECT 'extra', seq, kind, schema_version, codec, payload, recorded_at, hash \
             FROM history WHERE instance_id = 'twin' AND seq = 7",
        )
        .await;
    assert_eq!(copied, 1);
    assert!(t.store.verify("twin").await.unwrap().is_intact());
    let report = t.store.verify("extra").await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak::Beyond {
            last: 7,
            recorded: 6
        })
    );
    assert_eq!(report.first_mismatch, Some(7));

    // The recorded head's hash changed: the chain holds by itself but does not end there.
    assert_eq!(
        t.execute(
            "UPDATE instances SET last_hash = (SELECT hash FROM history \
             WHERE instance_id = 'twin' AND seq = 2) WHERE id = 'twin'"
        )
        .await,
        1
    );
    let report = t.store.verify("twin").await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak::HeadMismatch {
            last: 7,
            recorded: 7
        })
    );
    assert_eq!(
        report.first_mismatch,
        Some(1),
        "which event changed cannot be told"
    );
}

async fn it_reports_an_undecodable_event_with_its_instance_and_sequence_number(t: &TestStore) {
    start(t, "bad").await;
    t.store
        .commit(Commit::new().append("bad", Expected::Any, [signal(1)]))
        .await
        .unwrap();
    let sql = match t.store.backend() {
        Backend::Postgres => {
            "UPDATE history SET payload = '\\xdeadbeef'::bytea WHERE instance_id = 'bad' AND seq = 2"
        }
        _ => "UPDATE history SET payload = X'DEADBEEF' WHERE instance_id = 'bad' AND seq = 2",
    };
    assert_eq!(t.execute(sql).await, 1);
    match t.store.read_history("bad", HistoryRange::All).await {
        Err(Error::Decode {
            instance_id, seq, ..
        }) => assert_eq!((instance_id.as_str(), seq), ("bad", 2)),
        other => panic!("expected Decode, got {other:?}"),
    }
    // A newer schema is refused, not guessed at.
    assert_eq!(
        t.execute("UPDATE history SET schema_version = 99 WHERE instance_id = 'bad' AND seq = 1")
            .await,
        1
    );
    match t.store.read_history("bad", HistoryRange::From(1)).await {
        Err(Error::UnsupportedSchema {
            seq: 1, found: 99, ..
        }) => {}
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
    assert_eq!(t.store.verify("bad").await.unwrap().first_mismatch, Some(2));
}

/// PostgreSQL: a store appends to a warm instance without reading its row first, from the head
/// its own last append left. Another process's appends, its ending of the instance, and the
/// instance's replacement by another of the same id (rows deleted behind the engine's back) must
/// each be noticed: the append lands at the real next sequence number on the real chain, or fails
/// as it would on a cold store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_continues_a_history_another_process_extended_replaced_or_ended() {
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    let other = quark_history::PostgresStore::connect_with(&url, Default::default())
        .await
        .unwrap();
    let append = |expected, n| Commit::new().append("shared", expected, [signal(n)]);
    async fn ok(store: &dyn Store, commit: Commit) -> Vec<(u64, u64)> {
        store.commit(commit).await.unwrap().appended
    }

    start(&t, "shared").await;
    assert_eq!(ok(&*t.store, append(Expected::Seq(2), 1)).await, [(2, 2)]);
    assert_eq!(ok(&other, append(Expected::Any, 2)).await, [(3, 3)]);
    assert_eq!(
        ok(&*t.store, append(Expected::Any, 3)).await,
        [(4, 4)],
        "after the other process's append, not over it"
    );
    assert!(matches!(
        t.store.commit(append(Expected::Seq(4), 9)).await,
        Err(Error::Conflict { actual: 5, .. })
    ));
    assert_eq!(ok(&other, append(Expected::Seq(5), 4)).await, [(5, 5)]);
    let report = t.store.verify("shared").await.unwrap();
    assert_eq!((report.events, report.first_mismatch), (5, None));
    let names: Vec<String> = t
        .store
        .read_history("shared", HistoryRange::From(2))
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e.event {
            HistoryEvent::SignalReceived { name, .. } => name,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["s1", "s2", "s3", "s4"]);

    // Replaced: same id, same next sequence number, another chain.
    assert_eq!(ok(&*t.store, append(Expected::Any, 5)).await, [(6, 6)]);
    t.execute("DELETE FROM history WHERE instance_id = 'shared'")
        .await;
    t.execute("DELETE FROM instances WHERE id = 'shared'").await;
    other
        .create_instance(
            quark_history::NewInstance::new("shared", "other-type", Payload::json(&0).unwrap()),
            quark_history::IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();
    for n in 10..15 {
        ok(&other, append(Expected::Any, n)).await;
    }
    assert_eq!(
        ok(&*t.store, append(Expected::Any, 15)).await,
        [(7, 7)],
        "the head this store kept has the same sequence number, not the same chain"
    );
    let report = t.store.verify("shared").await.unwrap();
    assert_eq!((report.events, report.first_mismatch), (7, None));

    // Ended by the other process.
    other
        .commit(Commit::new().append(
            "shared",
            Expected::Any,
            [HistoryEvent::WorkflowTerminated {
                reason: "done".into(),
            }],
        ))
        .await
        .unwrap();
    assert!(matches!(
        t.store.commit(append(Expected::Any, 16)).await,
        Err(Error::InstanceClosed { .. })
    ));
    assert_eq!(t.store.verify("shared").await.unwrap().events, 8);
    t.cleanup().await;
}
