//! The outbox relay on real workers with real destinations: callbacks relayed by two workers at
//! once (each message once, each key in order), the NATS JetStream server on this machine (its
//! stream drops a re-send), and signals to a running orchestration that arrive once however often
//! the relay re-sends them. Webhooks are in `webhook`.
//!
//! NATS: `QUARK_TEST_NATS_URL` (default `127.0.0.1:4222`). Unreachable NATS skips those tests with
//! a notice, unless `CI` or `QUARK_REQUIRE_NATS` is set, which makes it a failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{
    Destination, HistoryEvent, HistoryRange, MessageState, OutboxFilter, OutboxMessage,
    OutboxRecord, Store,
};
use quark_worker::{DeliveryError, OutboxRelay, RunningWorker, Worker};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};

quark_history::backend_tests!(
    it_relays_each_message_once_and_each_key_in_order_across_two_workers,
    it_claims_other_keys_while_one_key_is_still_being_delivered,
    it_hands_a_window_back_before_its_lease_runs_out,
    it_publishes_to_jetstream_which_drops_a_resend_by_message_id,
    it_publishes_a_keys_windows_to_jetstream_in_order,
    it_signals_a_running_orchestration_once_even_when_the_relay_resends,
    it_redelivers_with_the_same_idempotency_key_after_a_relay_dies_mid_delivery,
);

pub(crate) fn relay() -> OutboxRelay {
    OutboxRelay::new()
        .poll_interval(Duration::from_millis(20))
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .max_attempts(5)
        .timeout(Duration::from_secs(5))
}

pub(crate) async fn start(
    t: &TestStore,
    id: &str,
    relay: OutboxRelay,
    registry: Option<Registry>,
) -> RunningWorker {
    let mut builder = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .outbox(relay);
    if let Some(registry) = registry {
        builder = builder.workflows(registry);
    }
    builder.build().unwrap().start().await.unwrap()
}

pub(crate) async fn messages(store: &dyn Store, state: MessageState) -> Vec<OutboxRecord> {
    store
        .list_outbox(OutboxFilter::default().state(state).limit(10_000))
        .await
        .unwrap()
}

pub(crate) async fn message(store: &dyn Store, id: i64) -> OutboxRecord {
    store
        .list_outbox(OutboxFilter::default().limit(10_000))
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id == id)
        .expect("the message exists")
}

/// Makes a sent message pending again: what a relay that crashed after delivering, before it
/// marked the message sent, leaves behind (once its lease expired).
pub(crate) async fn unsend(t: &TestStore, id: i64) {
    let n = t
        .execute(&format!(
            "UPDATE outbox SET state = 'pending', sent_at = NULL, lease_owner = NULL WHERE id = {id}"
        ))
        .await;
    assert_eq!(n, 1);
}

// -- callbacks, two workers -----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    worker: String,
    key: String,
    n: u32,
    idempotency_key: String,
}

