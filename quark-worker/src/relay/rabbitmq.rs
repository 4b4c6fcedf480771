//! RabbitMQ delivery on `lapin` (AMQP 0-9-1): one connection and one channel per relay, in
//! publisher-confirm mode, made on the first `amqp:` message and made again after an error.
//!
//! Each message is published `mandatory` and persistent (delivery mode 2) to its exchange with its
//! routing key, its headers as AMQP headers and its idempotency key as `message_id`, and counts as
//! delivered once the broker confirms it. RabbitMQ does not deduplicate by `message_id`: a re-send
//! after a crash arrives twice, with the same `message_id`, for the consumer to recognise (the
//! inbox does that). A message that no queue takes (returned as unroutable) or that the broker
//! refuses (a nack, an exchange that does not exist) is retried.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use quark_history::ClaimedMessage;
use tokio::sync::Mutex;

use super::DeliveryError;

/// The RabbitMQ connection of one relay.
pub(crate) struct RabbitMq {
    url: String,
    /// The confirming channel, and the connection it lives on (kept open with it).
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl RabbitMq {
    pub(crate) fn new(url: String) -> Self {
        RabbitMq {
            url,
            channel: Mutex::new(None),
        }
    }

    /// The channel, connecting if there is none or the last one failed.
    async fn channel(&self) -> Result<Channel, DeliveryError> {
        let mut slot = self.channel.lock().await;
        if let Some((connection, channel)) = slot.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let unreachable = |e: lapin::Error| {
            DeliveryError::retry(format!("cannot connect to RabbitMQ at {}: {e}", self.url))
        };
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(unreachable)?;
        let channel = connection.create_channel().await.map_err(unreachable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unreachable)?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes `m` to `exchange` with `routing_key` and waits for the broker's confirmation.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        m: &ClaimedMessage,
    ) -> Result<(), DeliveryError> {
        let channel = self.channel().await?;
        let mut headers = FieldTable::default();
        for (name, value) in &m.headers {
            headers.insert(
                ShortString::from(name.as_str()),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        let content_type = m
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map_or("application/octet-stream", |(_, v)| v.as_str());
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(m.idempotency_key.as_str()))
            .with_content_type(ShortString::from(content_type))
            .with_delivery_mode(2)
            .with_headers(headers);
        let target = format!("RabbitMQ exchange `{exchange}`, routing key `{routing_key}`");
        let refused = |e: lapin::Error| DeliveryError::retry(format!("{target}: {e}"));
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.payload,
                properties,
            )
            .await
            .map_err(refused)?;
        match confirm.await.map_err(refused)? {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(returned)) => Err(DeliveryError::retry(format!(
                "{target}: unroutable, no queue is bound ({} {})",
                returned.reply_code, returned.reply_text
            ))),
            lapin::Confirmation::Nack(_) => Err(DeliveryError::retry(format!(
                "{target}: the broker refused the message (nack)"
            ))),
            lapin::Confirmation::NotRequested => Err(DeliveryError::retry(format!(
                "{target}: the channel is not in confirm mode"
            ))),
        }
    }
}
