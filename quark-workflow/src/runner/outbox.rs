//! Outbox deliveries: a claimed window of one key's messages, delivered in order and settled in one
//! transaction, then the next window of the key that the store hands over in that transaction,
//! until the key has nothing due. The worker's relay and the test environment both deliver through
//! [`run_key`]; they differ only in their [`Destinations`].

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::shards::Crossing;
use quark_history::{
    ClaimedMessage, CodecTag, Commit, Delivery, Error, Expected, HistoryEvent, IdReusePolicy,
    NewTask, NextWindow, OutboxLease, Payload, Store, Timestamp, WindowOutcome,
};

use crate::backoff;

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

/// The outcomes of a window's messages, in order: every one `Ok` but the last, which may have
/// failed. Shorter than the window when a failure (or a stop) ended it early.
pub type WindowResults = Vec<Result<(), DeliveryError>>;

/// Where a driver can deliver messages.
pub trait Destinations: Send + Sync {
    /// Delivers one message to its destination (the caller bounds it by the policy's timeout).
    fn deliver<'a>(
        &'a self,
        store: &'a dyn Store,
        message: &'a ClaimedMessage,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Delivers a whole window with several messages in flight at once, where the destination
    /// keeps them in order by itself (one connection to a broker that takes them in the order
    /// they were sent), each bounded by `timeout`; `None` (the default) has them delivered one
    /// after the other. The caller stops waiting one `timeout` before the window's lease runs out
    /// and counts what has not ended by then as a failed attempt.
    fn pipeline<'a>(
        &'a self,
        store: &'a dyn Store,
        window: &'a [ClaimedMessage],
        timeout: Duration,
    ) -> Option<BoxFuture<'a, WindowResults>> {
        let _ = (store, window, timeout);
        None
    }
}

/// The payload bytes a window holds by default before its last message (which may add up to the
/// store's payload limit): a window takes a message only while the payloads before it are under
/// this, and a first message always.
pub const DEFAULT_WINDOW_BYTES: u64 = 1024 * 1024;

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
    /// How long the key's next window is leased when the store hands it over.
    pub lease: Duration,
    /// The most messages of a key the store hands over at once (see [`OutboxClaim::window`]).
    ///
    /// [`OutboxClaim::window`]: quark_history::OutboxClaim::window
    pub window: u32,
    /// The most payload bytes of a window the store hands over (see
    /// [`OutboxClaim::window_bytes`]).
    ///
    /// [`OutboxClaim::window_bytes`]: quark_history::OutboxClaim::window_bytes
    pub window_bytes: u64,
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
            window: 64,
            window_bytes: DEFAULT_WINDOW_BYTES,
        }
    }

    /// Sets how many messages of a key are handed over at once (default 64).
    pub fn window(mut self, window: u32) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets how many payload bytes a window handed over may hold (default
    /// [`DEFAULT_WINDOW_BYTES`]; a first message larger than that still goes, alone).
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.window_bytes = bytes;
        self
    }

    /// What a delivery's outcome means for its message: sent (and lease the key's next), retried
    /// later, or dead.
    pub fn settle(
        &self,
        outcome: Result<(), DeliveryError>,
        lease: &OutboxLease,
        now: Timestamp,
    ) -> Delivery {
        let attempt = lease.attempt;
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
                let salt = lease.id as u64 ^ now.as_micros() as u64;
                let at = now + backoff::delay(attempt, initial, max, salt);
                Delivery::Retry { at, error: Some(e) }
            }
        }
    }
}

/// Groups claimed messages into their keys' windows, each in id order, the keys in the order of
/// their first message.
pub fn windows(claimed: Vec<ClaimedMessage>) -> Vec<Vec<ClaimedMessage>> {
    let mut out: Vec<Vec<ClaimedMessage>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut claimed = claimed;
    claimed.sort_by_key(|m| m.lease.id);
    for m in claimed {
        let i = *index.entry(m.ordering_key.clone()).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[i].push(m);
    }
    out
}

