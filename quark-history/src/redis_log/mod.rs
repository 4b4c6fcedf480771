//! Entity streams on Redis Streams: an [`EventLog`] that is not a SQL database.
//!
//! Layout, under a prefix that is one Redis Cluster hash tag (`{quark}` by default, so that a
//! script's keys share a slot; give each log its own prefix to spread logs over a cluster):
//!
//! - `PREFIX:s:STREAM`: the stream's events, a Redis stream whose entry ids are `0-VERSION`;
//! - `PREFIX:h:STREAM`: its head, a hash of the version (`v`), the last event's hash (`h`), the
//!   entity type and, after retention, the first version kept and the hash it links to;
//! - `PREFIX:all`: every stream's events in one global order, a Redis stream with the server's
//!   own ids (`MILLISECONDS-SEQUENCE`, read as [`GlobalPosition`] `tx:position`);
//! - `PREFIX:snap:STREAM`, `PREFIX:subject:SUBJECT`, `PREFIX:inbox:ID`: snapshots, subjects' data
//!   keys, inbox ids (expiring after the window);
//! - `PREFIX:lease:GROUP`: the lease of a projection's consumer group.
//!
//! An append is one script ([`scripts::APPEND`]): it checks every stream's version and head hash,
//! and every inbox id, before it writes anything, then adds the events to their streams and to the
//! global stream. Redis runs a script alone, so a commit is all or nothing, and a reader of the
//! global stream never sees part of one nor, later, an event that sorts before what it read: the
//! global order is gap-safe by construction. The hash chain is the SQL stores' own (the writer
//! reads the head's hash and links to it; the script refuses a head that moved).
//!
//! **Durability is Redis's.** Without `appendonly yes` and `appendfsync always`, an acknowledged
//! append can be lost in a crash of the server; [`RedisLog::connect`] warns when the server does
//! not persist every write.

#[cfg(feature = "test-util")]
mod backdoor;
mod entries;
mod group;
mod scripts;
mod streams;
mod subjects;
mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use redis::Value;
use redis::aio::ConnectionManager;

use entries::{Record, global_event, position, recorded, stream_id};
pub(crate) use entries::{entries, record};
pub use group::{GroupEntry, LeaseToken};

use crate::commit::{Commit, Committed, Expected};
use crate::error::{Error, Result};
use crate::event::{HistoryEvent, RecordedEvent, SCHEMA_VERSION};
use crate::event_log::EventLog;
use crate::journal::{GENESIS, GlobalEvent, GlobalPosition, HistoryRange};
use crate::rows::encode_events;
use crate::store::StoreConfig;

/// The default key prefix: one hash tag.
pub const DEFAULT_PREFIX: &str = "{quark}";

/// Entity streams on a Redis server. Clones share the connection.
#[derive(Clone)]
pub struct RedisLog {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    config: StoreConfig,
    connection: ConnectionManager,
    append: redis::Script,
    open: redis::Script,
    truncate: redis::Script,
    subject_key: redis::Script,
    erase_subject: redis::Script,
    group_ack: redis::Script,
    lease: redis::Script,
    release: redis::Script,
    inbox_window: std::time::Duration,
    /// The heads this process appended last, `(version, hash)` by stream: an append at the next
    /// version links to the hash kept here without reading the head first (the script still
    /// checks both, so a head another process moved is a conflict as ever).
    heads: std::sync::Mutex<std::collections::HashMap<String, (u64, Vec<u8>)>>,
}

/// A stream's head as `HMGET v h` reads it: its version and its last event's hash.
type Head = (Option<u64>, Option<Vec<u8>>);

/// The most heads a log keeps; past it, it forgets them all and reads heads again.
const HEADS_KEPT: usize = 65_536;

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog")
            .field("url", &redact(&self.inner.url))
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}

/// A Redis error as the store's.
pub(crate) fn redis_error(e: redis::RedisError) -> Error {
    let retryable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain
            )
        );
    Error::Log {
        backend: "redis",
        message: e.to_string(),
        retryable,
    }
}

fn bad_reply(what: &str, value: &Value) -> Error {
    Error::Log {
        backend: "redis",
        message: format!("unexpected reply to {what}: {value:?}"),
        retryable: false,
    }
}