async fn it_relays_each_message_once_and_each_key_in_order_across_two_workers(t: &TestStore) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = |worker: &'static str| {
        let seen = Arc::clone(&seen);
        relay().batch(4).callback("sink", move |m| {
            let seen = Arc::clone(&seen);
            async move {
                let n: u32 = serde_json::from_slice(&m.payload).unwrap();
                seen.lock().unwrap().push(Seen {
                    worker: worker.to_string(),
                    key: m.ordering_key.clone(),
                    n,
                    idempotency_key: m.idempotency_key.clone(),
                });
                // Let the other worker run while this one holds the key.
                tokio::task::yield_now().await;
                Ok(())
            }
        })
    };
    let a = start(t, "relay-a", sink("a"), None).await;
    let b = start(t, "relay-b", sink("b"), None).await;
    const KEYS: u32 = 20;
    const PER_KEY: u32 = 50;
    for n in 0..PER_KEY {
        let batch = (0..KEYS)
            .map(|k| {
                OutboxMessage::json(Destination::callback("sink"), &n)
                    .unwrap()
                    .ordering_key(format!("k{k}"))
            })
            .collect();
        t.store.send(batch).await.unwrap();
    }
    let total = (KEYS * PER_KEY) as usize;
    eventually("every message is sent", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == total
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), total, "each message delivered once");
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for s in &seen {
        *per_id.entry(&s.idempotency_key).or_default() += 1;
    }
    assert!(per_id.values().all(|n| *n == 1));
    let mut per_key: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for s in &seen {
        per_key.entry(&s.key).or_default().push(s.n);
    }
    for (key, order) in per_key {
        assert_eq!(order, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
    let counted = || a.worker().metrics().outbox_sent + b.worker().metrics().outbox_sent;
    // A worker counts a delivery right after its settle commits.
    eventually("the workers count every delivery", async || {
        counted() as usize >= total
    })
    .await;
    assert_eq!(counted() as usize, total);
    let workers: std::collections::BTreeSet<&str> =
        seen.iter().map(|s| s.worker.as_str()).collect();
    eprintln!("delivered by {workers:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A relay claims again as soon as a key's run ends, not once its whole batch has ended: a key
/// whose delivery hangs holds one slot, not the relay.
async fn it_claims_other_keys_while_one_key_is_still_being_delivered(t: &TestStore) {
    let (release, released) = tokio::sync::watch::channel(false);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = {
        let seen = Arc::clone(&seen);
        // A delivery timeout beyond `eventually`'s 60 s: the slow key must not free its slot by
        // timing out.
        relay()
            .timeout(Duration::from_secs(120))
            .lease(Duration::from_secs(300))
            .batch(2)
            .callback("sink", move |m| {
                let seen = Arc::clone(&seen);
                let mut released = released.clone();
                async move {
                    if m.ordering_key == "slow" {
                        let _ = released.wait_for(|r| *r).await;
                    }
                    seen.lock().unwrap().push(m.ordering_key.clone());
                    Ok(())
                }
            })
    };
    let worker = start(t, "relay-slots", sink, None).await;
    let message = |key: &str| {
        OutboxMessage::new(Destination::callback("sink"), b"x".to_vec()).ordering_key(key)
    };
    t.store
        .send(vec![message("slow"), message("quick")])
        .await
        .unwrap();
    let delivered = |key: &str| seen.lock().unwrap().iter().any(|k| k == key);
    eventually("the quick key is delivered", async || delivered("quick")).await;
    // Written after the first claim, while the slow key still holds its slot.
    t.store.send(vec![message("late")]).await.unwrap();
    eventually(
        "the late key is delivered while the slow one hangs",
        async || delivered("late"),
    )
    .await;
    assert!(!delivered("slow"));
    release.send(true).unwrap();
    eventually("every message is sent", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == 3
    })
    .await;
    worker.shutdown().await;
}

async fn it_hands_a_window_back_before_its_lease_runs_out(t: &TestStore) {
    // Each delivery takes 10 s of the store's clock; a window of 8 is leased for 30 s and each
    // delivery may take up to 5: the relay must stop after the third and hand the rest back.
    let deliveries: Arc<Mutex<Vec<(u32, quark_history::Timestamp, quark_history::Timestamp)>>> =
        Arc::default();
    let sink = {
        let (deliveries, clock) = (Arc::clone(&deliveries), t.clock.clone());
        relay()
            .timeout(Duration::from_secs(5))
            .lease(Duration::from_secs(30))
            .window(8)
            .batch(1)
            .callback("tick", move |m| {
                let (deliveries, clock) = (Arc::clone(&deliveries), clock.clone());
                async move {
                    let n: u32 = serde_json::from_slice(&m.payload).unwrap();
                    deliveries.lock().unwrap().push((
                        n,
                        quark_history::Clock::now(&clock),
                        m.lease_expires_at,
                    ));
                    clock.advance(Duration::from_secs(10));
                    Ok(())
                }
            })
    };
    t.store
        .send(
            (0..8u32)
                .map(|n| {
                    OutboxMessage::json(Destination::callback("tick"), &n)
                        .unwrap()
                        .ordering_key("k")
                })
                .collect(),
        )
        .await
        .unwrap();
    let worker = start(t, "relay-lease", sink, None).await;
    eventually("every message is sent", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == 8
    })
    .await;
    worker.shutdown().await;
    let deliveries = deliveries.lock().unwrap().clone();
    assert_eq!(
        deliveries.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>(),
        "each once, in order"
    );
    for (n, at, expires) in &deliveries {
        assert!(
            *at + Duration::from_secs(5) < *expires,
            "message {n} was delivered at {at:?} with its lease ending at {expires:?}"
        );
    }
    let leases: std::collections::BTreeSet<_> = deliveries.iter().map(|d| d.2).collect();
    assert!(
        leases.len() >= 3,
        "the window was cut and the rest claimed again: {leases:?}"
    );
}

async fn it_redelivers_with_the_same_idempotency_key_after_a_relay_dies_mid_delivery(
    t: &TestStore,
) {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = |worker: &'static str, hang: bool| {
        let seen = Arc::clone(&seen);
        relay().callback("sink", move |m| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push((worker.to_string(), m.idempotency_key.clone()));
                if hang {
                    // Delivered, but the relay dies before it can mark the message sent.
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let doomed = start(t, "relay-doomed", sink("doomed", true), None).await;
    let ids = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::callback("sink"), &1).unwrap(),
        ])
        .await
        .unwrap();
    eventually("the first relay delivers", async || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    drop(doomed);
    let survivor = start(t, "relay-survivor", sink("survivor", false), None).await;
    // The dead relay's lease runs out (on the store's clock), and the survivor takes over. The
    // clock stops once the survivor has delivered: moved on while it settles, it would run out the
    // survivor's own lease too, and the survivor would take the message again.
    t.advance_until(
        Duration::from_secs(5),
        "the survivor delivers",
        async || seen.lock().unwrap().len() >= 2,
    )
    .await;
    eventually("the message is sent", async || {
        message(t.store.as_ref(), ids[0]).await.state == MessageState::Sent
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "doomed");
    assert_eq!(seen[1].0, "survivor");
    assert_eq!(
        seen[0].1, seen[1].1,
        "the same idempotency key on the re-delivery"
    );
    assert_eq!(message(t.store.as_ref(), ids[0]).await.attempts, 2);
    survivor.shutdown().await;
}

// -- NATS JetStream -------------------------------------------------------------------------------

fn nats_url() -> String {
    std::env::var("QUARK_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

fn nats_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("QUARK_REQUIRE_NATS").is_some()
}

/// A JetStream context on the test's NATS server, or `None` (the test skips) when it is
/// unreachable and not required.
pub(crate) async fn jetstream() -> Option<async_nats::jetstream::Context> {
    let connected = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(nats_url()))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match connected {
        Ok(client) => Some(async_nats::jetstream::new(client)),
        Err(e) if nats_required() => panic!(
            "NATS is required (CI or QUARK_REQUIRE_NATS is set) but {} is unreachable: {e}",
            nats_url()
        ),
        Err(e) => {
            eprintln!(
                "quark: NATS tests SKIPPED: cannot connect to {}: {e}",
                nats_url()
            );
            None
        }
    }
}

/// A memory stream of the test's own on `{subject}.>`, deleted however the test ends.
pub(crate) struct Stream {
    name: String,
    js: async_nats::jetstream::Context,
}

impl Stream {
    pub(crate) async fn create(js: &async_nats::jetstream::Context, subject: &str) -> Stream {
        let name = format!("QUARK_TEST_{}", uuid::Uuid::now_v7().simple());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the test stream");
        Stream {
            name,
            js: js.clone(),
        }
    }

    /// How many messages the stream holds.
    pub(crate) async fn stored(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.name).await.expect("the stream");
        stream
            .info()
            .await
            .expect("the stream's info")
            .state
            .messages
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime and a connection of its own: Drop cannot await, and this may run while a
        // test panics, with the test's runtime going away.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let delete = async {
                    let client = async_nats::connect(nats_url()).await.ok()?;
                    async_nats::jetstream::new(client)
                        .delete_stream(&name)
                        .await
                        .ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), delete).await;
            });
        })
        .join();
    }
}