/// Delivers a window of one key's messages in order, settles it in one transaction, and goes on
/// with the key's next window that the store hands over, until the key has nothing due or
/// `stopping` says so (what is in hand is then handed back, due now). `settled` is told of each
/// message's settle, with the message, once the store accepted it.
pub async fn run_key(
    store: &dyn Store,
    destinations: &dyn Destinations,
    policy: &DeliveryPolicy,
    mut window: Vec<ClaimedMessage>,
    stopping: &(dyn Fn() -> bool + Send + Sync),
    settled: &(dyn Fn(&ClaimedMessage, &Delivery) + Send + Sync),
) {
    while !window.is_empty() {
        let results = match destinations.pipeline(store, &window, policy.timeout) {
            Some(pipelined) if !stopping() => within_lease(store, policy, &window, pipelined).await,
            _ => deliver_in_turn(store, destinations, policy, &window, stopping).await,
        };
        let sent = results.iter().take_while(|r| r.is_ok()).count();
        let now = store.config().clock.now();
        let (outcome, failed) = match results.into_iter().nth(sent) {
            Some(Err(e)) => {
                let m = &window[sent];
                let delivery = policy.settle(Err(e), &m.lease, now);
                match &delivery {
                    Delivery::Dead { error } => tracing::warn!(
                        id = m.lease.id, destination = %m.destination, %error, "outbox message is dead"
                    ),
                    Delivery::Retry { error, .. } => tracing::debug!(
                        id = m.lease.id, destination = %m.destination, attempt = m.lease.attempt,
                        error = ?error, "outbox delivery failed; retrying later"
                    ),
                    _ => {}
                }
                (
                    WindowOutcome::failed_at(sent, delivery.clone()),
                    Some(delivery),
                )
            }
            _ if sent == window.len() && !stopping() => (
                WindowOutcome::all_sent(
                    sent,
                    Some(NextWindow::new(policy.window, policy.lease).bytes(policy.window_bytes)),
                ),
                None,
            ),
            // Stopped, or every message sent as the worker stops: hand the rest back.
            _ => (WindowOutcome::handed_back(sent), None),
        };
        match store.settle_outbox_window(&window, outcome).await {
            Ok(next) => {
                for m in &window[..sent] {
                    settled(m, &Delivery::Sent { next_lease: None });
                }
                if let Some(failed) = &failed {
                    settled(&window[sent], failed);
                }
                window = next;
            }
            Err(Error::LeaseLost { .. }) => {
                // Another relay took the key over after our lease expired; it re-delivers with
                // the same idempotency keys.
                tracing::warn!(key = %window[0].ordering_key, "outbox lease lost during delivery");
                return;
            }
            Err(e) => {
                tracing::warn!(key = %window[0].ordering_key, error = %e, "settling an outbox window failed; its lease will expire");
                return;
            }
        }
    }
}

/// Awaits a window's pipelined deliveries until one policy timeout before the window's lease runs
/// out, whatever the destination does, so that the window is settled while the key is still ours.
/// Deliveries that have not ended by then count as a failed attempt of the window's first message
/// (retried later, and dead after its attempts, like any failure); the rest is handed back. Some
/// of them may have reached the destination: they are sent again with the same idempotency keys.
async fn within_lease(
    store: &dyn Store,
    policy: &DeliveryPolicy,
    window: &[ClaimedMessage],
    pipelined: BoxFuture<'_, WindowResults>,
) -> WindowResults {
    let now = store.config().clock.now();
    let left = window[0]
        .lease_expires_at
        .since(now)
        .saturating_sub(policy.timeout);
    match tokio::time::timeout(left, pipelined).await {
        Ok(results) => results,
        Err(_) => vec![Err(DeliveryError::retry(format!(
            "the window's deliveries had not ended {left:?} after they started, one delivery \
             timeout ({:?}) before the window's lease would run out",
            policy.timeout
        )))],
    }
}

