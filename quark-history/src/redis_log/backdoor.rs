//! Editing a Redis log behind its back, for tests that show what a reader does with damage.

use super::{RedisLog, redis_error};
use crate::codec::Payload;
use crate::error::{Error, Result};
use crate::stream::Snapshot;

impl RedisLog {
    /// The versions of stream `stream_id`'s snapshots, ascending.
    pub async fn snapshot_versions(&self, stream_id: &str) -> Result<Vec<u64>> {
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(self.key(&format!("snap:{stream_id}")))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let mut versions: Vec<u64> = fields.iter().filter_map(|f| f.parse().ok()).collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Replaces the stored state of stream `stream_id`'s snapshot at `version` (every snapshot:
    /// `None`) with `bytes`, keeping its codec.
    pub async fn overwrite_snapshot_state(
        &self,
        stream_id: &str,
        version: Option<u64>,
        bytes: &[u8],
    ) -> Result<()> {
        let key = self.key(&format!("snap:{stream_id}"));
        let mut conn = self.conn();
        for v in self.snapshot_versions(stream_id).await? {
            if version.is_some_and(|only| only != v) {
                continue;
            }
            let field = format!("{v:020}");
            let stored: Vec<u8> = redis::cmd("HGET")
                .arg(&key)
                .arg(&field)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let mut snapshot: Snapshot = postcard::from_bytes(&stored)
                .map_err(|e| Error::Invalid(format!("a snapshot of `{stream_id}`: {e}")))?;
            snapshot.state = Payload::from_bytes(snapshot.state.codec(), bytes.to_vec());
            let encoded = postcard::to_stdvec(&snapshot)
                .map_err(|e| Error::Invalid(format!("encoding a snapshot: {e}")))?;
            let () = redis::cmd("HSET")
                .arg(&key)
                .arg(&field)
                .arg(encoded)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    /// Every stored byte string of stream `stream_id`: its events' fields and its snapshots, as
    /// they are kept (to look for what must not be there in the clear).
    pub async fn stored_bytes(&self, stream_id: &str) -> Result<Vec<Vec<u8>>> {
        let mut conn = self.conn();
        let events: redis::Value = redis::cmd("XRANGE")
            .arg(self.events_key(stream_id))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let mut out: Vec<Vec<u8>> = super::entries(events)?
            .into_iter()
            .flat_map(|(_, f)| f.into_values())
            .collect();
        let snapshots: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(self.key(&format!("snap:{stream_id}")))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        out.extend(snapshots);
        Ok(out)
    }
}
