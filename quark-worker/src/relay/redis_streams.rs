//! Redis Streams delivery on `redis`: one multiplexed connection per relay that reconnects by
//! itself (`redis::aio::ConnectionManager`), made on the first `redis:` message.
//!
//! Each message is one `XADD` of the fields `idempotency-key`, `payload` and `header:<name>` for
//! each of its headers, idempotent by its idempotency key: a script run atomically by the server
//! adds the entry only if a marker key for that idempotency key does not exist, then sets it with
//! the deduplication window as its expiry. A re-send within the window is answered with the
//! first entry's id and adds nothing. The marker is `{<stream>}:quark-sent:<key>`: the braces put
//! it in the stream's hash slot, as Redis Cluster requires of a script's keys.

use std::time::Duration;

use quark_history::ClaimedMessage;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::DeliveryError;

/// Adds the entry unless the marker says it was added; returns the entry's id either way.
/// `KEYS[1]` the marker, `KEYS[2]` the stream, `ARGV[1]` the window in seconds, then field and
/// value pairs.
const ADD_ONCE: &str = r"
local added = redis.call('GET', KEYS[1])
if added then return added end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
";

/// The Redis connection of one relay.
pub(crate) struct RedisStreams {
    url: String,
    window: Duration,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
}

impl RedisStreams {
    pub(crate) fn new(url: String, window: Duration) -> Self {
        RedisStreams {
            url,
            window,
            connection: OnceCell::new(),
            script: redis::Script::new(ADD_ONCE),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, DeliveryError> {
        let unreachable = |e: redis::RedisError| {
            DeliveryError::retry(format!("cannot connect to Redis at {}: {e}", self.url))
        };
        self.connection
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.url.as_str()).map_err(unreachable)?;
                ConnectionManager::new(client).await.map_err(unreachable)
            })
            .await
            .cloned()
    }

    /// Adds `m` to `stream`, once per idempotency key within the window.
    pub(crate) async fn add(&self, stream: &str, m: &ClaimedMessage) -> Result<(), DeliveryError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(marker(stream, &m.idempotency_key))
            .key(stream)
            .arg(self.window.as_secs().max(1))
            .arg("idempotency-key")
            .arg(&m.idempotency_key)
            .arg("payload")
            .arg(&m.payload[..]);
        for (name, value) in &m.headers {
            invocation.arg(format!("header:{name}")).arg(value);
        }
        let _id: String = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| DeliveryError::retry(format!("Redis stream `{stream}`: {e}")))?;
        Ok(())
    }
}

/// The key that marks `idempotency_key` as added to `stream`.
pub(crate) fn marker(stream: &str, idempotency_key: &str) -> String {
    format!("{{{stream}}}:quark-sent:{idempotency_key}")
}