/// Delivers a window's messages one after the other, each bounded by the policy's timeout, until
/// one fails, `stopping` says so, or the window's lease would run out during the next delivery:
/// the rest is then handed back untried, before another relay may take the key over.
async fn deliver_in_turn(
    store: &dyn Store,
    destinations: &dyn Destinations,
    policy: &DeliveryPolicy,
    window: &[ClaimedMessage],
    stopping: &(dyn Fn() -> bool + Send + Sync),
) -> WindowResults {
    let mut results = Vec::with_capacity(window.len());
    for m in window {
        if stopping() || store.config().clock.now() + policy.timeout >= m.lease_expires_at {
            break;
        }
        let result =
            match tokio::time::timeout(policy.timeout, destinations.deliver(store, m)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::retry(format!(
                    "delivery timed out after {:?}",
                    policy.timeout
                ))),
            };
        let failed = result.is_err();
        results.push(result);
        if failed {
            break;
        }
    }
    results
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
        .enqueue(wake(&record.queue, instance, message))
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

/// The turn that relayed `message` wakes `instance` on `queue` for: it continues the trace of the
/// commit that sent the message.
fn wake(queue: &str, instance: &str, message: &ClaimedMessage) -> NewTask {
    let mut turn = NewTask::orchestration(queue, instance);
    turn.traceparent = message
        .headers
        .get(crate::trace_context::TRACEPARENT)
        .filter(|t| quark_history::is_storable_traceparent(t))
        .cloned();
    turn
}

/// Delivers `message` (a [`Crossing`]) to `instance`, in the store of the instance's shard.
///
/// A start creates the child unless it exists (its id is the parent's choice, the same on every
/// re-send). An entity command's activity task is enqueued, with the message recorded in the
/// inbox in the same commit. Events go in as [`deliver_signal`] puts a signal: one commit appends them, enqueues
/// the instance's orchestration task and records the message in the inbox, so a re-send writes
/// nothing. Events for an instance that has ended are dropped, as they are within a shard (a
/// child's end reaching a parent that was cancelled meanwhile).
pub async fn deliver_to_instance(
    store: &dyn Store,
    instance: &str,
    message: &ClaimedMessage,
) -> Result<(), DeliveryError> {
    let crossing =
        Crossing::decode(&message.payload).map_err(|e| DeliveryError::permanent(e.to_string()))?;
    let retry = |e: Error| DeliveryError::retry(e.to_string());
    match crossing {
        Crossing::Activity { .. } => {
            let task = crossing.task().expect("an activity crossing has a task");
            let commit = Commit::new()
                .enqueue(task)
                .receive(signal_inbox_id(message));
            match store.commit(commit).await {
                Ok(_) | Err(Error::AlreadyReceived { .. }) => Ok(()),
                Err(e) => Err(retry(e)),
            }
        }
        Crossing::Start(child) => {
            if child.id != instance {
                return Err(DeliveryError::permanent(format!(
                    "a start of `{}` sent to `{instance}`",
                    child.id
                )));
            }
            store
                .create_instance(child, IdReusePolicy::ReturnExisting)
                .await
                .map_err(retry)?;
            Ok(())
        }
        Crossing::Events(events) => {
            let record = match store.get_instance(instance).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    return Err(DeliveryError::permanent(format!(
                        "no orchestration instance `{instance}`"
                    )));
                }
                Err(e) => return Err(retry(e)),
            };
            if record.status.is_closed() {
                tracing::warn!(%instance, status = %record.status, "dropping news for an instance that has ended");
                return Ok(());
            }
            let commit = Commit::new()
                .append(instance, Expected::Any, events)
                .enqueue(wake(&record.queue, instance, message))
                .receive(signal_inbox_id(message));
            match store.commit(commit).await {
                Ok(_) | Err(Error::AlreadyReceived { .. }) => Ok(()),
                Err(Error::InstanceClosed { .. }) => {
                    tracing::warn!(%instance, "dropping news for an instance that has ended");
                    Ok(())
                }
                Err(e @ Error::InstanceNotFound { .. }) => {
                    Err(DeliveryError::permanent(e.to_string()))
                }
                Err(e) => Err(retry(e)),
            }
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
