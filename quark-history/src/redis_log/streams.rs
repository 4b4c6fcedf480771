//! Opening streams, snapshots and retention on Redis ([`StreamStore`]).

use futures::future::BoxFuture;
use redis::Value;

use super::{RedisLog, redis_error};
use crate::error::{Error, Result};
use crate::rows::check_size;
use crate::stream::{Snapshot, StreamStore};

/// A snapshot's field in its stream's hash: the version, zero-padded so that names sort as numbers.
fn field(version: u64) -> String {
    format!("{version:020}")
}

impl RedisLog {
    fn snapshots_key(&self, stream: &str) -> String {
        self.key(&format!("snap:{stream}"))
    }
}

impl StreamStore for RedisLog {
    fn open_stream<'a>(
        &'a self,
        stream_id: &'a str,
        entity_type: &'a str,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let reply: Vec<String> = self
                .inner
                .open
                .key(self.head_key(stream_id))
                .arg(entity_type)
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            match reply.as_slice() {
                [ok, version] if ok == "ok" => version.parse().map_err(|_| {
                    Error::Invalid(format!("stream `{stream_id}` has version `{version}`"))
                }),
                [t, other] if t == "type" => Err(Error::Invalid(format!(
                    "stream `{stream_id}` belongs to entity type `{other}`, not `{entity_type}`"
                ))),
                _ => Err(Error::Invalid(format!(
                    "unexpected reply opening stream `{stream_id}`: {reply:?}"
                ))),
            }
        })
    }

    fn save_snapshot(&self, snapshot: Snapshot, keep: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            check_size(&self.inner.config, snapshot.state.as_bytes().len())?;
            let key = self.snapshots_key(&snapshot.stream_id);
            let bytes = postcard::to_stdvec(&snapshot)
                .map_err(|e| Error::Invalid(format!("encoding a snapshot: {e}")))?;
            let mut conn = self.conn();
            let () = redis::cmd("HSET")
                .arg(&key)
                .arg(field(snapshot.version))
                .arg(bytes)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let mut fields: Vec<String> = redis::cmd("HKEYS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            fields.sort();
            let excess = fields.len().saturating_sub(keep.max(1) as usize);
            if excess > 0 {
                let () = redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&fields[..excess])
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
            Ok(())
        })
    }

    fn truncate_stream<'a>(
        &'a self,
        stream_id: &'a str,
        before: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Option<(u64, u64)>>> {
        Box::pin(async move {
            let reply: Vec<String> = self
                .inner
                .truncate
                .key(self.head_key(stream_id))
                .key(self.events_key(stream_id))
                .key(self.all_key())
                .arg(before)
                .arg(limit.max(1))
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            match reply.as_slice() {
                [] => Ok(None),
                [first, last] => {
                    let n = |s: &String| {
                        s.parse::<u64>().map_err(|_| {
                            Error::Invalid(format!("truncating `{stream_id}`: version `{s}`"))
                        })
                    };
                    Ok(Some((n(first)?, n(last)?)))
                }
                _ => Err(Error::Invalid(format!(
                    "unexpected reply truncating `{stream_id}`: {reply:?}"
                ))),
            }
        })
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
        schema: u32,
        at_most: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(async move {
            let reply: Value = redis::cmd("HGETALL")
                .arg(self.snapshots_key(stream_id))
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let all = match &reply {
                Value::Map(pairs) => pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                    .collect(),
                _ => Vec::new(),
            };
            let mut best: Option<Snapshot> = None;
            for (_, v) in all {
                let bytes: Vec<u8> = redis::FromRedisValue::from_redis_value(v)
                    .map_err(|e| Error::Invalid(format!("a snapshot of `{stream_id}`: {e}")))?;
                let snapshot: Snapshot = match postcard::from_bytes(&bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(
                            stream = stream_id,
                            "a stored snapshot does not decode: {e}"
                        );
                        continue;
                    }
                };
                if snapshot.schema == schema
                    && snapshot.version <= at_most
                    && best.as_ref().is_none_or(|b| b.version < snapshot.version)
                {
                    best = Some(snapshot);
                }
            }
            Ok(best)
        })
    }
}
