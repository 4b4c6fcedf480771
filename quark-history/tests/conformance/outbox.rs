//! The transactional outbox and the inbox: messages written with a commit or not at all, claims of
//! one head per ordering key under a fenced lease, order per key, retries, dead messages and their
//! re-drive, retention, and inbox deduplication with its window.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Clock, Commit, Delivery, Destination, Error, Expected, HistoryEvent, HistoryRange,
    MessageState, NewTask, OutboxClaim, OutboxFilter, OutboxMessage, Payload, TaskKind,
};

use crate::support::{claim_all, conformance, start};

conformance!(
    it_writes_outbox_messages_with_their_commit_or_not_at_all,
    it_refuses_a_taken_idempotency_key_and_writes_nothing_of_that_commit,
    it_claims_one_head_per_ordering_key_under_a_fenced_lease,
    it_hands_out_a_keys_messages_in_order_one_at_a_time,
    it_retries_with_the_key_held_then_dies_and_redrives,
    it_purges_sent_messages_after_the_retention_in_batches,
    it_applies_a_commit_once_per_inbox_id,
    it_expires_inbox_ids_in_batches,
    it_writes_outbox_messages_of_batched_commits_that_succeed,
    it_never_hands_one_message_or_key_to_two_racing_relays,
    it_sends_and_enqueues_in_the_callers_transaction_only_if_it_commits,
);

fn marker() -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: "marker".into(),
        payload: Payload::unit(),
    }
}

fn msg(key: &str, n: u32) -> OutboxMessage {
    OutboxMessage::json(Destination::callback("test"), &n)
        .unwrap()
        .ordering_key(key)
}

async fn pending(t: &TestStore) -> Vec<quark_history::OutboxRecord> {
    t.store
        .list_outbox(OutboxFilter::default().state(MessageState::Pending))
        .await
        .unwrap()
}

fn claim(worker: &str) -> OutboxClaim {
    OutboxClaim::new(worker)
        .limit(100)
        .lease(Duration::from_secs(30))
}

fn payloads(claimed: &[quark_history::ClaimedMessage]) -> Vec<(String, u32)> {
    claimed
        .iter()
        .map(|m| {
            (
                m.ordering_key.clone(),
                serde_json::from_slice(&m.payload).unwrap(),
            )
        })
        .collect()
}

async fn it_writes_outbox_messages_with_their_commit_or_not_at_all(t: &TestStore) {
    start(t, "o-1").await;
    let task = claim_all(t.store.as_ref(), "w", "default").await.remove(0);
    // A commit under a lost lease writes nothing, its messages included.
    let stale = quark_history::Lease {
        attempt: task.lease.attempt + 1,
        ..task.lease.clone()
    };
    let refused = t
        .store
        .commit(
            Commit::new()
                .append("o-1", Expected::Seq(2), [marker()])
                .send(msg("k", 1))
                .complete(stale),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::LeaseLost { .. })),
        "{refused:?}"
    );
    assert!(pending(t).await.is_empty());

    t.store
        .commit(
            Commit::new()
                .append("o-1", Expected::Seq(2), [marker()])
                .send(msg("k", 1).header("x-trace", "abc"))
                .send(OutboxMessage::new(
                    Destination::nats("orders.paid"),
                    b"raw".to_vec(),
                ))
                .complete(task.lease),
        )
        .await
        .unwrap();
    let listed = pending(t).await;
    assert_eq!(listed.len(), 2);
    let (nats, cb) = (&listed[0], &listed[1]);
    assert_eq!(nats.destination, Destination::nats("orders.paid"));
    assert_eq!(
        nats.ordering_key, "nats:orders.paid",
        "the default key is the destination"
    );
    assert!(uuid::Uuid::parse_str(&nats.idempotency_key).is_ok());
    assert_ne!(nats.idempotency_key, cb.idempotency_key);
    assert_eq!(cb.headers.get("x-trace").map(String::as_str), Some("abc"));
    assert_eq!(cb.attempts, 0);
    assert_eq!(cb.created_at, t.clock.now());

    // The plain path.
    let ids = t.store.send(vec![msg("j", 1), msg("j", 2)]).await.unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
}

