//! Outbox deliveries: a claimed message, delivered and settled, then the next message of its key
//! that the store hands over, until the key has nothing due. The worker's relay and the test
//! environment both deliver through [`run_key`]; they differ only in their [`Destinations`].

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{
    ClaimedMessage, CodecTag, Commit, Delivery, Error, Expected, HistoryEvent, NewTask, Payload,
    Store, Timestamp,
};

use super::backoff;

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Worth another attempt later (a timeout, a 5xx, a broker that is down).
    Retry(String),
    /// Will never succeed (a 4xx, an unknown instance, a malformed message): the message dies.
    Permanent(String),
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        DeliveryError::Retry(message.into())
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError::Permanent(message.into())
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Retry(m) | DeliveryError::Permanent(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeliveryError {}

/// Where a driver can deliver messages.
pub trait Destinations: Send + Sync {
    /// Delivers one message to its destination (the caller bounds it by the policy's timeout).
    fn deliver<'a>(
        &'a self,
        store: &'a dyn Store,
        message: &'a ClaimedMessage,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// How deliveries are retried.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeliveryPolicy {
    /// Attempts before a message is dead.
    pub max_attempts: u32,
    /// The retry backoff: `initial * 2^(attempt - 1)` up to `max`, with jitter.
    pub backoff: (Duration, Duration),
    /// The time one delivery may take.
    pub timeout: Duration,
    /// How long the key's next message is leased when the store hands it over.
    pub lease: Duration,
}

impl DeliveryPolicy {
    /// A policy.
    pub fn new(
        max_attempts: u32,
        backoff: (Duration, Duration),
        timeout: Duration,
        lease: Duration,
    ) -> Self {
        DeliveryPolicy {
            max_attempts,
            backoff,
            timeout,
            lease,
        }
    }

    /// What a delivery's outcome means for its message: sent (and lease the key's next), retried
    /// later, or dead.
    pub fn settle(
        &self,
        outcome: Result<(), DeliveryError>,
        attempt: u32,
        now: Timestamp,
    ) -> Delivery {
        match outcome {
            Ok(()) => Delivery::Sent {
                next_lease: Some(self.lease),
            },
            Err(DeliveryError::Permanent(e)) => Delivery::Dead { error: e },
            Err(DeliveryError::Retry(e)) if attempt >= self.max_attempts => Delivery::Dead {
                error: format!("{e} (gave up after {attempt} attempts)"),
            },
            Err(DeliveryError::Retry(e)) => {
                let (initial, max) = self.backoff;
                let at = now + backoff::delay(attempt, initial, max);
                Delivery::Retry { at, error: Some(e) }
            }
        }
    }
}

/// Delivers `m`, then the messages of its key that the store hands over after it, until the key
/// has nothing due or `stopping` says so (the message in hand is then handed back, due now).
/// `settled` is told of each settle that the store accepted, with the message it settled.
pub async fn run_key(
    store: &dyn Store,
    destinations: &dyn Destinations,
    policy: &DeliveryPolicy,
    mut m: ClaimedMessage,
    stopping: &(dyn Fn() -> bool + Send + Sync),
    settled: &(dyn Fn(&ClaimedMessage, &Delivery) + Send + Sync),
) {
    loop {
        if stopping() {
            // Hand it back, due now and without an error. (Its claim still counts as an attempt:
            // attempts count claims.)
            let at = store.config().clock.now();
            let _ = store
                .settle_outbox(&m.lease, Delivery::Retry { at, error: None })
                .await;
            return;
        }
        let outcome =
            match tokio::time::timeout(policy.timeout, destinations.deliver(store, &m)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::retry(format!(
                    "delivery timed out after {:?}",
                    policy.timeout
                ))),
            };
        let attempt = m.lease.attempt;
        let delivery = policy.settle(outcome, attempt, store.config().clock.now());
        match &delivery {
            Delivery::Dead { error } => tracing::warn!(
                id = m.lease.id, destination = %m.destination, %error, "outbox message is dead"
            ),
            Delivery::Retry { error, .. } => tracing::debug!(
                id = m.lease.id, destination = %m.destination, attempt, error = ?error,
                "outbox delivery failed; retrying later"
            ),
            _ => {}
        }
        match store.settle_outbox(&m.lease, delivery.clone()).await {
            Ok(next) => {
                settled(&m, &delivery);
                match next {
                    Some(next) => m = next,
                    None => return,
                }
            }
            Err(Error::LeaseLost { .. }) => {
                // Another relay took it over after our lease expired; it re-delivers with the
                // same idempotency key.
                tracing::warn!(id = m.lease.id, "outbox lease lost during delivery");
                return;
            }
            Err(e) => {
                tracing::warn!(id = m.lease.id, error = %e, "settling an outbox message failed; its lease will expire");
                return;
            }
        }
    }
}

/// The inbox id a relayed signal is recorded under.
pub fn signal_inbox_id(message: &ClaimedMessage) -> String {
    format!("outbox:{}", message.idempotency_key)
}

/// Delivers `message` to orchestration `instance` as signal `name`.
///
/// One commit appends `SignalReceived`, enqueues the instance's orchestration task (as
/// `Client::signal` does) and records [`signal_inbox_id`] in the inbox. A re-send of the same
/// message finds the id recorded, writes nothing, and counts as delivered: the orchestration sees
/// the signal once.
pub async fn deliver_signal(
    store: &dyn Store,
    instance: &str,
    name: &str,
    message: &ClaimedMessage,
) -> Result<(), DeliveryError> {
    if serde_json::from_slice::<serde_json::Value>(&message.payload).is_err() {
        return Err(DeliveryError::permanent(
            "a signal's payload must be JSON (use OutboxMessage::json)",
        ));
    }
    let record = match store.get_instance(instance).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return Err(DeliveryError::permanent(format!(
                "no orchestration instance `{instance}`"
            )));
        }
        Err(e) => return Err(DeliveryError::retry(e.to_string())),
    };
    let event = HistoryEvent::SignalReceived {
        name: name.to_string(),
        payload: Payload::from_bytes(CodecTag::Json, message.payload.clone()),
    };
    let commit = Commit::new()
        .append(instance, Expected::Any, [event])
        .enqueue(NewTask::orchestration(&record.queue, instance))
        .receive(signal_inbox_id(message));
    match store.commit(commit).await {
        Ok(_) => Ok(()),
        // Delivered before (a re-send after a crash or a lost lease).
        Err(Error::AlreadyReceived { .. }) => Ok(()),
        Err(e @ (Error::InstanceClosed { .. } | Error::InstanceNotFound { .. })) => {
            Err(DeliveryError::permanent(e.to_string()))
        }
        Err(e) => Err(DeliveryError::retry(e.to_string())),
    }
}
