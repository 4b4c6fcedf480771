//! The transactional outbox: the producer side of messaging.
//!
//! An [`OutboxMessage`] is written in the same transaction as the state change that caused it
//! ([`Commit::send`](crate::Commit::send), [`Store::send_tx`](crate::Store::send_tx) inside a
//! caller's own transaction on either database, or [`OutboxStore::send`](crate::OutboxStore::send)), so it exists if and only if that change
//! committed. A relay (in `quark-worker`) claims pending messages under a lease, delivers them and
//! settles them ([`OutboxStore::settle_outbox`](crate::OutboxStore::settle_outbox)): sent, retried later, or
//! dead (listable, re-drivable). Messages with the same ordering key are delivered one after
//! another: only the *head* of a key (its pending message with the smallest id) can be claimed, so
//! message N+1 is never handed out before N is marked sent (or dead). Every message carries an
//! idempotency key (a UUID v7 unless given), the same on every re-send. The consumer's side is the
//! [`inbox`](crate::inbox).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::store::StoreConfig;

/// The queue name that outbox wake-ups are announced on (with [`TaskKind::Outbox`](crate::TaskKind)).
pub const OUTBOX_WAKE_QUEUE: &str = "outbox";

/// Where a message goes. Stored as text: `signal:<instance>/<name>`, `http:<url>`,
/// `nats:<subject>`, `amqp:<exchange>/<routing key>`, `redis:<stream>`, `callback:<name>`,
/// `instance:<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Destination {
    /// A signal to a Quark orchestration instance (`ctx.wait_for_signal(name)`). The payload must
    /// be JSON. Delivered once per idempotency key, however often it is re-sent.
    Signal {
        /// The instance id.
        instance: String,
        /// The signal name (no `/`).
        name: String,
    },
    /// An HTTP webhook: a `POST` of the payload with the idempotency key in `Idempotency-Key`.
    Http {
        /// The URL (`http://` or `https://`).
        url: String,
    },
    /// A NATS JetStream subject, published with `Nats-Msg-Id` set to the idempotency key so that
    /// the stream deduplicates re-sends within its duplicate window.
    Nats {
        /// The subject.
        subject: String,
    },
    /// A RabbitMQ (AMQP 0-9-1) exchange, published with publisher confirms and the idempotency
    /// key as `message_id` (RabbitMQ does not deduplicate: consumers do, by that id). Relayed by
    /// workers built with `quark-worker`'s `rabbitmq` feature.
    Amqp {
        /// The exchange (empty: the default exchange, which routes to the queue named by the
        /// routing key).
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A Redis stream, appended with `XADD` once per idempotency key within the relay's
    /// deduplication window. Relayed by workers built with `quark-worker`'s `redis` feature.
    RedisStream {
        /// The stream's key.
        stream: String,
    },
    /// A Rust callback registered on the relaying workers under this name.
    Callback {
        /// The name.
        name: String,
    },
    /// News for a Quark instance on another shard: a child to start there, or events for it (a
    /// child's end for its parent, a notice for a child). The payload is a
    /// [`Crossing`](crate::shards::Crossing); the relay delivers it into the instance's shard,
    /// once per idempotency key.
    Instance {
        /// The instance id.
        instance: String,
    },
}

impl Destination {
    /// A signal `name` to `instance`.
    pub fn signal(instance: impl Into<String>, name: impl Into<String>) -> Self {
        Destination::Signal {
            instance: instance.into(),
            name: name.into(),
        }
    }

    /// A webhook at `url`.
    pub fn http(url: impl Into<String>) -> Self {
        Destination::Http { url: url.into() }
    }

    /// A NATS subject.
    pub fn nats(subject: impl Into<String>) -> Self {
        Destination::Nats {
            subject: subject.into(),
        }
    }

    /// A RabbitMQ exchange and routing key (`""` as the exchange: straight to the queue named
    /// `routing_key`).
    pub fn amqp(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Destination::Amqp {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }

    /// A Redis stream.
    pub fn redis_stream(stream: impl Into<String>) -> Self {
        Destination::RedisStream {
            stream: stream.into(),
        }
    }

    /// A callback registered under `name`.
    pub fn callback(name: impl Into<String>) -> Self {
        Destination::Callback { name: name.into() }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Signal { instance, name } => write!(f, "signal:{instance}/{name}"),
            Destination::Http { url } => write!(f, "http:{url}"),
            Destination::Nats { subject } => write!(f, "nats:{subject}"),
            Destination::Amqp {
                exchange,
                routing_key,
            } => write!(f, "amqp:{exchange}/{routing_key}"),
            Destination::RedisStream { stream } => write!(f, "redis:{stream}"),
            Destination::Callback { name } => write!(f, "callback:{name}"),
            Destination::Instance { instance } => write!(f, "instance:{instance}"),
        }
    }
}

