//! The outbox relay: every worker delivers pending outbox messages to their destinations.
//!
//! A relay claims a batch of messages, each the head of a different ordering key, under a lease,
//! and delivers them concurrently; after each delivery the message is marked sent and the next
//! message of its key (if due) is leased in the same transaction, so a busy key streams without
//! a claim per message and is never held by two relays at once. A failed delivery is retried with
//! exponential backoff and jitter (its key waits), and after `max_attempts` the message is dead:
//! listed by `quark outbox list --state dead`, re-driven by `quark outbox retry`. A relay that dies
//! mid-delivery leaves its lease to expire; the message is then delivered again with the same
//! idempotency key, which is what each destination deduplicates by.
//!
//! Destinations: a signal to a Quark orchestration (`quark_workflow::runner::outbox::deliver_signal`,
//! which the test environment uses too), news for an instance on another shard (a child's start,
//! its end, a notice: `deliver_to_instance`, into that instance's shard), an HTTP webhook (`webhook`: `http://` and `https://`,
//! signed), NATS JetStream (`nats`), and callbacks registered by name.

pub(crate) mod callback;
pub(crate) mod nats;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;
#[cfg(feature = "redis")]
pub(crate) mod redis_streams;
pub(crate) mod webhook;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{ClaimedMessage, Delivery, Destination, OutboxClaim, Store, TaskKind, Wake};
use quark_workflow::runner::outbox::{
    DeliveryPolicy, Destinations, WindowResults, deliver_signal, deliver_to_instance, run_key,
    windows,
};
use tracing::Instrument;

pub use callback::Callback;
pub use quark_workflow::runner::outbox::DeliveryError;

use crate::shared::Shared;

