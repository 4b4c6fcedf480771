//! Projections on Redis through consumer groups over the global stream.
//!
//! A projection is a consumer group of `PREFIX:all` named after it, read by one consumer at a
//! time (the holder of the group's lease). The group remembers what was delivered; the consumer's
//! pending list holds what was delivered and not yet acknowledged. A page is acknowledged by one
//! script ([`scripts::GROUP_ACK`](super::scripts::GROUP_ACK)) that first checks the lease, then
//! runs the page's read-model writes and `XACK`s its entries: the writes and the checkpoint land
//! together or not at all, and a runner whose lease was taken over writes nothing. After a crash
//! the next holder reads the pending list first (the page that was delivered and not
//! acknowledged), then new entries: every event is applied once, in order.

use std::time::Duration;

use redis::Value;

use super::{RedisLog, entries, global_event, redis_error, stream_id};
use crate::error::{Error, Result};
use crate::journal::GlobalEvent;

/// A held lease on a projection's group: the token its writes are fenced by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

/// One consumer group's progress on the global stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupEntry {
    /// The group (the projection's name).
    pub group: String,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered (`None` when Redis cannot tell, after entries were deleted).
    pub lag: Option<u64>,
    /// The last entry delivered.
    pub last_delivered: String,
}

/// The one consumer of a projection's group.
const CONSUMER: &str = "projector";

impl RedisLog {
    fn lease_key(&self, group: &str) -> String {
        self.key(&format!("lease:{group}"))
    }

