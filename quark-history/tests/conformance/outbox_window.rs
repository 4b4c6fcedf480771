//! Outbox windows: a claim (and a hand-over) leases a key's head with the due messages right
//! behind it, under one lease; the window is settled in one transaction: the delivered ones sent,
//! a failed one retried or dead, the untried rest handed back without an attempt counted; a lost
//! lease writes nothing. Racing relays with windows still deliver each message once, in order.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    ClaimedMessage, Clock, Delivery, Destination, Error, MessageState, NextWindow, OutboxClaim,
    OutboxFilter, OutboxMessage, OutboxRecord, WindowOutcome,
};

use crate::support::conformance;

conformance!(
    it_claims_a_window_of_each_key_in_order_under_one_lease,
    it_hands_over_the_next_window_when_every_message_was_sent,
    it_settles_a_failed_window_and_hands_the_untried_rest_back,
    it_stops_a_window_before_a_message_that_is_not_due,
    it_writes_nothing_of_a_window_whose_lease_was_lost,
    it_never_hands_one_message_or_key_to_two_racing_relays_with_windows,
    it_finds_free_keys_behind_the_runs_of_keys_in_flight,
    it_takes_the_free_keys_in_the_due_order_of_their_heads,
    it_bounds_a_window_by_its_payload_bytes,
);

fn msg(key: &str, n: u32) -> OutboxMessage {
    OutboxMessage::json(Destination::callback("test"), &n)
        .unwrap()
        .ordering_key(key)
}

fn claim(worker: &str, window: u32) -> OutboxClaim {
    OutboxClaim::new(worker)
        .limit(100)
        .window(window)
        .lease(Duration::from_secs(30))
}

fn numbers(window: &[ClaimedMessage]) -> Vec<(String, u32)> {
    window
        .iter()
        .map(|m| {
            (
                m.ordering_key.clone(),
                serde_json::from_slice(&m.payload).unwrap(),
            )
        })
        .collect()
}

async fn record(t: &TestStore, id: i64) -> OutboxRecord {
    t.store
        .list_outbox(OutboxFilter::default().limit(1000))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .expect("the message exists")
}

/// Sends `n` messages on `key`, numbered from 0.
async fn send(t: &TestStore, key: &str, n: u32) -> Vec<i64> {
    t.store
        .send((0..n).map(|i| msg(key, i)).collect())
        .await
        .unwrap()
}

/// A claim of `limit` keys with windows of `window`.
fn claim_of(worker: &str, limit: u32, window: u32) -> OutboxClaim {
    OutboxClaim::new(worker)
        .limit(limit)
        .window(window)
        .lease(Duration::from_secs(30))
}

async fn it_finds_free_keys_behind_the_runs_of_keys_in_flight(t: &TestStore) {
    // Keys a and b have long runs at the front of the due order (longer than a claim looks at
    // before it visits every key); c and d come after them.
    send(t, "a", 200).await;
    send(t, "b", 200).await;
    send(t, "c", 3).await;
    send(t, "d", 1).await;
    let first = t.store.claim_outbox(claim_of("w1", 2, 4)).await.unwrap();
    let keys: std::collections::BTreeSet<_> =
        first.iter().map(|m| m.ordering_key.as_str()).collect();
    assert_eq!(keys, ["a", "b"].into(), "the first keys in due order");
    // Every due message a claim of two keys looks at first belongs to a or b, both in flight; the
    // free heads are 392 messages further.
    let second = t.store.claim_outbox(claim_of("w2", 2, 4)).await.unwrap();
    assert_eq!(
        numbers(&second),
        [
            ("c".into(), 0),
            ("c".into(), 1),
            ("c".into(), 2),
            ("d".into(), 0)
        ],
        "the free keys behind the runs in flight, with their windows"
    );
    assert!(
        t.store
            .claim_outbox(claim_of("w3", 2, 4))
            .await
            .unwrap()
            .is_empty(),
        "every key is held"
    );
}