impl RedisLog {
    /// Connects to the Redis server at `url` (`redis://HOST:PORT/DB`, `rediss://` for TLS), with
    /// keys under [`DEFAULT_PREFIX`]. Warns when the server does not persist every write
    /// (`appendonly yes`, `appendfsync always`).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        RedisLog::connect_with_prefix(url, DEFAULT_PREFIX, config).await
    }

    /// [`connect`](Self::connect), with keys under `prefix` (a test, a tenant: one log each).
    pub async fn connect_with_prefix(url: &str, prefix: &str, config: StoreConfig) -> Result<Self> {
        let unreachable = |e: redis::RedisError| Error::Log {
            backend: "redis",
            message: format!("cannot connect to {}: {e}", redact(url)),
            retryable: true,
        };
        let client = redis::Client::open(url).map_err(unreachable)?;
        let mut connection = ConnectionManager::new(client).await.map_err(unreachable)?;
        let persistence: Result<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut connection)
            .await
            .map_err(redis_error);
        match persistence {
            Ok(pairs) => {
                let settings: BTreeMap<_, _> = pairs
                    .chunks(2)
                    .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                    .collect();
                let aof = settings.get("appendonly").map(String::as_str);
                let fsync = settings.get("appendfsync").map(String::as_str);
                if aof != Some("yes") || fsync != Some("always") {
                    tracing::warn!(
                        url = %redact(url),
                        appendonly = aof.unwrap_or("?"),
                        appendfsync = fsync.unwrap_or("?"),
                        "this Redis server does not write every append to disk before it answers: \
                         a crash of the server can lose acknowledged events (set appendonly yes \
                         and appendfsync always for an event store)"
                    );
                }
            }
            // A managed Redis may refuse CONFIG: say nothing rather than guess.
            Err(e) => tracing::debug!("CONFIG GET append* refused: {e}"),
        }
        Ok(RedisLog {
            inner: Arc::new(Inner {
                url: url.to_string(),
                prefix: prefix.to_string(),
                config,
                connection,
                append: redis::Script::new(scripts::APPEND),
                open: redis::Script::new(scripts::OPEN),
                truncate: redis::Script::new(scripts::TRUNCATE),
                subject_key: redis::Script::new(scripts::SUBJECT_KEY),
                erase_subject: redis::Script::new(scripts::ERASE_SUBJECT),
                group_ack: redis::Script::new(scripts::GROUP_ACK),
                lease: redis::Script::new(scripts::LEASE),
                release: redis::Script::new(scripts::RELEASE),
                inbox_window: crate::DEFAULT_INBOX_WINDOW,
                heads: Default::default(),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// A key of this log: `PREFIX:rest`. Read models a projection writes should live under the
    /// same prefix, so that its writes share the script's slot in a cluster.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.connection.clone()
    }

    fn all_key(&self) -> String {
        self.key("all")
    }

    fn head_key(&self, stream: &str) -> String {
        self.key(&format!("h:{stream}"))
    }

    fn events_key(&self, stream: &str) -> String {
        self.key(&format!("s:{stream}"))
    }

    fn inbox_key(&self, id: &str) -> String {
        self.key(&format!("inbox:{id}"))
    }

    /// Deletes every key of this log (its streams, snapshots, subjects, groups): for tests and
    /// for tearing a log down. Not atomic; do not run it beside writers.
    pub async fn destroy(&self) -> Result<u64> {
        let mut conn = self.conn();
        let pattern = format!("{}:*", glob_escape(&self.inner.prefix));
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// One commit: appends to entity streams and inbox ids only.
    async fn append_one(&self, commit: Commit) -> Result<Committed> {
        if !commit.tasks.is_empty() || commit.settle.is_some() || !commit.outbox.is_empty() {
            return Err(Error::Invalid(
                "a Redis event log takes appends to entity streams and inbox ids only: tasks, \
                 settlements and outbox messages need the workflows' store"
                    .into(),
            ));
        }
        for append in &commit.appends {
            if let Some(e) = append
                .events
                .iter()
                .find(|e| !matches!(e, HistoryEvent::EntityEvent { .. }))
            {
                return Err(Error::Invalid(format!(
                    "stream `{}` holds entity events only; a {} event cannot be appended to it",
                    append.instance_id,
                    e.kind()
                )));
            }
        }
        // `Expected::Any` appends at whatever the head is when the script runs: a writer that
        // loses the race reads the head again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_append(&commit).await {
                Err(Error::Conflict { .. })
                    if attempts < 16
                        && commit
                            .appends
                            .iter()
                            .all(|a| matches!(a.expected, Expected::Any)) =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    fn heads(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, Vec<u8>)>> {
        self.inner.heads.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn try_append(&self, commit: &Commit) -> Result<Committed> {
        let mut conn = self.conn();
        // The heads: those this process appended last and that the appends expect, else read,
        // all in one round trip.
        let mut heads: Vec<Option<Head>> = {
            let kept = self.heads();
            commit
                .appends
                .iter()
                .map(|a| match (a.expected, kept.get(&a.instance_id)) {
                    (Expected::Seq(next), Some((v, h))) if next == v + 1 => {
                        Some((Some(*v), Some(h.clone())))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut pipe = redis::pipe();
        for (append, _) in commit
            .appends
            .iter()
            .zip(&heads)
            .filter(|(_, h)| h.is_none())
        {
            pipe.cmd("HMGET")
                .arg(self.head_key(&append.instance_id))
                .arg("v")
                .arg("h");
        }
        if heads.iter().any(Option::is_none) {
            let read: Vec<Head> = pipe.query_async(&mut conn).await.map_err(redis_error)?;
            let mut read = read.into_iter();
            for h in heads.iter_mut().filter(|h| h.is_none()) {
                *h = read.next();
            }
        }
        let heads: Vec<Head> = heads.into_iter().map(Option::unwrap_or_default).collect();
        let now = self.inner.config.clock.now();
        let mut invocation = self.inner.append.prepare_invoke();
        invocation.key(self.all_key());
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut appended = Vec::with_capacity(commit.appends.len());
        let mut new_heads: Vec<(String, (u64, Vec<u8>))> = Vec::new();
        for (append, (version, hash)) in commit.appends.iter().zip(heads) {
            let version = version.unwrap_or(0);
            let next = match append.expected {
                Expected::Seq(next) if next != version + 1 => {
                    return Err(Error::Conflict {
                        id: append.instance_id.clone(),
                        expected: next,
                        actual: version + 1,
                    });
                }
                Expected::Seq(next) => next,
                Expected::Any => version + 1,
            };
            let previous: [u8; 32] = match (&hash, version) {
                (_, 0) => GENESIS,
                (Some(h), _) => h.as_slice().try_into().map_err(|_| {
                    Error::Invalid(format!(
                        "the head of stream `{}` holds a hash of {} bytes",
                        append.instance_id,
                        h.len()
                    ))
                })?,
                (None, _) => {
                    return Err(Error::Invalid(format!(
                        "the head of stream `{}` has no hash",
                        append.instance_id
                    )));
                }
            };
            let encoded = encode_events(&self.inner.config, previous, next, &append.events)?;
            if let Some(last) = encoded.last() {
                new_heads.push((append.instance_id.clone(), (last.seq, last.hash.to_vec())));
            }
            let at = append.at.unwrap_or(now).as_micros();
            invocation
                .key(self.head_key(&append.instance_id))
                .key(self.events_key(&append.instance_id));
            args.push(append.instance_id.clone().into_bytes());
            args.push(next.to_string().into_bytes());
            args.push(if version == 0 {
                Vec::new()
            } else {
                previous.to_vec()
            });
            args.push(encoded.len().to_string().into_bytes());
            for e in encoded {
                let record = Record {
                    schema: SCHEMA_VERSION,
                    codec: e.codec,
                    at,
                    bytes: e.bytes,
                };
                args.push(
                    postcard::to_stdvec(&record)
                        .map_err(|e| Error::Invalid(format!("encoding an event record: {e}")))?,
                );
                args.push(e.hash.to_vec());
            }
            appended.push((next, next + append.events.len() as u64 - 1));
        }
        for id in &commit.receive {
            invocation.key(self.inbox_key(id));
        }
        invocation
            .arg(commit.appends.len())
            .arg(commit.receive.len())
            .arg(self.inner.inbox_window.as_millis().max(1) as u64);
        for a in args {
            invocation.arg(a);
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let mut kept = self.heads();
                if kept.len() >= HEADS_KEPT {
                    kept.clear();
                }
                for (stream, last) in &new_heads {
                    kept.insert(stream.clone(), last.clone());
                }
                Ok(Committed {
                    appended,
                    ..Committed::default()
                })
            }
            Some("dup") => {
                let key = reply.get(1).cloned().unwrap_or_default();
                let prefix = self.inbox_key("");
                Err(Error::AlreadyReceived {
                    message_id: key.strip_prefix(&prefix).unwrap_or(&key).to_string(),
                })
            }
            Some("conflict") => {
                let mut kept = self.heads();
                for a in &commit.appends {
                    kept.remove(&a.instance_id);
                }
                drop(kept);
                let index: usize = reply.get(1).and_then(|i| i.parse().ok()).unwrap_or(1);
                let actual: u64 = reply.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
                let append = &commit.appends[index.saturating_sub(1).min(commit.appends.len() - 1)];
                Err(Error::Conflict {
                    id: append.instance_id.clone(),
                    expected: match append.expected {
                        Expected::Seq(n) => n,
                        Expected::Any => actual,
                    },
                    actual,
                })
            }
            _ => Err(Error::Log {
                backend: "redis",
                message: format!("unexpected reply to an append: {reply:?}"),
                retryable: false,
            }),
        }
    }
}

/// `s` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl EventLog for RedisLog {
    fn log_backend(&self) -> &'static str {
        "redis"
    }

    fn log_config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn append_commits(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        Box::pin(async move {
            // Commits that touch none of the same streams or inbox ids run at once (their scripts
            // share the connection's pipeline); one that shares any with an earlier commit of the
            // batch waits for it, so the outcome is that of committing them in order.
            let mut out = Vec::with_capacity(commits.len());
            let mut wave: Vec<Commit> = Vec::new();
            let mut touched: std::collections::BTreeSet<String> = Default::default();
            for commit in commits {
                let keys: Vec<String> = commit
                    .appends
                    .iter()
                    .map(|a| format!("s:{}", a.instance_id))
                    .chain(commit.receive.iter().map(|id| format!("i:{id}")))
                    .collect();
                if keys.iter().any(|k| touched.contains(k)) {
                    let running = std::mem::take(&mut wave);
                    out.extend(
                        futures::future::join_all(running.into_iter().map(|c| self.append_one(c)))
                            .await,
                    );
                    touched.clear();
                }
                touched.extend(keys);
                wave.push(commit);
            }
            out.extend(
                futures::future::join_all(wave.into_iter().map(|c| self.append_one(c))).await,
            );
            out
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            let (from, until) = match range {
                HistoryRange::All | HistoryRange::Time { .. } => (1, u64::MAX),
                HistoryRange::From(from) => (from.max(1), u64::MAX),
                HistoryRange::Seq { from, until } => (from.max(1), until),
            };
            if until <= from {
                return Ok(Vec::new());
            }
            let end = match until {
                u64::MAX => "+".to_string(),
                until => format!("0-{}", until - 1),
            };
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.events_key(stream_id))
                .arg(format!("0-{from}"))
                .arg(end)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let mut out = Vec::new();
            for (id, f) in entries(reply)? {
                let seq = position(&id)?.position as u64;
                let event = recorded(stream_id, seq, &f)?;
                if let HistoryRange::Time { from, until } = range
                    && (event.recorded_at < from || event.recorded_at >= until)
                {
                    continue;
                }
                out.push(event);
            }
            Ok(out)
        })
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let v: Option<u64> = redis::cmd("HGET")
                .arg(self.head_key(stream_id))
                .arg("v")
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            Ok(v.unwrap_or(0))
        })
    }

    fn read_log(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>> {
        Box::pin(async move {
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.all_key())
                .arg(format!("({}", stream_id(after)))
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            entries(reply)?
                .into_iter()
                .map(|(id, f)| global_event(&id, &f))
                .collect()
        })
    }
}