async fn it_refuses_a_taken_idempotency_key_and_writes_nothing_of_that_commit(t: &TestStore) {
    start(t, "o-2").await;
    t.store
        .send(vec![msg("k", 1).idempotency_key("pay-7")])
        .await
        .unwrap();
    let again = t
        .store
        .commit(
            Commit::new()
                .append("o-2", Expected::Any, [marker()])
                .send(msg("k", 2).idempotency_key("pay-7")),
        )
        .await;
    match again {
        Err(Error::MessageExists { key }) => assert_eq!(key, "pay-7"),
        other => panic!("expected MessageExists, got {other:?}"),
    }
    let history = t
        .store
        .read_history("o-2", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        history.len(),
        1,
        "the append of the refused commit is rolled back"
    );
    // Two messages with one key in one call are refused too.
    let twice = t
        .store
        .send(vec![
            msg("k", 3).idempotency_key("dup"),
            msg("k", 4).idempotency_key("dup"),
        ])
        .await;
    assert!(
        matches!(twice, Err(Error::MessageExists { .. })),
        "{twice:?}"
    );
    assert_eq!(pending(t).await.len(), 1);
    // Bad input is refused before anything is written.
    let bad = t
        .store
        .send(vec![msg("k", 5).header("a", "b\r\nc: d")])
        .await;
    assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
}

async fn it_claims_one_head_per_ordering_key_under_a_fenced_lease(t: &TestStore) {
    t.store
        .send(vec![msg("a", 1), msg("a", 2), msg("b", 1), msg("a", 3)])
        .await
        .unwrap();
    let first = t.store.claim_outbox(claim("w1")).await.unwrap();
    assert_eq!(
        payloads(&first),
        [("a".into(), 1), ("b".into(), 1)],
        "only the head of each key"
    );
    assert!(first.iter().all(|m| m.lease.attempt == 1));
    assert!(
        t.store.claim_outbox(claim("w2")).await.unwrap().is_empty(),
        "both keys are held"
    );

    // Sent: the key's next message becomes claimable, by anyone.
    let a1 = &first[0];
    let next = t
        .store
        .settle_outbox(&a1.lease, Delivery::Sent { next_lease: None })
        .await
        .unwrap();
    assert!(next.is_none());
    let second = t.store.claim_outbox(claim("w2")).await.unwrap();
    assert_eq!(payloads(&second), [("a".into(), 2)]);
    // Settling twice is refused.
    let twice = t
        .store
        .settle_outbox(&a1.lease, Delivery::Sent { next_lease: None })
        .await;
    assert!(matches!(twice, Err(Error::LeaseLost { .. })), "{twice:?}");

    // A lease that expires lets another relay take the message; the old holder is fenced off.
    t.clock.advance(Duration::from_secs(31));
    let third = t.store.claim_outbox(claim("w3")).await.unwrap();
    assert_eq!(payloads(&third), [("a".into(), 2), ("b".into(), 1)]);
    assert!(third.iter().all(|m| m.lease.attempt == 2));
    let b1_old = &first[1];
    let zombie = t
        .store
        .settle_outbox(&b1_old.lease, Delivery::Sent { next_lease: None })
        .await;
    assert!(matches!(zombie, Err(Error::LeaseLost { .. })), "{zombie:?}");
    t.store
        .settle_outbox(&third[1].lease, Delivery::Sent { next_lease: None })
        .await
        .unwrap();
    let sent = t
        .store
        .list_outbox(OutboxFilter::default().state(MessageState::Sent))
        .await
        .unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].sent_at, Some(t.clock.now()), "newest first");
    assert!(sent[1].sent_at.is_some());
}

