//! Ordered delivery in the inbox ([`SequencedStore`]), for both databases. Every call locks its
//! key's row before reading anything else of the key (`FOR UPDATE` on PostgreSQL; on SQLite the
//! write transaction already holds the one write lock), so concurrent consumers of one key take
//! turns, and each reads what the one before committed.

use futures::future::BoxFuture;
use sqlx::Database;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::inbox_order::{Delivered, LostGap, SequencedStore};
use crate::store::StoreConfig;

type Conn<S> = <<S as crate::inbox::InboxStore>::Db as Database>::Connection;

const LOST_COLUMNS: &str = "id, key, first_seq, last_seq, declared_at, late_arrivals";

fn lost_gap<DB: Dialect>(row: &Row<DB>) -> Result<LostGap> {
    Ok(LostGap {
        id: row.get("id")?,
        key: row.get("key")?,
        first: row.get::<i64>("first_seq")? as u64,
        last: row.get::<i64>("last_seq")? as u64,
        declared_at: Timestamp::from_micros(row.get("declared_at")?),
        late_arrivals: row.get::<i64>("late_arrivals")? as u64,
    })
}

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

impl<S: SqlStore> SequencedStore for S {
    fn order_config(&self) -> &StoreConfig {
        self.settings()
    }

    fn lock_key<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
        start: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(
                "INSERT INTO inbox_keys (key, next_seq, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(start)
            .bind(now.as_micros())
            .execute(conn)
            .await?;
            Stmt::<S::Db>::new(sql(format!(
                "SELECT next_seq FROM inbox_keys WHERE key = $1{}",
                S::Db::FOR_UPDATE
            )))
            .bind(key)
            .fetch_one(conn)
            .await?
            .get("next_seq")
        })
    }

    fn set_next<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
        next: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(
                "UPDATE inbox_keys SET next_seq = $2, updated_at = $3 WHERE key = $1",
            )
            .bind(key)
            .bind(next)
            .bind(now.as_micros())
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn held<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Delivered>>> {
        Box::pin(async move {
            let rows = Stmt::<S::Db>::new(
                "SELECT seq, message_id, payload, received_at FROM inbox_held \
                 WHERE key = $1 ORDER BY seq",
            )
            .bind(key)
            .fetch_all(conn)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(Delivered {
                        key: key.to_string(),
                        seq: row.get::<i64>("seq")? as u64,
                        message_id: row.get("message_id")?,
                        payload: row.get("payload")?,
                        received_at: Timestamp::from_micros(row.get("received_at")?),
                    })
                })
                .collect()
        })
    }

    fn hold<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        message: &'a Delivered,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(
                "INSERT INTO inbox_held (key, seq, message_id, payload, received_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(message.key.as_str())
            .bind(message.seq as i64)
            .bind(message.message_id.as_str())
            .bind(message.payload.as_slice())
            .bind(message.received_at.as_micros())
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn unhold<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Stmt::<S::Db>::new("DELETE FROM inbox_held WHERE key = $1 AND seq = $2")
                .bind(key)
                .bind(seq)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    fn declare_lost<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
        first: i64,
        last: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<LostGap>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new(sql(format!(
                "INSERT INTO inbox_lost (key, first_seq, last_seq, declared_at) \
                 VALUES ($1, $2, $3, $4) RETURNING {LOST_COLUMNS}"
            )))
            .bind(key)
            .bind(first)
            .bind(last)
            .bind(now.as_micros())
            .fetch_one(conn)
            .await?;
            lost_gap(&row)
        })
    }

    fn count_late<'a>(
        &'a self,
        conn: &'a mut Conn<S>,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<Option<LostGap>>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new(sql(format!(
                "UPDATE inbox_lost SET late_arrivals = late_arrivals + 1 \
                 WHERE id = (SELECT id FROM inbox_lost WHERE key = $1 AND first_seq <= $2 \
                   AND last_seq >= $2 ORDER BY first_seq DESC LIMIT 1) \
                 RETURNING {LOST_COLUMNS}"
            )))
            .bind(key)
            .bind(seq)
            .fetch_optional(conn)
            .await?;
            row.as_ref().map(lost_gap).transpose()
        })
    }

    fn list_lost(&self, limit: u32) -> BoxFuture<'_, Result<Vec<LostGap>>> {
        Box::pin(async move {
            let mut conn = self.reader().acquire().await?;
            let rows = Stmt::<S::Db>::new(sql(format!(
                "SELECT {LOST_COLUMNS} FROM inbox_lost ORDER BY id DESC LIMIT $1"
            )))
            .bind(i64::from(limit))
            .fetch_all(&mut conn)
            .await?;
            rows.iter().map(lost_gap).collect()
        })
    }

    fn expired_keys(&self, before: Timestamp, limit: u32) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut conn = self.reader().acquire().await?;
            let rows = Stmt::<S::Db>::new(
                "SELECT DISTINCT key FROM inbox_held WHERE received_at < $1 ORDER BY key LIMIT $2",
            )
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut conn)
            .await?;
            rows.iter().map(|row| row.get("key")).collect()
        })
    }
}