/// How a worker relays the outbox. On by default; see [`WorkerBuilder::outbox`].
///
/// [`WorkerBuilder::outbox`]: crate::WorkerBuilder::outbox
#[derive(Clone)]
pub struct OutboxRelay {
    pub(crate) enabled: bool,
    pub(crate) batch: u32,
    pub(crate) window: u32,
    pub(crate) window_bytes: u64,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) timeout: Duration,
    pub(crate) nats: nats::NatsOptions,
    pub(crate) webhook: webhook::WebhookOptions,
    pub(crate) amqp_url: String,
    pub(crate) redis_url: String,
    pub(crate) redis_window: Duration,
    pub(crate) callbacks: HashMap<String, Callback>,
    pub(crate) sent_retention: Duration,
    pub(crate) inbox_window: Duration,
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("enabled", &self.enabled)
            .field("batch", &self.batch)
            .field("window", &self.window)
            .field("window_bytes", &self.window_bytes)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("nats_url", &self.nats.url)
            .field("nats_auth", &self.nats.auth)
            .field("webhook_signed", &self.webhook.secret.is_some())
            .field("webhook_roots", &self.webhook.roots.len())
            .field("webhook_proxy", &self.webhook.proxy)
            .field("redis_window", &self.redis_window)
            .field("callbacks", &self.callbacks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for OutboxRelay {
    fn default() -> Self {
        OutboxRelay {
            enabled: true,
            batch: 64,
            window: 64,
            window_bytes: quark_workflow::runner::outbox::DEFAULT_WINDOW_BYTES,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_attempts: 12,
            backoff: (Duration::from_secs(1), Duration::from_secs(300)),
            timeout: Duration::from_secs(10),
            nats: nats::NatsOptions::default(),
            webhook: webhook::WebhookOptions::default(),
            amqp_url: "amqp://127.0.0.1:5672/%2f".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_window: Duration::from_secs(24 * 3600),
            callbacks: HashMap::new(),
            sent_retention: Duration::from_secs(24 * 3600),
            inbox_window: quark_history::DEFAULT_INBOX_WINDOW,
        }
    }
}

impl OutboxRelay {
    /// The defaults: on, batches of 64, 60 s lease, 1 s polling fallback, 12 attempts with backoff
    /// from 1 s to 5 min, 10 s per delivery, NATS at `127.0.0.1:4222`, sent messages kept 24 h,
    /// inbox ids 7 days.
    pub fn new() -> Self {
        OutboxRelay::default()
    }

    /// A worker that does not relay (another does). Its maintenance still purges.
    pub fn disabled() -> Self {
        OutboxRelay {
            enabled: false,
            ..OutboxRelay::default()
        }
    }

    /// The most ordering keys one relay delivers at once (one claim takes up to this many).
    pub fn batch(mut self, n: u32) -> Self {
        self.batch = n;
        self
    }

    /// The most messages of one key that a claim or a hand-over takes at once (default 64): they
    /// are delivered in order and settled in one transaction. NATS publishes a window's messages
    /// without waiting for each ack; other destinations take them one after the other. A window
    /// is held in memory, payloads included, up to [`window_bytes`](Self::window_bytes).
    pub fn window(mut self, n: u32) -> Self {
        self.window = n;
        self
    }

    /// The payload bytes of one window before its last message (default 1 MiB): a window stops
    /// before the message whose predecessors in it reach this, and a first message larger than it
    /// goes alone. With [`batch`](Self::batch) keys in flight, a relay holds at most `batch` x
    /// (this + the store's payload limit) of payloads in memory.
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.window_bytes = bytes;
        self
    }

    /// How long a claimed message is held. Must exceed the delivery timeout: a message whose
    /// lease runs out is delivered again by another relay.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The polling fallback when no wake-up arrives.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Attempts before a message is dead (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The retry backoff: `initial * 2^(attempt - 1)` up to `max`, with jitter.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// The time one delivery may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The NATS server for `nats:` destinations: `host:port`, `nats://host:port`, or
    /// `tls://host:port` for TLS; several, separated by commas, for a cluster. Credentials in the
    /// URL (`nats://user:password@host`) are used too.
    pub fn nats(mut self, url: impl Into<String>) -> Self {
        self.nats.url = url.into();
        self
    }

    /// Authenticates to NATS with a user and password.
    pub fn nats_user_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.nats.auth = nats::NatsAuth::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticates to NATS with a token.
    pub fn nats_token(mut self, token: impl Into<String>) -> Self {
        self.nats.auth = nats::NatsAuth::Token(token.into());
        self
    }

    /// Authenticates to NATS with a `.creds` file (a user JWT and its NKey seed), read when the
    /// relay first connects.
    pub fn nats_credentials_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.nats.auth = nats::NatsAuth::CredentialsFile(path.into());
        self
    }

    /// Refuses to talk to NATS without TLS (a `tls://` URL requires it too).
    pub fn nats_require_tls(mut self, required: bool) -> Self {
        self.nats.require_tls = required;
        self
    }

    /// Trusts the certificate authorities in this PEM file for NATS, besides the public web's.
    pub fn nats_root_certificate(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.nats.roots.push(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to NATS, for servers that verify
    /// clients.
    pub fn nats_client_certificate(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.nats.client_certificate = Some((certificate.into(), key.into()));
        self
    }

    /// Signs every webhook request with this secret, so that receivers can check that Quark sent
    /// it: `webhook-timestamp` and `webhook-signature` headers as in the Standard Webhooks
    /// specification (`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{timestamp}.{body}`).
    /// A secret of the form `whsec_<base64>` is decoded; any other string is used as its bytes.
    pub fn webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook.secret = Some(secret.into());
        self
    }

    /// Trusts this certificate authority (PEM) for `https://` webhooks, besides the system's.
    pub fn webhook_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.webhook.roots.push(pem.into());
        self
    }

    /// Sends webhook requests through this proxy (`http://host:port`, `socks5://...` not
    /// supported). Without it, the `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` environment
    /// variables apply.
    pub fn webhook_proxy(mut self, url: impl Into<String>) -> Self {
        self.webhook.proxy = Some(url.into());
        self
    }

    /// The RabbitMQ broker for `amqp:` destinations (default `amqp://127.0.0.1:5672/%2f`; `amqps://`
    /// for TLS; user and password in the URL). Needs the `rabbitmq` feature.
    pub fn amqp(mut self, url: impl Into<String>) -> Self {
        self.amqp_url = url.into();
        self
    }

    /// The Redis server for `redis:` destinations (default `redis://127.0.0.1:6379`; `rediss://`
    /// for TLS; credentials in the URL). Needs the `redis` feature.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// How long a Redis stream remembers an idempotency key, so that a re-send is not added twice
    /// (default 24 h). It must exceed the longest time between two attempts of a message: the
    /// backoff's maximum plus the lease.
    pub fn redis_dedup_window(mut self, window: Duration) -> Self {
        self.redis_window = window;
        self
    }

    /// Registers a callback for `callback:<name>` destinations.
    pub fn callback<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(ClaimedMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), DeliveryError>> + Send + 'static,
    {
        self.callbacks.insert(name.into(), Callback::new(f));
        self
    }

    /// How long sent messages are kept before the maintenance pass deletes them.
    pub fn sent_retention(mut self, retention: Duration) -> Self {
        self.sent_retention = retention;
        self
    }

    /// How long inbox ids are kept (the deduplication window of relayed signals).
    pub fn inbox_window(mut self, window: Duration) -> Self {
        self.inbox_window = window;
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.window == 0 || self.max_attempts == 0 {
            return Err(
                "the outbox relay needs a batch, a window and max attempts of at least 1".into(),
            );
        }
        if self.lease <= self.timeout * 2 {
            return Err(format!(
                "the outbox lease ({:?}) must be more than twice the delivery timeout ({:?})",
                self.lease, self.timeout
            ));
        }
        Ok(())
    }
}