async fn it_publishes_to_jetstream_which_drops_a_resend_by_message_id(t: &TestStore) {
    let Some(js) = jetstream().await else { return };
    let subject = format!("quarktest.{}", uuid::Uuid::now_v7().simple());
    let stream = Stream::create(&js, &subject).await;

    let worker = start(t, "relay-nats", relay().nats(nats_url()), None).await;
    let ids = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::nats(format!("{subject}.orders")), &1).unwrap(),
        ])
        .await
        .unwrap();
    eventually("the message is published", async || {
        message(t.store.as_ref(), ids[0]).await.state == MessageState::Sent
    })
    .await;
    assert_eq!(stream.stored().await, 1);

    // The relay sends it again (as after a crash before it was marked sent): same Nats-Msg-Id,
    // and JetStream acks without storing it twice.
    unsend(t, ids[0]).await;
    eventually("the message is published again", async || {
        let m = message(t.store.as_ref(), ids[0]).await;
        m.state == MessageState::Sent && m.attempts == 2
    })
    .await;
    assert_eq!(stream.stored().await, 1, "the re-send was deduplicated");

    // A different message is stored: the count above is not blind.
    t.store
        .send(vec![
            OutboxMessage::json(Destination::nats(format!("{subject}.orders")), &2).unwrap(),
        ])
        .await
        .unwrap();
    eventually("the second message is published", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == 2
    })
    .await;
    assert_eq!(stream.stored().await, 2);
    worker.shutdown().await;
    drop(stream);
}