async fn it_hands_out_a_keys_messages_in_order_one_at_a_time(t: &TestStore) {
    let mut batch = Vec::new();
    for n in 1..=5 {
        batch.push(msg("k", n));
        batch.push(msg("other", n));
    }
    t.store.send(batch).await.unwrap();
    let claimed = t.store.claim_outbox(claim("w1")).await.unwrap();
    let mut current = claimed.into_iter().find(|m| m.ordering_key == "k").unwrap();
    let mut order = vec![serde_json::from_slice::<u32>(&current.payload).unwrap()];
    loop {
        // While one message of the key is held, no other relay gets any of the key.
        let others = t.store.claim_outbox(claim("w2")).await.unwrap();
        assert!(others.iter().all(|m| m.ordering_key != "k"), "{others:?}");
        for m in others {
            t.store
                .settle_outbox(
                    &m.lease,
                    Delivery::Retry {
                        at: t.clock.now(),
                        error: None,
                    },
                )
                .await
                .unwrap();
        }
        match t
            .store
            .settle_outbox(
                &current.lease,
                Delivery::Sent {
                    next_lease: Some(Duration::from_secs(30)),
                },
            )
            .await
            .unwrap()
        {
            Some(next) => {
                assert_eq!(next.lease.worker, "w1");
                order.push(serde_json::from_slice(&next.payload).unwrap());
                current = next;
            }
            None => break,
        }
    }
    assert_eq!(order, [1, 2, 3, 4, 5]);
}

async fn it_retries_with_the_key_held_then_dies_and_redrives(t: &TestStore) {
    t.store.send(vec![msg("k", 1), msg("k", 2)]).await.unwrap();
    let m1 = t.store.claim_outbox(claim("w")).await.unwrap().remove(0);
    let at = t.clock.now() + Duration::from_secs(10);
    t.store
        .settle_outbox(
            &m1.lease,
            Delivery::Retry {
                at,
                error: Some("503 from the webhook".into()),
            },
        )
        .await
        .unwrap();
    // Not due yet, and its key's next message waits behind it.
    assert!(t.store.claim_outbox(claim("w")).await.unwrap().is_empty());
    let listed = pending(t).await;
    let m1_row = listed.iter().find(|m| m.id == m1.lease.id).unwrap();
    assert_eq!(m1_row.last_error.as_deref(), Some("503 from the webhook"));
    assert_eq!(m1_row.next_attempt_at, at);
    assert_eq!(m1_row.lease_owner, None);

    t.clock.advance(Duration::from_secs(10));
    let again = t.store.claim_outbox(claim("w")).await.unwrap();
    assert_eq!(payloads(&again), [("k".into(), 1)]);
    assert_eq!(again[0].lease.attempt, 2);
    t.store
        .settle_outbox(
            &again[0].lease,
            Delivery::Dead {
                error: "gave up after 2 attempts".into(),
            },
        )
        .await
        .unwrap();
    // A dead message no longer holds its key.
    let m2 = t.store.claim_outbox(claim("w")).await.unwrap();
    assert_eq!(payloads(&m2), [("k".into(), 2)]);
    let dead = t
        .store
        .list_outbox(OutboxFilter::default().state(MessageState::Dead))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("gave up after 2 attempts")
    );
    assert_eq!(dead[0].attempts, 2);

    // A re-drive while the key's next message is in flight waits for that one.
    t.store.redrive_message(dead[0].id).await.unwrap();
    assert!(
        t.store.claim_outbox(claim("w2")).await.unwrap().is_empty(),
        "the key is held by message 2"
    );
    let next = t
        .store
        .settle_outbox(
            &m2[0].lease,
            Delivery::Sent {
                next_lease: Some(Duration::from_secs(30)),
            },
        )
        .await
        .unwrap()
        .expect("the re-driven message comes next");
    assert_eq!(next.lease.id, dead[0].id);
    assert_eq!(next.lease.attempt, 1, "attempts were reset");
    match t.store.redrive_message(dead[0].id).await {
        Err(Error::MessageNotFound { id, .. }) => assert_eq!(id, dead[0].id),
        other => panic!("only a dead message can be re-driven: {other:?}"),
    }
}