/// A running relay's state.
pub(crate) struct Relay {
    config: OutboxRelay,
    /// The deployment's shards, if sharded: a signal goes to its instance's shard.
    shards: Option<quark_history::shards::Shards>,
    webhooks: webhook::Webhooks,
    nats: nats::Nats,
    #[cfg(feature = "rabbitmq")]
    rabbitmq: rabbitmq::RabbitMq,
    #[cfg(feature = "redis")]
    redis: redis_streams::RedisStreams,
}

impl Relay {
    /// The relay of these settings, its clients built (an invalid certificate, secret or proxy is
    /// refused here, when the worker is built).
    pub(crate) fn new(config: OutboxRelay) -> Result<Self, String> {
        Ok(Relay {
            shards: None,
            webhooks: webhook::Webhooks::new(&config.webhook, config.timeout)?,
            nats: nats::Nats::new(config.nats.clone()),
            #[cfg(feature = "rabbitmq")]
            rabbitmq: rabbitmq::RabbitMq::new(config.amqp_url.clone()),
            #[cfg(feature = "redis")]
            redis: redis_streams::RedisStreams::new(config.redis_url.clone(), config.redis_window),
            config,
        })
    }

    /// This relay, delivering signals into the shard of their instance.
    pub(crate) fn with_shards(mut self, shards: quark_history::shards::Shards) -> Self {
        self.shards = Some(shards);
        self
    }
    /// The store of the shard `instance` lives on (`here` if the worker is not sharded); a
    /// shard map that cannot be read is a delivery to retry.
    async fn shard_of<'a>(
        &'a self,
        here: &'a dyn Store,
        instance: &str,
    ) -> Result<&'a dyn Store, DeliveryError> {
        match &self.shards {
            Some(shards) => match shards.locate_store(instance).await {
                Ok(store) => Ok(&**store),
                Err(e) => Err(DeliveryError::retry(e.to_string())),
            },
            None => Ok(here),
        }
    }

    pub(crate) fn config(&self) -> &OutboxRelay {
        &self.config
    }

    /// Delivers `window`, then the windows of its key that the store hands over after it, until
    /// the key has nothing due or the worker stops: the runner's delivery loop, with this worker's
    /// destinations.
    async fn run_key(&self, shared: &Shared, window: Vec<ClaimedMessage>) {
        let c = &self.config;
        let policy = DeliveryPolicy::new(c.max_attempts, c.backoff, c.timeout, c.lease)
            .window(c.window)
            .window_bytes(c.window_bytes);
        let span = tracing::info_span!("outbox", key = %window[0].ordering_key);
        let stopping = || shared.is_stopping();
        let settled = |m: &ClaimedMessage, delivery: &Delivery| {
            let now = shared.store.config().clock.now();
            shared.metrics.outbox(m, delivery, now);
        };
        let destinations = WorkerDestinations {
            relay: self,
            worker: &shared.settings.id,
        };
        run_key(
            shared.store.as_ref(),
            &destinations,
            &policy,
            window,
            &stopping,
            &settled,
        )
        .instrument(span)
        .await;
    }
}

/// Where this worker delivers: signals to the store's instances, its HTTP and NATS clients, and
/// the callbacks registered on it.
struct WorkerDestinations<'a> {
    relay: &'a Relay,
    worker: &'a str,
}

impl Destinations for WorkerDestinations<'_> {
    fn pipeline<'a>(
        &'a self,
        _store: &'a dyn Store,
        window: &'a [ClaimedMessage],
        timeout: Duration,
    ) -> Option<BoxFuture<'a, WindowResults>> {
        // One connection takes a window's publishes in order; other destinations go one by one.
        let subjects: Option<Vec<&str>> = window
            .iter()
            .map(|m| match &m.destination {
                Destination::Nats { subject } => Some(subject.as_str()),
                _ => None,
            })
            .collect();
        let subjects = subjects.filter(|s| s.len() > 1)?;
        Some(Box::pin(
            self.relay.nats.publish_window(subjects, window, timeout),
        ))
    }

    fn deliver<'a>(
        &'a self,
        store: &'a dyn Store,
        m: &'a ClaimedMessage,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            match &m.destination {
                Destination::Signal { instance, name } => {
                    let store = self.relay.shard_of(store, instance).await?;
                    deliver_signal(store, instance, name, m).await
                }
                Destination::Instance { instance } => {
                    let store = self.relay.shard_of(store, instance).await?;
                    deliver_to_instance(store, instance, m).await
                }
                Destination::Http { url } => {
                    let now = store.config().clock.now();
                    self.relay.webhooks.post(url, m, now).await
                }
                Destination::Nats { subject } => self.relay.nats.publish(subject, m).await,
                #[cfg(feature = "rabbitmq")]
                Destination::Amqp {
                    exchange,
                    routing_key,
                } => self.relay.rabbitmq.publish(exchange, routing_key, m).await,
                #[cfg(feature = "redis")]
                Destination::RedisStream { stream } => self.relay.redis.add(stream, m).await,
                Destination::Callback { name } => match self.relay.config.callbacks.get(name) {
                    Some(cb) => cb.call(m.clone()).await,
                    None => Err(DeliveryError::retry(format!(
                        "no callback `{name}` is registered on worker {}",
                        self.worker
                    ))),
                },
                // Another worker may be built with the feature this one lacks: retry, and let the
                // message die only after its attempts.
                other => Err(DeliveryError::retry(format!(
                    "worker {} cannot deliver to {other}: it was built without the destination's \
                     feature (`rabbitmq`, `redis`)",
                    self.worker
                ))),
            }
        })
    }
}

