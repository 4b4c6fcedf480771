//! The hash chain of a Redis stream, checked as the SQL stores check theirs.

use redis::Value;

use super::{RedisLog, entries, redis_error};
use crate::error::{Error, Result};
use crate::journal::{ChainReport, GENESIS};
use crate::rows::check_chain;

fn hash32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

impl RedisLog {
    /// Recomputes stream `stream_id`'s hash chain from its events and checks it against its head:
    /// names the first event that was changed, removed or added behind the log's back.
    pub async fn verify(&self, stream_id: &str) -> Result<ChainReport> {
        // The head and the events in one transaction, so that an append between them is not
        // taken for a break.
        let (head, events): (Vec<Option<Vec<u8>>>, Value) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(self.head_key(stream_id))
            .arg("v")
            .arg("h")
            .arg("first")
            .arg("base")
            .cmd("XRANGE")
            .arg(self.events_key(stream_id))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let text = |i: usize| {
            head.get(i)
                .cloned()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        };
        let Some(version) = text(0).and_then(|v| v.parse::<u64>().ok()) else {
            return Err(Error::InstanceNotFound {
                id: stream_id.to_string(),
            });
        };
        let last_hash = head
            .get(1)
            .cloned()
            .flatten()
            .map_or(GENESIS, |h| hash32(&h));
        let first = text(2).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1);
        let base = head
            .get(3)
            .cloned()
            .flatten()
            .map_or(GENESIS, |h| hash32(&h));
        let mut rows = Vec::new();
        for (id, f) in entries(events)? {
            let seq: i64 = id
                .strip_prefix("0-")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Invalid(format!("stream `{stream_id}` has entry `{id}`")))?;
            let hash = f.get("h").cloned().unwrap_or_default();
            // A record that no longer decodes was changed: its hash will not match.
            match super::record(stream_id, seq as u64, &f) {
                Ok(r) => rows.push((seq, r.codec, r.bytes, hash)),
                Err(_) => rows.push((seq, -1, f.get("r").cloned().unwrap_or_default(), hash)),
            }
        }
        let (events, problem) = check_chain(
            rows.iter()
                .map(|(s, c, b, h)| (*s, *c, b.as_slice(), h.as_slice())),
            (first, base),
            (version + 1, last_hash),
        );
        Ok(ChainReport {
            instance_id: stream_id.to_string(),
            events,
            first_mismatch: problem.map(|p| p.first_untrusted()),
            problem,
        })
    }
}