    /// Creates consumer group `group` on the global stream, from its start, if it does not exist.
    pub async fn create_group(&self, group: &str) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.all_key())
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_error(e)),
        }
    }

    /// Deletes group `group` and creates it again from the start of the global stream: the
    /// projection is then rebuilt from zero. Empty the read model first.
    pub async fn reset_group(&self, group: &str) -> Result<()> {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(self.all_key())
            .arg(group)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        self.create_group(group).await
    }

    /// Takes (or renews, with the same `holder`) the lease on group `group` for `ttl`; `Err`
    /// names the holder that has it.
    pub async fn take_lease(
        &self,
        group: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<LeaseToken, String>> {
        let reply: Vec<String> = self
            .inner
            .lease
            .key(self.lease_key(group))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        match reply.as_slice() {
            [ok] if ok == "ok" => Ok(Ok(LeaseToken(holder.to_string()))),
            [_, other] => Ok(Err(other.clone())),
            _ => Err(Error::Invalid(format!(
                "unexpected reply to a lease: {reply:?}"
            ))),
        }
    }

    /// Gives the lease up, if `token` still holds it.
    pub async fn release_lease(&self, group: &str, token: &LeaseToken) -> Result<()> {
        let _: i64 = self
            .inner
            .release
            .key(self.lease_key(group))
            .arg(&token.0)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// The next page for group `group`: what was delivered and never acknowledged (a crashed
    /// holder's page) if anything, else up to `count` new entries, waiting up to `block` for
    /// one. Entries deleted since delivery (retention) are acknowledged and left out.
    pub async fn read_group(
        &self,
        group: &str,
        count: u32,
        block: Option<Duration>,
    ) -> Result<Vec<GlobalEvent>> {
        let pending = self.xreadgroup(group, count, None, "0").await?;
        if !pending.is_empty() {
            return Ok(pending);
        }
        self.xreadgroup(group, count, block, ">").await
    }

    async fn xreadgroup(
        &self,
        group: &str,
        count: u32,
        block: Option<Duration>,
        from: &str,
    ) -> Result<Vec<GlobalEvent>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.all_key()).arg(from);
        let reply: Value = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        // RESP2: [[stream, entries]]; RESP3: {stream: entries}; nil when nothing came.
        let page = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(mut streams) => match streams.pop() {
                Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop().unwrap_or(Value::Nil),
                _ => Value::Nil,
            },
            Value::Map(mut streams) => streams.pop().map_or(Value::Nil, |(_, v)| v),
            other => {
                return Err(Error::Invalid(format!(
                    "unexpected reply to XREADGROUP: {other:?}"
                )));
            }
        };
        let Value::Array(items) = page else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(items.len());
        let mut gone: Vec<String> = Vec::new();
        for item in items {
            // A pending entry deleted since it was delivered comes back without fields.
            if let Value::Array(parts) = &item
                && let [id, Value::Nil] = parts.as_slice()
            {
                gone.push(
                    redis::FromRedisValue::from_redis_value(id.clone()).map_err(|e| {
                        Error::Invalid(format!("a stream id in XREADGROUP's reply: {e}"))
                    })?,
                );
                continue;
            }
            for (id, f) in entries(Value::Array(vec![item]))? {
                out.push(global_event(&id, &f)?);
            }
        }
        if !gone.is_empty() {
            let _: i64 = redis::cmd("XACK")
                .arg(self.all_key())
                .arg(group)
                .arg(&gone)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
        }
        Ok(out)
    }

    /// Acknowledges `page` for group `group` and runs `writes` (the read model's commands, each
    /// as its arguments: `["HINCRBY", key, field, "5"]`), in one script, fenced by `token` (the
    /// lease is renewed for `ttl`). If the lease is no longer `token`'s, nothing is done and
    /// [`Error::ProjectionMoved`] is returned; a write the server refuses fails the call after
    /// the writes before it ran (Redis does not roll a script back), so make writes that cannot
    /// fail on well-formed input: `HSET`, `HINCRBY`, `SADD`, `ZADD`, `DEL`.
    pub async fn ack_group(
        &self,
        group: &str,
        token: &LeaseToken,
        ttl: Duration,
        page: &[GlobalEvent],
        writes: &[Vec<Vec<u8>>],
    ) -> Result<()> {
        let mut invocation = self.inner.group_ack.prepare_invoke();
        invocation
            .key(self.all_key())
            .key(self.lease_key(group))
            .arg(group)
            .arg(&token.0)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(page.len());
        for e in page {
            invocation.arg(stream_id(e.position));
        }
        for w in writes {
            if w.is_empty() {
                return Err(Error::Invalid(
                    "a read-model write without a command".into(),
                ));
            }
            invocation.arg(w.len());
            for a in w {
                invocation.arg(&a[..]);
            }
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("moved") => Err(Error::ProjectionMoved {
                name: group.to_string(),
                version: 1,
            }),
            _ => Err(Error::Invalid(format!(
                "unexpected reply to an ack: {reply:?}"
            ))),
        }
    }

    /// The progress of group `group` (`None` if it does not exist).
    pub async fn group(&self, group: &str) -> Result<Option<GroupEntry>> {
        let reply: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.all_key())
            .query_async(&mut self.conn())
            .await;
        let reply = match reply {
            Ok(r) => r,
            // No global stream yet: no group either.
            Err(e) if e.code() == Some("ERR") => return Ok(None),
            Err(e) => return Err(redis_error(e)),
        };
        let Value::Array(groups) = reply else {
            return Ok(None);
        };
        for g in groups {
            let pairs: Vec<(String, Value)> = match g {
                Value::Map(m) => m
                    .into_iter()
                    .filter_map(|(k, v)| {
                        Some((redis::FromRedisValue::from_redis_value(k).ok()?, v))
                    })
                    .collect(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|p| {
                        Some((
                            redis::FromRedisValue::from_redis_value(p.first()?.clone()).ok()?,
                            p.get(1)?.clone(),
                        ))
                    })
                    .collect(),
                _ => continue,
            };
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let name: Option<String> =
                get("name").and_then(|v| redis::FromRedisValue::from_redis_value(v).ok());
            if name.as_deref() != Some(group) {
                continue;
            }
            return Ok(Some(GroupEntry {
                group: group.to_string(),
                pending: get("pending")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v).ok())
                    .unwrap_or(0),
                lag: get("lag").and_then(|v| redis::FromRedisValue::from_redis_value(v).ok()),
                last_delivered: get("last-delivered-id")
                    .and_then(|v| redis::FromRedisValue::from_redis_value(v).ok())
                    .unwrap_or_default(),
            }));
        }
        Ok(None)
    }
}
