//! The delivery loop against a destination that never answers.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{
    ClaimedMessage, Delivery, Destination, OutboxClaim, OutboxFilter, OutboxMessage, OutboxStore,
    SqliteStore, Store,
};

use super::{DeliveryError, DeliveryPolicy, Destinations, WindowResults, run_key};

/// Takes a window's messages and never reports on them, as a broker connection that hangs after
/// the publishes went out.
struct Hanging;

impl Destinations for Hanging {
    fn deliver<'a>(
        &'a self,
        _store: &'a dyn Store,
        _message: &'a ClaimedMessage,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        panic!("a pipelined window is never delivered one by one here")
    }

    fn pipeline<'a>(
        &'a self,
        _store: &'a dyn Store,
        _window: &'a [ClaimedMessage],
        _timeout: Duration,
    ) -> Option<BoxFuture<'a, WindowResults>> {
        Some(Box::pin(futures::future::pending()))
    }
}

#[tokio::test]
async fn a_pipelined_window_that_never_ends_is_settled_before_its_lease_runs_out() {
    let store = SqliteStore::in_memory().await.unwrap();
    let messages = (0..3)
        .map(|n| {
            OutboxMessage::json(Destination::callback("anywhere"), &n)
                .unwrap()
                .ordering_key("k")
        })
        .collect();
    store.send(messages).await.unwrap();
    // Deliveries may take 1 s and the lease is 3 s: the window must be settled by about 2 s.
    let policy = DeliveryPolicy::new(
        5,
        (Duration::from_secs(60), Duration::from_secs(60)),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let window = store
        .claim_outbox(
            OutboxClaim::new("w")
                .limit(1)
                .window(64)
                .lease(policy.lease),
        )
        .await
        .unwrap();
    assert_eq!(window.len(), 3, "one window of the key's three messages");
    let expires = window[0].lease_expires_at;
    let settles: Mutex<Vec<(i64, Delivery)>> = Mutex::default();
    let settled = |m: &ClaimedMessage, d: &Delivery| {
        settles.lock().unwrap().push((m.lease.id, d.clone()));
    };
    // Without a bound of its own the loop waits for the destination forever, long after another
    // relay could have taken the key over.
    tokio::time::timeout(
        Duration::from_secs(30),
        run_key(&store, &Hanging, &policy, window, &|| false, &settled),
    )
    .await
    .expect("the delivery loop gave up on the window");

    let now = quark_history::Clock::now(&*store.config().clock);
    let mut rows = store.list_outbox(OutboxFilter::default()).await.unwrap();
    rows.sort_by_key(|r| r.id);
    // Settled, not abandoned to lease expiry: no row still carries the lease.
    assert!(
        rows.iter().all(|r| r.lease_owner.is_none()),
        "the window was settled: {rows:?}"
    );
    assert!(
        now < expires,
        "settled at {now:?}, after the lease ended at {expires:?}"
    );
    // The head failed an attempt (so a destination that always hangs kills it in the end); the
    // rest was handed back untried.
    assert_eq!(rows[0].attempts, 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease")),
        "{:?}",
        rows[0].last_error
    );
    assert!(
        rows[0].next_attempt_at > now,
        "the head waits for its backoff"
    );
    assert_eq!(
        rows[1..].iter().map(|r| r.attempts).collect::<Vec<_>>(),
        [0, 0]
    );
    let settles = settles.into_inner().unwrap();
    assert!(
        matches!(settles.as_slice(), [(id, Delivery::Retry { .. })] if *id == rows[0].id),
        "{settles:?}"
    );
}

#[tokio::test]
async fn news_for_an_instance_is_delivered_once_however_often_it_is_resent() {
    use quark_history::shards::Crossing;
    use quark_history::{
        HistoryEvent, HistoryRange, IdReusePolicy, NewInstance, ParentRef, Payload,
    };

    use super::deliver_to_instance;

    let store = SqliteStore::in_memory().await.unwrap();
    let parent = NewInstance::new("p", "parent", Payload::json(&()).unwrap());
    store
        .create_instance(parent, IdReusePolicy::ReturnExisting)
        .await
        .unwrap();
    let mut child = NewInstance::new("p:order", "child", Payload::json(&1).unwrap());
    child.parent = Some(ParentRef {
        instance_id: "p".into(),
        command: 3,
    });
    let end = HistoryEvent::ChildCompleted {
        command: 3,
        output: Payload::json(&2).unwrap(),
    };
    store
        .send(vec![
            Crossing::Start(child).message("p:order").unwrap(),
            Crossing::Events(vec![end.clone()]).message("p").unwrap(),
            OutboxMessage::new(
                Destination::Instance {
                    instance: "q".into(),
                },
                b"not news".to_vec(),
            ),
        ])
        .await
        .unwrap();
    let claimed = store
        .claim_outbox(OutboxClaim::new("w").limit(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // Each delivered twice, as a relay that lost its lease after delivering would.
    for m in &claimed[..2] {
        let Destination::Instance { instance } = &m.destination else {
            panic!("{:?}", m.destination)
        };
        for _ in 0..2 {
            deliver_to_instance(&store, instance, m).await.unwrap();
        }
    }
    let child = store.get_instance("p:order").await.unwrap().unwrap();
    assert_eq!(child.parent_id.as_deref(), Some("p"));
    let ends: Vec<HistoryEvent> = store
        .read_history("p", HistoryRange::All)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| matches!(e, HistoryEvent::ChildCompleted { .. }))
        .collect();
    assert_eq!(
        ends,
        [end],
        "the child's end is in its parent's history once"
    );
    // A payload that is not news can never be delivered: the message dies, saying why.
    let said = deliver_to_instance(&store, "q", &claimed[2])
        .await
        .unwrap_err();
    assert!(
        matches!(&said, DeliveryError::Permanent(m) if m.contains("must carry a start or events")),
        "{said}"
    );
}
