//! Ordered delivery in the inbox on SQLite. Every write transaction is `BEGIN IMMEDIATE` on the
//! single writer, so a key's row needs no lock of its own: holding the write lock is holding every
//! key.

use futures::future::BoxFuture;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::Result;
use crate::inbox_order::{Delivered, LostGap, SequencedStore};
use crate::store::StoreConfig;

const LOST_COLUMNS: &str = "id, key, first_seq, last_seq, declared_at, late_arrivals";

fn lost_gap(row: &SqliteRow) -> Result<LostGap> {
    Ok(LostGap {
        id: row.try_get("id")?,
        key: row.try_get("key")?,
        first: row.try_get::<i64, _>("first_seq")? as u64,
        last: row.try_get::<i64, _>("last_seq")? as u64,
        declared_at: Timestamp::from_micros(row.try_get("declared_at")?),
        late_arrivals: row.try_get::<i64, _>("late_arrivals")? as u64,
    })
}

impl SequencedStore for SqliteStore {
    fn order_config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock_key<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        start: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO inbox_keys (key, next_seq, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(start)
            .bind(now.as_micros())
            .execute(&mut *conn)
            .await?;
            Ok(
                sqlx::query_scalar("SELECT next_seq FROM inbox_keys WHERE key = ?1")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?,
            )
        })
    }

    fn set_next<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        next: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("UPDATE inbox_keys SET next_seq = ?2, updated_at = ?3 WHERE key = ?1")
                .bind(key)
                .bind(next)
                .bind(now.as_micros())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn held<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Delivered>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, message_id, payload, received_at FROM inbox_held \
                 WHERE key = ?1 ORDER BY seq",
            )
            .bind(key)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(Delivered {
                        key: key.to_string(),
                        seq: row.try_get::<i64, _>("seq")? as u64,
                        message_id: row.try_get("message_id")?,
                        payload: row.try_get("payload")?,
                        received_at: Timestamp::from_micros(row.try_get("received_at")?),
                    })
                })
                .collect()
        })
    }

    fn hold<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        message: &'a Delivered,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO inbox_held (key, seq, message_id, payload, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&message.key)
            .bind(message.seq as i64)
            .bind(&message.message_id)
            .bind(&message.payload)
            .bind(message.received_at.as_micros())
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }

    fn unhold<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM inbox_held WHERE key = ?1 AND seq = ?2")
                .bind(key)
                .bind(seq)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn declare_lost<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        first: i64,
        last: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<LostGap>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO inbox_lost (key, first_seq, last_seq, declared_at) \
                 VALUES (?1, ?2, ?3, ?4) RETURNING {LOST_COLUMNS}"
            )))
            .bind(key)
            .bind(first)
            .bind(last)
            .bind(now.as_micros())
            .fetch_one(&mut *conn)
            .await?;
            lost_gap(&row)
        })
    }

    fn count_late<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<Option<LostGap>>> {
        Box::pin(async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE inbox_lost SET late_arrivals = late_arrivals + 1 \
                 WHERE id = (SELECT id FROM inbox_lost WHERE key = ?1 AND first_seq <= ?2 \
                   AND last_seq >= ?2 ORDER BY first_seq DESC LIMIT 1) \
                 RETURNING {LOST_COLUMNS}"
            )))
            .bind(key)
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(lost_gap).transpose()
        })
    }

    fn list_lost(&self, limit: u32) -> BoxFuture<'_, Result<Vec<LostGap>>> {
        Box::pin(async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {LOST_COLUMNS} FROM inbox_lost ORDER BY id DESC LIMIT ?1"
            )))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(lost_gap).collect()
        })
    }

    fn expired_keys(&self, before: Timestamp, limit: u32) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT DISTINCT key FROM inbox_held WHERE received_at < ?1 ORDER BY key LIMIT ?2",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?)
        })
    }
}