impl FromStr for Destination {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: &str| {
            Error::Invalid(format!(
                "destination `{s}`: {why}; expected signal:<instance>/<name>, http:<url>, nats:<subject>, amqp:<exchange>/<routing key>, redis:<stream>, callback:<name> or instance:<instance>"
            ))
        };
        let (kind, target) = s.split_once(':').ok_or_else(|| invalid("no kind"))?;
        if target.is_empty() {
            return Err(invalid("empty target"));
        }
        match kind {
            "signal" => {
                let (instance, name) = target
                    .rsplit_once('/')
                    .ok_or_else(|| invalid("a signal needs <instance>/<name>"))?;
                if instance.is_empty() || name.is_empty() {
                    return Err(invalid("a signal needs <instance>/<name>"));
                }
                Ok(Destination::signal(instance, name))
            }
            "http" => Ok(Destination::http(target)),
            "nats" => {
                if target.contains(char::is_whitespace) {
                    return Err(invalid("a NATS subject has no whitespace"));
                }
                Ok(Destination::nats(target))
            }
            "amqp" => {
                let (exchange, routing_key) = target
                    .split_once('/')
                    .ok_or_else(|| invalid("AMQP needs <exchange>/<routing key> (an empty exchange is the default one)"))?;
                if routing_key.is_empty() && exchange.is_empty() {
                    return Err(invalid("AMQP needs an exchange or a routing key"));
                }
                Ok(Destination::amqp(exchange, routing_key))
            }
            "redis" => Ok(Destination::redis_stream(target)),
            "callback" => Ok(Destination::callback(target)),
            "instance" => Ok(Destination::Instance {
                instance: target.to_string(),
            }),
            _ => Err(invalid("unknown kind")),
        }
    }
}

/// A message to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Where it goes.
    pub destination: Destination,
    /// Messages with the same key are delivered in the order they were written (`None`: the
    /// destination's text, so one destination's messages arrive in order).
    pub ordering_key: Option<String>,
    /// The key a receiver deduplicates by (`None`: a new UUID v7). Unique across the outbox.
    pub idempotency_key: Option<String>,
    /// The body.
    pub payload: Vec<u8>,
    /// Small metadata, passed on as headers where the destination has them.
    pub headers: BTreeMap<String, String>,
}

impl OutboxMessage {
    /// A message with raw bytes.
    pub fn new(destination: Destination, payload: impl Into<Vec<u8>>) -> Self {
        OutboxMessage {
            destination,
            ordering_key: None,
            idempotency_key: None,
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    /// A message with `value` encoded as JSON (and a `content-type: application/json` header).
    pub fn json<T: Serialize + ?Sized>(destination: Destination, value: &T) -> Result<Self> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::Encode(crate::CodecError::Json(e)))?;
        Ok(OutboxMessage::new(destination, bytes).header("content-type", "application/json"))
    }

    /// Sets the ordering key.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// A message ready to insert: defaults resolved, checked.
#[derive(Debug, Clone)]
pub(crate) struct MessageRow {
    pub(crate) destination: String,
    pub(crate) ordering_key: String,
    pub(crate) idempotency_key: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: String,
}

/// Checks messages and resolves their defaults, before any of them is written.
pub(crate) fn prepare(config: &StoreConfig, messages: &[OutboxMessage]) -> Result<Vec<MessageRow>> {
    messages
        .iter()
        .map(|m| {
            crate::rows::check_size(config, m.payload.len())?;
            for (name, value) in &m.headers {
                let bad = |c: char| c == '\r' || c == '\n' || c == '\0';
                if name.is_empty() || name.contains(bad) || name.contains(':') || value.contains(bad)
                {
                    return Err(Error::Invalid(format!(
                        "header `{}`: names must be non-empty without `:`, and neither may contain line breaks",
                        name.escape_debug()
                    )));
                }
            }
            let destination = m.destination.to_string();
            // Round trip, so that what is stored can be read back.
            destination.parse::<Destination>()?;
            if m.idempotency_key.as_deref() == Some("") || m.ordering_key.as_deref() == Some("") {
                return Err(Error::Invalid(
                    "an idempotency or ordering key may not be empty".into(),
                ));
            }
            Ok(MessageRow {
                ordering_key: m.ordering_key.clone().unwrap_or_else(|| destination.clone()),
                destination,
                idempotency_key: m
                    .idempotency_key
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                payload: m.payload.clone(),
                headers: serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".into()),
            })
        })
        .collect()
}

/// The state of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageState {
    /// Waiting to be delivered (or being delivered, or waiting for a retry).
    Pending,
    /// Delivered; kept until the retention passes.
    Sent,
    /// Gave up (too many attempts, or refused for good); can be re-driven.
    Dead,
}

