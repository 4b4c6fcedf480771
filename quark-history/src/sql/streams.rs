//! Entity streams and snapshots ([`StreamStore`]), for both databases: the statements agree.

use futures::future::BoxFuture;

use super::{Dialect, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::codec::{CodecTag, Payload};
use crate::error::{Error, Result};
use crate::journal::GENESIS;
use crate::rows::check_size;
use crate::stream::{Snapshot, StreamStore};

impl<S: SqlStore> StreamStore for S {
    fn open_stream<'a>(
        &'a self,
        stream_id: &'a str,
        entity_type: &'a str,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            if stream_id.is_empty() || entity_type.is_empty() {
                return Err(Error::Invalid(
                    "an entity stream needs a non-empty id and entity type".into(),
                ));
            }
            let now = self.settings().clock.now().as_micros();
            let mut conn = self.writer().acquire().await?;
            Stmt::<S::Db>::new(
                "INSERT INTO instances (id, instance_type, version, status, input_codec, input, \
                 queue, next_seq, history_bytes, last_hash, created_at, updated_at) \
                 VALUES ($1, $2, 1, 'stream', $3, $4, '', 1, 0, $5, $6, $6) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(stream_id)
            .bind(entity_type)
            .bind(CodecTag::Json.as_i16())
            .bind(Vec::<u8>::new())
            .bind(GENESIS.to_vec())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let row = Stmt::<S::Db>::new(
                "SELECT instance_type, status, next_seq FROM instances WHERE id = $1",
            )
            .bind(stream_id)
            .fetch_one(&mut *conn)
            .await?;
            let status: String = row.get("status")?;
            let found_type: String = row.get("instance_type")?;
            if status != "stream" {
                return Err(Error::Invalid(format!(
                    "`{stream_id}` is a workflow instance ({found_type}, {status}), not an entity \
                     stream: choose another key"
                )));
            }
            if found_type != entity_type {
                return Err(Error::Invalid(format!(
                    "stream `{stream_id}` belongs to entity type `{found_type}`, not `{entity_type}`"
                )));
            }
            Ok(row.get::<i64>("next_seq")? as u64 - 1)
        })
    }

    fn save_snapshot(&self, snapshot: Snapshot, keep: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            check_size(self.settings(), snapshot.state.as_bytes().len())?;
            let mut tx = self.begin_write().await?;
            Stmt::<S::Db>::new(
                "INSERT INTO snapshots (stream_id, version, state_schema, codec, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_id, version) DO UPDATE SET \
                 state_schema = excluded.state_schema, codec = excluded.codec, \
                 state = excluded.state, taken_at = excluded.taken_at",
            )
            .bind(snapshot.stream_id.as_str())
            .bind(snapshot.version as i64)
            .bind(snapshot.schema as i64)
            .bind(snapshot.state.codec().as_i16())
            .bind(snapshot.state.as_bytes().to_vec())
            .bind(snapshot.taken_at.as_micros())
            .execute(&mut *tx)
            .await?;
            // The newest `keep` stay; the rest go in the same transaction, so a stream's
            // snapshots never pile up.
            Stmt::<S::Db>::new(
                "DELETE FROM snapshots WHERE stream_id = $1 AND version < COALESCE((\
                 SELECT version FROM snapshots WHERE stream_id = $1 \
                 ORDER BY version DESC LIMIT 1 OFFSET $2), -1)",
            )
            .bind(snapshot.stream_id.as_str())
            .bind(i64::from(keep.max(1)) - 1)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
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
            let mut tx = self.begin_write().await?;
            let Some(row) = Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "SELECT status, first_seq, next_seq FROM instances WHERE id = $1{}",
                S::Db::FOR_UPDATE
            )))
            .bind(stream_id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Err(Error::InstanceNotFound {
                    id: stream_id.to_string(),
                });
            };
            let status: String = row.get("status")?;
            if status != "stream" {
                return Err(Error::Invalid(format!(
                    "`{stream_id}` is a workflow instance: only entity streams are truncated"
                )));
            }
            let first = row.get::<i64>("first_seq")? as u64;
            let next = row.get::<i64>("next_seq")? as u64;
            let end = before.min(next).min(first + u64::from(limit.max(1)));
            if end <= first {
                return Ok(None);
            }
            let hash: Vec<u8> =
                Stmt::<S::Db>::new("SELECT hash FROM history WHERE instance_id = $1 AND seq = $2")
                    .bind(stream_id)
                    .bind((end - 1) as i64)
                    .fetch_one(&mut *tx)
                    .await?
                    .get("hash")?;
            Stmt::<S::Db>::new(
                "DELETE FROM history WHERE instance_id = $1 AND seq >= $2 AND seq < $3",
            )
            .bind(stream_id)
            .bind(first as i64)
            .bind(end as i64)
            .execute(&mut *tx)
            .await?;
            Stmt::<S::Db>::new("UPDATE instances SET first_seq = $2, base_hash = $3 WHERE id = $1")
                .bind(stream_id)
                .bind(end as i64)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((first, end - 1)))
        })
    }

    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
        schema: u32,
        at_most: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(async move {
            let Some(row) = Stmt::<S::Db>::new(
                "SELECT version, codec, state, taken_at FROM snapshots \
                 WHERE stream_id = $1 AND state_schema = $2 AND version <= $3 \
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(stream_id)
            .bind(schema as i64)
            .bind(at_most.min(i64::MAX as u64) as i64)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?
            else {
                return Ok(None);
            };
            let codec: i16 = row.get("codec")?;
            let codec = CodecTag::from_i16(codec)
                .map_err(|e| Error::Invalid(format!("snapshot of stream `{stream_id}`: {e}")))?;
            Ok(Some(Snapshot {
                stream_id: stream_id.to_string(),
                version: row.get::<i64>("version")? as u64,
                schema,
                state: Payload::from_bytes(codec, row.get("state")?),
                taken_at: Timestamp::from_micros(row.get("taken_at")?),
            }))
        })
    }
}