/// The relay loop of one worker: claim up to `batch` keys, deliver each key's run concurrently, and
/// claim again for the free slots as soon as any run ends (not when the whole batch has ended: a
/// key with a long run would otherwise keep every unclaimed key waiting); when nothing is due,
/// wait for an outbox wake-up, a run to end, or the polling interval.
pub(crate) async fn run(shared: Arc<Shared>, relay: Arc<Relay>) {
    let config = relay.config();
    let mut wakeups = match shared.store.subscribe().await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "outbox relay: no wake-ups; polling only");
            None
        }
    };
    // Tasks, not a `FuturesUnordered` polled from here: a run that holds a database connection
    // must go on while this loop awaits a claim, which may need that connection.
    let mut runs = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(20);
    while !shared.is_stopping() {
        let free = config.batch.saturating_sub(runs.len() as u32);
        if free > 0 {
            let claim = OutboxClaim::new(shared.settings.id.to_string())
                .limit(free)
                .window(config.window)
                .window_bytes(config.window_bytes)
                .lease(config.lease);
            match shared.store.claim_outbox(claim).await {
                Ok(batch) if !batch.is_empty() => {
                    backoff = Duration::from_millis(20);
                    let windows = windows(batch);
                    let full = windows.len() as u32 >= free;
                    for window in windows {
                        let (shared, relay) = (Arc::clone(&shared), Arc::clone(&relay));
                        runs.spawn(async move { relay.run_key(&shared, window).await });
                    }
                    if full {
                        // More may be due: claim again if a slot is free.
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox claim failed; backing off");
                    let pause = tokio::time::sleep(backoff);
                    tokio::pin!(pause);
                    // The runs in flight go on meanwhile.
                    loop {
                        tokio::select! {
                            () = &mut pause => break,
                            Some(_) = runs.join_next() => {}
                            () = shared.stopped() => break,
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        tokio::select! {
            () = idle_wait(config.poll_interval, &mut wakeups) => {}
            Some(_) = runs.join_next() => {}
            () = shared.stopped() => break,
        }
    }
    // Each run hands its message back at its next step once the worker is stopping.
    while runs.join_next().await.is_some() {}
}

async fn idle_wait(every: Duration, wakeups: &mut Option<quark_history::Wakeups>) {
    let deadline = tokio::time::Instant::now() + every;
    let Some(w) = wakeups else {
        tokio::time::sleep_until(deadline).await;
        return;
    };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.wait(left).await {
            None => return,
            Some(Wake::Queue {
                kind: TaskKind::Outbox,
                ..
            })
            | Some(Wake::MayHaveMissed) => {
                while w.try_recv().is_some() {}
                return;
            }
            Some(_) => {}
        }
    }
}

/// Rows per purge batch: one short transaction each.
const PURGE_BATCH: u32 = 1_000;

/// Every `every`, deletes sent messages past their retention and inbox ids past the window, in
/// batches, until a batch comes back short.
pub(crate) async fn housekeeping(shared: Arc<Shared>, config: OutboxRelay, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stopped() => return,
        }
        for inbox in [false, true] {
            loop {
                let purged = if inbox {
                    shared
                        .store
                        .purge_inbox(config.inbox_window, PURGE_BATCH)
                        .await
                } else {
                    shared
                        .store
                        .purge_outbox(config.sent_retention, PURGE_BATCH)
                        .await
                };
                match purged {
                    Ok(n) if n < u64::from(PURGE_BATCH) => break,
                    Ok(_) if shared.is_stopping() => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, inbox, "purging the outbox/inbox failed; trying again later");
                        break;
                    }
                }
            }
        }
    }
}