impl MessageState {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Sent => "sent",
            MessageState::Dead => "dead",
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(MessageState::Pending),
            "sent" => Ok(MessageState::Sent),
            "dead" => Ok(MessageState::Dead),
            _ => Err(Error::Invalid(format!(
                "unknown message state `{s}` (pending, sent, dead)"
            ))),
        }
    }
}

/// An outbox message as stored, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its id (the order of writing).
    pub id: i64,
    /// Where it goes.
    pub destination: Destination,
    /// Its ordering key.
    pub ordering_key: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its state.
    pub state: MessageState,
    /// How many delivery attempts it has had: counted when it is leased as the first message of
    /// a window, and for a message behind it in the window, when its delivery is settled.
    pub attempts: u32,
    /// When it is next due (while it is leased: the lease expiry).
    pub next_attempt_at: Timestamp,
    /// The worker holding its key, if it is the first message of a window being delivered (the
    /// messages behind it in the window are held through it and show none).
    pub lease_owner: Option<String>,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// When it was written.
    pub created_at: Timestamp,
    /// When it was delivered.
    pub sent_at: Option<Timestamp>,
}

/// Which messages to list.
#[derive(Debug, Clone)]
pub struct OutboxFilter {
    /// Only this state (`None`: all).
    pub state: Option<MessageState>,
    /// Only this ordering key.
    pub ordering_key: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Default for OutboxFilter {
    fn default() -> Self {
        OutboxFilter {
            state: None,
            ordering_key: None,
            limit: 100,
        }
    }
}

impl OutboxFilter {
    /// Only messages in `state`.
    pub fn state(mut self, state: MessageState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only messages of `key`.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// At most `limit` messages.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}

/// Proof of holding a message for delivery. The attempt is the fencing token: a relay whose lease
/// expired and whose message was claimed again cannot settle it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboxLease {
    /// The message id.
    pub id: i64,
    /// The attempt this lease is for.
    pub attempt: u32,
    /// The relaying worker.
    pub worker: String,
}

/// A message claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    /// The lease to settle it with.
    pub lease: OutboxLease,
    /// Where it goes.
    pub destination: Destination,
    /// Its ordering key.
    pub ordering_key: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// When it was written.
    pub created_at: Timestamp,
    /// Until when the lease holds.
    pub lease_expires_at: Timestamp,
}

/// A request for messages to relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboxClaim {
    /// The relaying worker.
    pub worker: String,
    /// At most this many ordering keys, each from its head (its pending message with the smallest
    /// id).
    pub limit: u32,
    /// At most this many messages of each key: the head and the due messages right behind it, in
    /// order (a *window*; see [`OutboxStore::settle_outbox_window`](crate::OutboxStore)).
    pub window: u32,
    /// At most this many payload bytes in each window, the head's own excepted: a window takes
    /// a message only if the payloads before it in the window are under this, so a head larger
    /// than it still goes alone.
    pub window_bytes: u64,
    /// How long the lease holds. Longer than a delivery may take.
    pub lease: Duration,
}

impl OutboxClaim {
    /// A claim by `worker`: 64 keys, one message each, 60 s lease.
    pub fn new(worker: impl Into<String>) -> Self {
        OutboxClaim {
            worker: worker.into(),
            limit: 64,
            window: 1,
            window_bytes: UNBOUNDED_BYTES,
            lease: Duration::from_secs(60),
        }
    }

    /// Sets how many keys one claim takes.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Sets how many messages of each key one claim takes (at least 1).
    pub fn window(mut self, window: u32) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets how many payload bytes a window may hold (see [`OutboxClaim::window_bytes`]; no bound
    /// by default).
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.window_bytes = bytes;
        self
    }