async fn it_takes_the_free_keys_in_the_due_order_of_their_heads(t: &TestStore) {
    // One message on each of 12 keys, sent in the order l, k, ..., a: due in that order.
    let keys: Vec<String> = ('a'..='l').rev().map(String::from).collect();
    for key in &keys {
        send(t, key, 1).await;
    }
    // A claim of 3, then of 4, then of the rest: each takes the oldest free heads.
    let mut taken = Vec::new();
    for (worker, limit) in [("w1", 3), ("w2", 4), ("w3", 10)] {
        let claimed = t
            .store
            .claim_outbox(claim_of(worker, limit, 2))
            .await
            .unwrap();
        assert!(claimed.len() <= limit as usize);
        taken.extend(claimed.into_iter().map(|m| m.ordering_key));
    }
    assert_eq!(taken, keys, "oldest first, each key once");
}

async fn it_bounds_a_window_by_its_payload_bytes(t: &TestStore) {
    // Payloads of 102 bytes (a JSON string of 100) on key a, of 1,002 on key b.
    let sized = |key: &str, len: usize| {
        OutboxMessage::json(Destination::callback("test"), &"x".repeat(len))
            .unwrap()
            .ordering_key(key)
    };
    t.store
        .send((0..6).map(|_| sized("a", 100)).collect())
        .await
        .unwrap();
    t.store
        .send((0..2).map(|_| sized("b", 1000)).collect())
        .await
        .unwrap();
    let lengths = |w: &[ClaimedMessage]| w.iter().map(|m| m.payload.len()).collect::<Vec<_>>();
    let claimed = t
        .store
        .claim_outbox(claim_of("w1", 10, 10).window_bytes(250))
        .await
        .unwrap();
    let (a, b): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|m| m.ordering_key == "a");
    // a: 0, 102 and 204 bytes before the first three, 306 before the fourth.
    assert_eq!(lengths(&a), [102, 102, 102]);
    // b: a head larger than the bound goes, alone.
    assert_eq!(lengths(&b), [1002]);
    // The hand-over keeps to its own bound: two of the three left.
    let next = t
        .store
        .settle_outbox_window(
            &a,
            WindowOutcome::all_sent(
                3,
                Some(NextWindow::new(10, Duration::from_secs(30)).bytes(150)),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        lengths(&next),
        [102, 102],
        "102 bytes before the second, under 150"
    );
    let next = t
        .store
        .settle_outbox_window(
            &b,
            WindowOutcome::all_sent(
                1,
                Some(NextWindow::new(10, Duration::from_secs(30)).bytes(1)),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        lengths(&next),
        [1002],
        "the bound never stops a window's first message"
    );
}

async fn it_claims_a_window_of_each_key_in_order_under_one_lease(t: &TestStore) {
    send(t, "a", 5).await;
    send(t, "b", 2).await;
    let claimed = t.store.claim_outbox(claim("w1", 3)).await.unwrap();
    let a: Vec<_> = claimed
        .iter()
        .filter(|m| m.ordering_key == "a")
        .cloned()
        .collect();
    let b: Vec<_> = claimed
        .iter()
        .filter(|m| m.ordering_key == "b")
        .cloned()
        .collect();
    assert_eq!(
        numbers(&a),
        [("a".into(), 0), ("a".into(), 1), ("a".into(), 2)]
    );
    assert_eq!(numbers(&b), [("b".into(), 0), ("b".into(), 1)]);
    let expiry = a[0].lease_expires_at;
    assert!(
        claimed.iter().all(|m| m.lease_expires_at == expiry
            && m.lease.worker == "w1"
            && m.lease.attempt == 1)
    );
    // Both keys are held: another relay gets nothing, not even a's fourth message.
    assert!(
        t.store
            .claim_outbox(claim("w2", 3))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn it_hands_over_the_next_window_when_every_message_was_sent(t: &TestStore) {
    let ids = send(t, "a", 5).await;
    let first = t.store.claim_outbox(claim("w1", 2)).await.unwrap();
    assert_eq!(first.len(), 2);
    let next = t
        .store
        .settle_outbox_window(
            &first,
            WindowOutcome::all_sent(2, Some(NextWindow::new(2, Duration::from_secs(30)))),
        )
        .await
        .unwrap();
    assert_eq!(numbers(&next), [("a".into(), 2), ("a".into(), 3)]);
    // The key is still held across the hand-over.
    assert!(
        t.store
            .claim_outbox(claim("w2", 2))
            .await
            .unwrap()
            .is_empty()
    );
    let last = t
        .store
        .settle_outbox_window(
            &next,
            WindowOutcome::all_sent(2, Some(NextWindow::new(2, Duration::from_secs(30)))),
        )
        .await
        .unwrap();
    assert_eq!(numbers(&last), [("a".into(), 4)]);
    let none = t
        .store
        .settle_outbox_window(
            &last,
            WindowOutcome::all_sent(1, Some(NextWindow::new(2, Duration::from_secs(30)))),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    for id in ids {
        let r = record(t, id).await;
        assert_eq!((r.state, r.attempts), (MessageState::Sent, 1), "{r:?}");
    }
}

async fn it_settles_a_failed_window_and_hands_the_untried_rest_back(t: &TestStore) {
    let ids = send(t, "a", 4).await;
    let window = t.store.claim_outbox(claim("w1", 4)).await.unwrap();
    assert_eq!(window.len(), 4);
    let retry_at = t.clock.now() + Duration::from_secs(10);
    let next = t
        .store
        .settle_outbox_window(
            &window,
            WindowOutcome::failed_at(
                1,
                Delivery::Retry {
                    at: retry_at,
                    error: Some("503".into()),
                },
            ),
        )
        .await
        .unwrap();
    assert!(next.is_empty());
    let r: Vec<OutboxRecord> = futures::future::join_all(ids.iter().map(|id| record(t, *id))).await;
    assert_eq!((r[0].state, r[0].attempts), (MessageState::Sent, 1));
    assert_eq!((r[1].state, r[1].attempts), (MessageState::Pending, 1));
    assert_eq!(r[1].last_error.as_deref(), Some("503"));
    assert_eq!(r[1].next_attempt_at, retry_at);
    for untried in &r[2..] {
        assert_eq!(untried.state, MessageState::Pending);
        assert_eq!(
            untried.attempts, 0,
            "a claim that was never tried is not an attempt"
        );
        assert_eq!(untried.lease_owner, None);
    }
    // The key waits for its failed head: nothing is due before the retry.
    assert!(
        t.store
            .claim_outbox(claim("w2", 4))
            .await
            .unwrap()
            .is_empty()
    );
    t.clock.advance(Duration::from_secs(10));
    let again = t.store.claim_outbox(claim("w2", 4)).await.unwrap();
    assert_eq!(
        numbers(&again),
        [("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
    );
    assert_eq!(again[0].lease.attempt, 2);
    assert_eq!(again[1].lease.attempt, 1);
    // A dead message lets the key go on: its successors are handed back, due now.
    t.store
        .settle_outbox_window(
            &again,
            WindowOutcome::failed_at(
                0,
                Delivery::Dead {
                    error: "gone".into(),
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(record(t, ids[1]).await.state, MessageState::Dead);
    let rest = t.store.claim_outbox(claim("w3", 4)).await.unwrap();
    assert_eq!(numbers(&rest), [("a".into(), 2), ("a".into(), 3)]);
}

async fn it_stops_a_window_before_a_message_that_is_not_due(t: &TestStore) {
    let ids = send(t, "a", 4).await;
    // The third message waits for later (as a message put back with a retry time would).
    let later = (t.clock.now() + Duration::from_secs(60)).as_micros();
    let n = t
        .execute(&format!(
            "UPDATE outbox SET next_attempt_at = {later} WHERE id = {}",
            ids[2]
        ))
        .await;
    assert_eq!(n, 1);
    let window = t.store.claim_outbox(claim("w1", 4)).await.unwrap();
    assert_eq!(
        numbers(&window),
        [("a".into(), 0), ("a".into(), 1)],
        "never past a waiting one"
    );
    let next = t
        .store
        .settle_outbox_window(
            &window,
            WindowOutcome::all_sent(2, Some(NextWindow::new(4, Duration::from_secs(30)))),
        )
        .await
        .unwrap();
    assert!(next.is_empty(), "the key's head is not due: {next:?}");
}

async fn it_writes_nothing_of_a_window_whose_lease_was_lost(t: &TestStore) {
    let ids = send(t, "a", 3).await;
    let stale = t.store.claim_outbox(claim("w1", 3)).await.unwrap();
    t.clock.advance(Duration::from_secs(31));
    let fresh = t.store.claim_outbox(claim("w2", 3)).await.unwrap();
    assert_eq!(fresh.len(), 3, "the expired window is claimed again");
    let mut before = Vec::new();
    for id in &ids {
        before.push(format!("{:?}", record(t, *id).await));
    }
    let err = t
        .store
        .settle_outbox_window(&stale, WindowOutcome::all_sent(3, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    for (id, before) in ids.iter().zip(&before) {
        let r = record(t, *id).await;
        assert_eq!(r.state, MessageState::Pending);
        assert_eq!(&format!("{r:?}"), before, "the stale settle wrote nothing");
    }
    assert_eq!(
        record(t, ids[0]).await.lease_owner.as_deref(),
        Some("w2"),
        "the new holder keeps the key"
    );
    t.store
        .settle_outbox_window(&fresh, WindowOutcome::all_sent(3, None))
        .await
        .unwrap();
    assert_eq!(record(t, ids[2]).await.state, MessageState::Sent);
    // A window that is not one key's messages of one lease is refused, not half written.
    let mixed = [fresh[0].clone(), stale[1].clone()];
    assert!(matches!(
        t.store
            .settle_outbox_window(&mixed, WindowOutcome::all_sent(2, None))
            .await,
        Err(Error::Invalid(_))
    ));
}

async fn it_never_hands_one_message_or_key_to_two_racing_relays_with_windows(t: &TestStore) {
    const KEYS: u32 = 6;
    const PER_KEY: u32 = 30;
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
    for r in 0..4u32 {
        let store = std::sync::Arc::clone(&t.store);
        let delivered = std::sync::Arc::clone(&delivered);
        let held = std::sync::Arc::clone(&held);
        relays.push(tokio::spawn(async move {
            let worker = format!("relay-{r}");
            loop {
                let claimed = store
                    .claim_outbox(OutboxClaim::new(&worker).limit(2).window(1 + r))
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
                let mut keys: Vec<String> =
                    claimed.iter().map(|m| m.ordering_key.clone()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    let mut window: Vec<ClaimedMessage> = claimed
                        .iter()
                        .filter(|m| m.ordering_key == key)
                        .cloned()
                        .collect();
                    while !window.is_empty() {
                        assert!(
                            held.lock().unwrap().insert(key.clone()),
                            "key {key} held by two relays"
                        );
                        // Deliver all but (sometimes) the last, which is handed back untried.
                        let last: u32 =
                            serde_json::from_slice(&window[window.len() - 1].payload).unwrap();
                        let hand_back = window.len() > 1 && last.is_multiple_of(3);
                        let sent = window.len() - usize::from(hand_back);
                        for m in &window[..sent] {
                            let n: u32 = serde_json::from_slice(&m.payload).unwrap();
                            delivered.lock().unwrap().push((key.clone(), n));
                        }
                        tokio::task::yield_now().await;
                        held.lock().unwrap().remove(&key);
                        let outcome = if hand_back {
                            WindowOutcome::handed_back(sent)
                        } else {
                            WindowOutcome::all_sent(
                                sent,
                                Some(NextWindow::new(1 + r, Duration::from_secs(30))),
                            )
                        };
                        window = store.settle_outbox_window(&window, outcome).await.unwrap();
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