async fn it_purges_sent_messages_after_the_retention_in_batches(t: &TestStore) {
    let batch: Vec<_> = (0..5).map(|n| msg(&format!("k{n}"), n)).collect();
    t.store.send(batch).await.unwrap();
    for m in t.store.claim_outbox(claim("w")).await.unwrap() {
        t.store
            .settle_outbox(&m.lease, Delivery::Sent { next_lease: None })
            .await
            .unwrap();
    }
    t.store.send(vec![msg("later", 1)]).await.unwrap();
    let retention = Duration::from_secs(3600);
    assert_eq!(t.store.purge_outbox(retention, 2).await.unwrap(), 0);
    t.clock.advance(retention + Duration::from_secs(1));
    assert_eq!(t.store.purge_outbox(retention, 2).await.unwrap(), 2);
    assert_eq!(t.store.purge_outbox(retention, 2).await.unwrap(), 2);
    assert_eq!(t.store.purge_outbox(retention, 2).await.unwrap(), 1);
    assert_eq!(t.store.purge_outbox(retention, 2).await.unwrap(), 0);
    let left = t.store.list_outbox(OutboxFilter::default()).await.unwrap();
    assert_eq!(left.len(), 1, "pending messages are never purged");
    assert_eq!(left[0].ordering_key, "later");
}

async fn it_applies_a_commit_once_per_inbox_id(t: &TestStore) {
    start(t, "o-3").await;
    let signal = || {
        Commit::new()
            .append(
                "o-3",
                Expected::Any,
                [HistoryEvent::SignalReceived {
                    name: "paid".into(),
                    payload: Payload::json(&1).unwrap(),
                }],
            )
            .enqueue(NewTask::orchestration("default", "o-3"))
            .receive("msg-1")
    };
    t.store.commit(signal()).await.unwrap();
    match t.store.commit(signal()).await {
        Err(Error::AlreadyReceived { message_id }) => assert_eq!(message_id, "msg-1"),
        other => panic!("expected AlreadyReceived, got {other:?}"),
    }
    let history = t
        .store
        .read_history("o-3", HistoryRange::All)
        .await
        .unwrap();
    let signals = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
        .count();
    assert_eq!(signals, 1);
    // Past the window an id counts as new.
    t.clock
        .advance(quark_history::DEFAULT_INBOX_WINDOW + Duration::from_secs(1));
    t.store.commit(signal()).await.unwrap();
}

async fn it_expires_inbox_ids_in_batches(t: &TestStore) {
    for i in 0..5 {
        t.store
            .commit(Commit::new().receive(format!("old-{i}")))
            .await
            .unwrap();
    }
    let window = Duration::from_secs(60);
    t.clock.advance(window + Duration::from_secs(1));
    t.store.commit(Commit::new().receive("new")).await.unwrap();
    assert_eq!(t.store.purge_inbox(window, 3).await.unwrap(), 3);
    assert_eq!(t.store.purge_inbox(window, 3).await.unwrap(), 2);
    assert_eq!(t.store.purge_inbox(window, 3).await.unwrap(), 0);
    // The new id is still remembered; the purged ones are free again.
    assert!(matches!(
        t.store.commit(Commit::new().receive("new")).await,
        Err(Error::AlreadyReceived { .. })
    ));
    t.store
        .commit(Commit::new().receive("old-0"))
        .await
        .unwrap();
}

async fn it_writes_outbox_messages_of_batched_commits_that_succeed(t: &TestStore) {
    for id in ["b-1", "b-2"] {
        start(t, id).await;
    }
    let tasks = claim_all(t.store.as_ref(), "w", "default").await;
    assert_eq!(tasks.len(), 2);
    let stale = quark_history::Lease {
        attempt: 99,
        ..tasks[1].lease.clone()
    };
    let results = t
        .store
        .commit_many(vec![
            Commit::new()
                .append("b-1", Expected::Seq(2), [marker()])
                .send(msg("b", 1))
                .complete(tasks[0].lease.clone()),
            Commit::new()
                .append("b-2", Expected::Seq(2), [marker()])
                .send(msg("b", 2))
                .complete(stale),
            Commit::new()
                .send(msg("b", 3))
                .enqueue(NewTask::new(TaskKind::Job, "jobs")),
        ])
        .await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(Error::LeaseLost { .. })));
    let mut sent: Vec<u32> = pending(t)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    sent.sort();
    assert_eq!(sent, [1, 3]);
}