    /// Sets the lease length.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Delivered: mark it sent. With `next_lease`, the next message of its ordering key, if it is
    /// due, is leased to the same worker for that long and returned, saving a claim.
    Sent {
        /// Lease the key's next message for this long.
        next_lease: Option<Duration>,
    },
    /// Try again at `at` (its key waits). `error: None` hands it back without blame.
    Retry {
        /// When it is due again.
        at: Timestamp,
        /// Why this attempt failed.
        error: Option<String>,
    },
    /// Give up: it becomes dead, and the next message of its key may go.
    Dead {
        /// Why.
        error: String,
    },
}

/// How the delivery of a window ended: the messages of one ordering key that one claim or one
/// hand-over leased together, delivered in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowOutcome {
    /// The first `sent` messages were delivered.
    pub sent: usize,
    /// What happened to the message after them, if one was tried and failed (a `Retry` or a
    /// `Dead`). The messages after it were not tried: they are handed back, due now, their claim
    /// not counted as an attempt.
    pub failed: Option<Delivery>,
    /// When every message was sent: lease the key's next window to the same worker (saving a
    /// claim).
    pub next: Option<NextWindow>,
}

/// A bound no window reaches: windows bounded by their number of messages only.
pub(crate) const UNBOUNDED_BYTES: u64 = i64::MAX as u64;

/// The key's next window, leased as a window is settled: at most `messages` messages and
/// `bytes` payload bytes (as [`OutboxClaim::window_bytes`]), held for `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NextWindow {
    /// At most this many messages (at least 1).
    pub messages: u32,
    /// At most this many payload bytes, the first message's own excepted.
    pub bytes: u64,
    /// How long the lease holds.
    pub lease: Duration,
}

impl NextWindow {
    /// A window of at most `messages` messages, held for `lease`, with no bound on its bytes.
    pub fn new(messages: u32, lease: Duration) -> Self {
        NextWindow {
            messages: messages.max(1),
            bytes: UNBOUNDED_BYTES,
            lease,
        }
    }

    /// Bounds the window's payload bytes.
    pub fn bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }
}

impl WindowOutcome {
    /// All `n` messages delivered; with `next`, the key's next window is leased.
    pub fn all_sent(n: usize, next: Option<NextWindow>) -> Self {
        WindowOutcome {
            sent: n,
            failed: None,
            next,
        }
    }

    /// The first `sent` delivered, the next one failed as `failed` says, the rest handed back.
    pub fn failed_at(sent: usize, failed: Delivery) -> Self {
        WindowOutcome {
            sent,
            failed: Some(failed),
            next: None,
        }
    }

    /// The first `sent` delivered, the rest handed back untried (the relay is stopping).
    pub fn handed_back(sent: usize) -> Self {
        WindowOutcome {
            sent,
            failed: None,
            next: None,
        }
    }
}

/// Decodes stored headers (an empty map if they were edited into something else).
pub(crate) fn decode_headers(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_round_trip_through_their_text() {
        for d in [
            Destination::signal("order-1", "paid"),
            Destination::signal("a/b", "paid"),
            Destination::http("http://127.0.0.1:8080/hook?x=1"),
            Destination::nats("orders.created"),
            Destination::amqp("orders", "order.created/eu"),
            Destination::amqp("", "work-queue"),
            Destination::redis_stream("orders:events"),
            Destination::callback("audit"),
        ] {
            assert_eq!(d.to_string().parse::<Destination>().unwrap(), d);
        }
        for bad in [
            "", "signal:", "signal:x", "smtp:a@b", "nats:a b", "http:", "amqp:x", "amqp:/",
            "redis:",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn it_fills_in_keys_and_refuses_header_injection() {
        let config = StoreConfig::default();
        let rows = prepare(
            &config,
            &[OutboxMessage::new(Destination::nats("a"), b"x".to_vec())],
        )
        .unwrap();
        assert_eq!(rows[0].ordering_key, "nats:a");
        assert!(uuid::Uuid::parse_str(&rows[0].idempotency_key).is_ok());
        let bad =
            OutboxMessage::new(Destination::nats("a"), b"x".to_vec()).header("x", "1\r\nY: 2");
        assert!(prepare(&config, &[bad]).is_err());
    }
}
