//! The outbox relay to the RabbitMQ and Redis servers on this machine: publisher confirms with the
//! idempotency key as `message_id`, a message no queue takes retried until one does; a Redis
//! stream that takes a re-send once.
//!
//! Servers: `QUARK_TEST_AMQP_URL` (default `amqp://127.0.0.1:5672/%2f`) and
//! `QUARK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). An unreachable server skips its
//! tests with a notice, unless `CI`, `QUARK_REQUIRE_RABBITMQ` or `QUARK_REQUIRE_REDIS` is set,
//! which makes it a failure.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use quark_history::testing::{TestStore, eventually};
use quark_history::{Destination, MessageState, OutboxMessage};

use super::outbox::{message, relay, start, unsend};

quark_history::backend_tests!(
    it_publishes_to_rabbitmq_with_confirms_and_the_key_as_message_id,
    it_adds_to_a_redis_stream_once_per_idempotency_key,
);

fn required(var: &str) -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os(var).is_some()
}

fn amqp_url() -> String {
    std::env::var("QUARK_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

fn redis_url() -> String {
    std::env::var("QUARK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn rabbitmq() -> Option<lapin::Channel> {
    let connected = async {
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
        connection.create_channel().await
    };
    match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(channel)) => Some(channel),
        failed if required("QUARK_REQUIRE_RABBITMQ") => panic!(
            "RabbitMQ is required (CI or QUARK_REQUIRE_RABBITMQ is set) but {} is unreachable: {failed:?}",
            amqp_url()
        ),
        failed => {
            eprintln!("quark: RabbitMQ tests SKIPPED: {}: {failed:?}", amqp_url());
            None
        }
    }
}

async fn it_publishes_to_rabbitmq_with_confirms_and_the_key_as_message_id(t: &TestStore) {
    let Some(channel) = rabbitmq().await else {
        return;
    };
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (exchange, queue) = ("amq.direct", format!("quark-test-{tag}"));
    let worker = start(
        t,
        "relay-amqp",
        relay().amqp(amqp_url()).max_attempts(50),
        None,
    )
    .await;
    // No queue is bound to the routing key yet: the broker returns the message, and it waits.
    let id = t
        .store
        .send(vec![
            OutboxMessage::json(
                Destination::amqp(exchange, &queue),
                &serde_json::json!({"n": 1}),
            )
            .unwrap()
            .header("x-trace", "t-7"),
        ])
        .await
        .unwrap()[0];
    eventually("the unroutable message records why", async || {
        message(t.store.as_ref(), id).await.last_error.is_some()
    })
    .await;
    let waiting = message(t.store.as_ref(), id).await;
    assert_eq!(waiting.state, MessageState::Pending, "{waiting:?}");
    assert!(
        waiting
            .last_error
            .as_deref()
            .unwrap()
            .contains("unroutable"),
        "{waiting:?}"
    );

    // A queue is bound: the retry goes through.
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    t.advance_until(
        Duration::from_millis(500),
        "the message is confirmed",
        async || message(t.store.as_ref(), id).await.state == MessageState::Sent,
    )
    .await;
    // Sent again, as after a crash before it was marked sent: RabbitMQ takes it twice, with the
    // same message_id for the consumer to recognise.
    unsend(t, id).await;
    eventually("the message is confirmed again", async || {
        let m = message(t.store.as_ref(), id).await;
        m.state == MessageState::Sent && m.attempts >= 2
    })
    .await;
    let sent = message(t.store.as_ref(), id).await;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "quark-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer is open")
            .expect("a delivery");
        assert_eq!(delivery.data, br#"{"n":1}"#);
        let properties = &delivery.properties;
        assert_eq!(
            properties.message_id().as_ref().map(|s| s.as_str()),
            Some(sent.idempotency_key.as_str())
        );
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        let trace = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-trace").cloned());
        assert_eq!(
            trace,
            Some(lapin::types::AMQPValue::LongString("t-7".into()))
        );
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    worker.shutdown().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let connected = async {
        redis::Client::open(redis_url())?
            .get_multiplexed_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(connection)) => Some(connection),
        failed if required("QUARK_REQUIRE_REDIS") => panic!(
            "Redis is required (CI or QUARK_REQUIRE_REDIS is set) but {} is unreachable: {failed:?}",
            redis_url()
        ),
        failed => {
            eprintln!("quark: Redis tests SKIPPED: {}: {failed:?}", redis_url());
            None
        }
    }
}

async fn it_adds_to_a_redis_stream_once_per_idempotency_key(t: &TestStore) {
    let Some(mut redis) = redis().await else {
        return;
    };
    let stream = format!("quark-test:{}", uuid::Uuid::now_v7().simple());
    let worker = start(t, "relay-redis", relay().redis(redis_url()), None).await;
    let id = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::redis_stream(&stream), &1)
                .unwrap()
                .header("x-trace", "t-8"),
        ])
        .await
        .unwrap()[0];
    eventually("the entry is added", async || {
        message(t.store.as_ref(), id).await.state == MessageState::Sent
    })
    .await;
    let len = async |redis: &mut redis::aio::MultiplexedConnection| -> u64 {
        redis::cmd("XLEN")
            .arg(&stream)
            .query_async(redis)
            .await
            .unwrap()
    };
    assert_eq!(len(&mut redis).await, 1);
    // Sent again: the stream remembers the key and adds nothing.
    unsend(t, id).await;
    eventually("the re-send is settled", async || {
        let m = message(t.store.as_ref(), id).await;
        m.state == MessageState::Sent && m.attempts == 2
    })
    .await;
    assert_eq!(len(&mut redis).await, 1, "the re-send was not added");
    // Another message is: the count above is not blind.
    t.store
        .send(vec![
            OutboxMessage::json(Destination::redis_stream(&stream), &2).unwrap(),
        ])
        .await
        .unwrap();
    eventually("the second entry is added", async || {
        len(&mut redis).await == 2
    })
    .await;
    let sent = message(t.store.as_ref(), id).await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let first = &entries.ids[0];
    let field = |name: &str| -> String {
        redis::from_redis_value_ref(first.map.get(name).expect(name)).unwrap()
    };
    assert_eq!(field("idempotency-key"), sent.idempotency_key);
    assert_eq!(field("payload"), "1");
    assert_eq!(field("header:x-trace"), "t-8");
    worker.shutdown().await;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{{{stream}}}:quark-sent:{}", sent.idempotency_key))
        .query_async(&mut redis)
        .await
        .unwrap();
}