async fn it_never_hands_one_message_or_key_to_two_racing_relays(t: &TestStore) {
    const KEYS: u32 = 6;
    const PER_KEY: u32 = 25;
    let mut batch = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            batch.push(msg(&format!("k{k}"), n));
        }
    }
    t.store.send(batch).await.unwrap();
    let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u32)>::new()));
    let held = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut relays = Vec::new();
    for r in 0..4 {
        let store = std::sync::Arc::clone(&t.store);
        let delivered = std::sync::Arc::clone(&delivered);
        let held = std::sync::Arc::clone(&held);
        relays.push(tokio::spawn(async move {
            let worker = format!("relay-{r}");
            loop {
                let claimed = store
                    .claim_outbox(OutboxClaim::new(&worker).limit(3))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    let left = store
                        .list_outbox(OutboxFilter::default().state(MessageState::Pending))
                        .await
                        .unwrap();
                    if left.is_empty() {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                for mut m in claimed {
                    loop {
                        assert!(
                            held.lock().unwrap().insert(m.ordering_key.clone()),
                            "key {} held by two relays",
                            m.ordering_key
                        );
                        let n: u32 = serde_json::from_slice(&m.payload).unwrap();
                        delivered.lock().unwrap().push((m.ordering_key.clone(), n));
                        // Give the other relays a chance to claim the key while it is held.
                        tokio::task::yield_now().await;
                        held.lock().unwrap().remove(&m.ordering_key);
                        // Every other message goes back to the claim path.
                        let next_lease = n.is_multiple_of(2).then_some(Duration::from_secs(30));
                        match store
                            .settle_outbox(&m.lease, Delivery::Sent { next_lease })
                            .await
                            .unwrap()
                        {
                            Some(next) => m = next,
                            None => break,
                        }
                    }
                }
            }
        }));
    }
    for r in relays {
        r.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len() as u32, KEYS * PER_KEY, "each message once");
    for k in 0..KEYS {
        let key = format!("k{k}");
        let order: Vec<u32> = delivered
            .iter()
            .filter(|(dk, _)| *dk == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
}

/// `Store::send_tx` and `Store::enqueue_tx` write in the caller's own transaction without ending
/// it: the messages and tasks exist if and only if it commits, and workers hear of them once it
/// has (PostgreSQL: a `NOTIFY` sent in the transaction).
async fn it_sends_and_enqueues_in_the_callers_transaction_only_if_it_commits(t: &TestStore) {
    let send = |n: u32| vec![OutboxMessage::json(Destination::callback("test"), &n).unwrap()];
    let job = || NewTask::new(TaskKind::Job, "tx-jobs");
    // Rolled back: nothing.
    let mut tx = t.store.begin_tx().await.unwrap();
    let sent = t.store.send_tx(&mut tx, send(1)).await.unwrap();
    let enqueued = t.store.enqueue_tx(&mut tx, vec![job()]).await.unwrap();
    assert_eq!((sent.len(), enqueued.len()), (1, 1));
    tx.rollback().await.unwrap();
    assert!(pending(t).await.is_empty());
    assert_eq!(t.store.queue_stats("tx-jobs").await.unwrap().pending, 0);

    // Committed: both, with the ids the calls returned, and a wake-up for each.
    let mut wakeups = t.store.subscribe().await.unwrap();
    let mut tx = t.store.begin_tx().await.unwrap();
    let sent = t.store.send_tx(&mut tx, send(2)).await.unwrap();
    let enqueued = t.store.enqueue_tx(&mut tx, vec![job()]).await.unwrap();
    tx.commit().await.unwrap();
    let listed = pending(t).await;
    assert_eq!(
        listed
            .iter()
            .map(|m| (m.id, m.payload.clone()))
            .collect::<Vec<_>>(),
        [(sent[0], b"2".to_vec())]
    );
    assert_eq!(t.store.queue_stats("tx-jobs").await.unwrap().pending, 1);
    let claimed = claim_all(&*t.store, "w", "tx-jobs").await;
    assert_eq!(
        claimed.iter().map(|c| c.lease.task_id).collect::<Vec<_>>(),
        enqueued
    );
    let (mut outbox, mut queue) = (false, false);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !(outbox && queue) {
            match wakeups.recv().await {
                quark_history::Wake::Queue {
                    kind: TaskKind::Outbox,
                    ..
                } => outbox = true,
                quark_history::Wake::Queue { queue: q, .. } if q == "tx-jobs" => queue = true,
                _ => {}
            }
        }
    })
    .await
    .expect("a wake-up for the messages and one for the job");

    // A message over the payload limit is refused, and the transaction can still go on.
    let big = OutboxMessage::new(
        Destination::callback("test"),
        vec![0u8; t.store.config().max_payload_bytes + 1],
    );
    let mut tx = t.store.begin_tx().await.unwrap();
    assert!(t.store.send_tx(&mut tx, vec![big]).await.is_err());
    t.store.send_tx(&mut tx, send(3)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending(t).await.len(), 2);
}