async fn it_publishes_a_keys_windows_to_jetstream_in_order(t: &TestStore) {
    let Some(js) = jetstream().await else { return };
    let subject = format!("quarktest.{}", uuid::Uuid::now_v7().simple());
    let stream = Stream::create(&js, &subject).await;
    // One key, windows of 8: 50 messages go out 8 at a time, each window published without
    // waiting for each ack, and must land in the stream in the order they were written.
    let worker = start(
        t,
        "relay-nats-order",
        relay().nats(nats_url()).window(8),
        None,
    )
    .await;
    let ids = t
        .store
        .send(
            (0..50)
                .map(|n| {
                    OutboxMessage::json(Destination::nats(format!("{subject}.orders")), &n)
                        .unwrap()
                        .ordering_key("orders")
                })
                .collect(),
        )
        .await
        .unwrap();
    eventually("every message is published", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == 50
    })
    .await;
    assert_eq!(stream.stored().await, 50);
    let handle = js.get_stream(&stream.name).await.unwrap();
    for seq in 1..=50u64 {
        let m = handle.get_raw_message(seq).await.unwrap();
        let n: u64 = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(n, seq - 1, "stream order");
        let id = m.headers.get("Nats-Msg-Id").unwrap().to_string();
        assert_eq!(
            id,
            message(t.store.as_ref(), ids[n as usize])
                .await
                .idempotency_key
        );
    }
    for id in &ids {
        assert_eq!(message(t.store.as_ref(), *id).await.attempts, 1);
    }
    worker.shutdown().await;
    drop(stream);
}

// -- signals --------------------------------------------------------------------------------------

/// Waits to be paid, then to be told it is done; returns the amount.
#[orchestration]
async fn awaits_payment(
    ctx: OrchestrationContext,
    _order: String,
) -> Result<u32, OrchestrationError> {
    let paid: u32 = ctx.wait_for_signal("paid").await?;
    let _: bool = ctx.wait_for_signal("done").await?;
    Ok(paid)
}

async fn it_signals_a_running_orchestration_once_even_when_the_relay_resends(t: &TestStore) {
    let worker = start(
        t,
        "relay-signal",
        relay(),
        Some(Registry::new().register(awaits_payment)),
    )
    .await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = awaits_payment::start(&client, "order-9", "o9".to_string())
        .await
        .unwrap();
    let ids = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::signal("order-9", "paid"), &42).unwrap(),
            OutboxMessage::json(Destination::signal("no-such-order", "paid"), &1).unwrap(),
        ])
        .await
        .unwrap();
    eventually("the signal is delivered", async || {
        message(t.store.as_ref(), ids[0]).await.state == MessageState::Sent
    })
    .await;
    unsend(t, ids[0]).await;
    eventually("the signal is delivered again", async || {
        let m = message(t.store.as_ref(), ids[0]).await;
        m.state == MessageState::Sent && m.attempts == 2
    })
    .await;
    let paid = t
        .store
        .read_history("order-9", HistoryRange::All)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(&e.event, HistoryEvent::SignalReceived { name, .. } if name == "paid"))
        .count();
    assert_eq!(paid, 1, "the orchestration got the signal once");
    eventually("a signal to an unknown instance is dead", async || {
        message(t.store.as_ref(), ids[1]).await.state == MessageState::Dead
    })
    .await;
    assert!(
        message(t.store.as_ref(), ids[1])
            .await
            .last_error
            .unwrap()
            .contains("no-such-order")
    );
    handle.signal("done", &true).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 42);
    worker.shutdown().await;
}

#[test]
fn delivery_errors_say_what_went_wrong() {
    assert_eq!(DeliveryError::retry("503").to_string(), "503");
}