/// `Inbox::once` and `Inbox::record_in` need the concrete store (they write on the backend's own
/// connection).
mod concrete {
    use std::sync::Arc;
    use std::time::Duration;

    use quark_history::testing::TEST_EPOCH;
    use quark_history::{Error, Inbox, ManualClock, Received, SqliteStore, StoreConfig};
    use sqlx::{PgConnection, SqliteConnection};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let clock = ManualClock::new(TEST_EPOCH);
        let store = SqliteStore::in_memory_with(StoreConfig::default().clock(clock.clone()))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE effects (n INTEGER NOT NULL)")
            .execute(store.pool())
            .await
            .unwrap();
        let inbox = Inbox::new().window(Duration::from_secs(60));
        let apply = async |conn: &mut SqliteConnection| {
            sqlx::query("INSERT INTO effects (n) VALUES (1)")
                .execute(&mut *conn)
                .await
                .map_err(Error::from)?;
            Ok::<_, Error>("applied")
        };
        assert_eq!(
            inbox.once(&store, "m-1", apply).await.unwrap(),
            Received::First("applied")
        );
        assert!(
            inbox
                .once(&store, "m-1", apply)
                .await
                .unwrap()
                .is_duplicate()
        );
        // A failing handler records nothing.
        let failed = inbox
            .once(&store, "m-2", async |_conn: &mut SqliteConnection| {
                Err::<(), _>(Error::Invalid("the handler failed".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            inbox.once(&store, "m-2", apply).await.unwrap(),
            Received::First("applied")
        );
        // Past the window the id is new again.
        clock.advance(Duration::from_secs(61));
        assert!(
            !inbox
                .once(&store, "m-1", apply)
                .await
                .unwrap()
                .is_duplicate()
        );
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(t) = quark_history::testing::postgres().await else {
            return;
        };
        let quark_history::testing::Raw::Postgres(pool) = t.raw().clone() else {
            unreachable!("a PostgreSQL test store")
        };
        let store = Arc::new(quark_history::PostgresStore::from_pool(
            pool.clone(),
            StoreConfig::default().clock(t.clock.clone()),
        ));
        sqlx::query("CREATE TABLE effects (n INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let inbox = Inbox::new();
        // Many concurrent deliveries of one message: exactly one applies.
        let mut racers = Vec::new();
        for _ in 0..8 {
            let store = Arc::clone(&store);
            racers.push(tokio::spawn(async move {
                inbox
                    .once(store.as_ref(), "m-1", async |conn: &mut PgConnection| {
                        sqlx::query("INSERT INTO effects (n) VALUES (1)")
                            .execute(&mut *conn)
                            .await
                            .map_err(Error::from)?;
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut first = 0;
        for r in racers {
            if !r.await.unwrap().is_duplicate() {
                first += 1;
            }
        }
        assert_eq!(first, 1);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Inside the caller's own transaction.
        let mut tx = pool.begin().await.unwrap();
        assert!(
            inbox
                .record_in(store.as_ref(), &mut tx, "m-2")
                .await
                .unwrap()
        );
        tx.rollback().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        assert!(
            inbox
                .record_in(store.as_ref(), &mut tx, "m-2")
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        assert!(
            !inbox
                .record_in(store.as_ref(), &mut tx, "m-2")
                .await
                .unwrap()
        );
        drop(tx);

        drop(store);
        t.cleanup().await;
    }
}
