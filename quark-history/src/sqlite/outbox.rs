//! The outbox and the inbox on SQLite. Writers are serialized, so a claim needs no row locks: the
//! head-of-key condition alone keeps two relays off one key.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Row, SqliteConnection};

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::inbox::{DEFAULT_INBOX_WINDOW, INBOX_RECORD_SQL, InboxStore};
use crate::outbox::{
    CLAIMED_COLUMNS, ClaimedMessage, Delivery, FENCE, HEAD_CONDITION, MessageRow,
    OUTBOX_WAKE_QUEUE, OutboxClaim, OutboxFilter, OutboxLease, OutboxMessage, OutboxRecord,
    claimed, decode_headers, list_sql, prepare,
};
use crate::queue::TaskKind;
use crate::wakeup::Wake;

/// The shared SQL, with SQLite's placeholders.
fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text.replace('$', "?"))
}

/// Inserts prepared messages; a taken idempotency key fails the whole transaction.
pub(super) async fn insert_messages(
    conn: &mut SqliteConnection,
    rows: &[MessageRow],
    now: Timestamp,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO outbox (destination, ordering_key, idempotency_key, payload, headers, state, \
             next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&row.destination)
        .bind(&row.ordering_key)
        .bind(&row.idempotency_key)
        .bind(&row.payload)
        .bind(&row.headers)
        .bind(now.as_micros())
        .fetch_optional(&mut *conn)
        .await?;
        ids.push(id.ok_or_else(|| Error::MessageExists {
            key: row.idempotency_key.clone(),
        })?);
    }
    Ok(ids)
}

/// Records inbox ids for a commit; a duplicate within the default window fails it.
pub(super) async fn receive_in(
    conn: &mut SqliteConnection,
    ids: &[String],
    now: Timestamp,
) -> Result<()> {
    for id in ids {
        if !record(conn, id, now, DEFAULT_INBOX_WINDOW).await? {
            return Err(Error::AlreadyReceived {
                message_id: id.clone(),
            });
        }
    }
    Ok(())
}

pub(crate) async fn record(
    conn: &mut SqliteConnection,
    id: &str,
    now: Timestamp,
    window: Duration,
) -> Result<bool> {
    let row: Option<i64> = sqlx::query_scalar(sql(INBOX_RECORD_SQL))
        .bind(id)
        .bind(now.as_micros())
        .bind((now - window).as_micros())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

fn claimed_row(worker: &str, row: &sqlx::sqlite::SqliteRow) -> Result<ClaimedMessage> {
    claimed(
        worker,
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
    )
}

impl SqliteStore {
    pub(super) fn announce_outbox(&self) {
        self.hub.announce(Wake::Queue {
            queue: OUTBOX_WAKE_QUEUE.to_string(),
            kind: TaskKind::Outbox,
        });
    }

    /// Writes messages inside the caller's transaction.
    pub(crate) async fn send_in(
        &self,
        conn: &mut SqliteConnection,
        messages: &[OutboxMessage],
    ) -> Result<Vec<i64>> {
        let rows = prepare(&self.config, messages)?;
        let ids = insert_messages(conn, &rows, self.config.clock.now()).await?;
        // Said before the caller commits: a relay that looks too early finds nothing and polls.
        self.announce_outbox();
        Ok(ids)
    }

    pub(super) async fn send_impl(&self, messages: Vec<OutboxMessage>) -> Result<Vec<i64>> {
        let rows = prepare(&self.config, &messages)?;
        let mut tx = self.begin().await?;
        let ids = insert_messages(&mut tx, &rows, self.config.clock.now()).await?;
        tx.commit().await?;
        if !ids.is_empty() {
            self.announce_outbox();
        }
        Ok(ids)
    }

    pub(super) async fn claim_outbox_impl(
        &self,
        claim: OutboxClaim,
    ) -> Result<Vec<ClaimedMessage>> {
        let now = self.config.clock.now();
        let expires = now + claim.lease;
        let mut tx = self.begin().await?;
        let rows = sqlx::query(sql(&format!(
            "UPDATE outbox SET lease_owner = $3, attempts = attempts + 1, next_attempt_at = $4 \
             WHERE id IN (SELECT o.id FROM outbox o WHERE {HEAD_CONDITION} \
               ORDER BY o.next_attempt_at, o.id LIMIT $2) \
             RETURNING {CLAIMED_COLUMNS}"
        )))
        .bind(now.as_micros())
        .bind(i64::from(claim.limit))
        .bind(&claim.worker)
        .bind(expires.as_micros())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|row| claimed_row(&claim.worker, row))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|m| m.lease.id);
        Ok(out)
    }

    pub(super) async fn settle_outbox_impl(
        &self,
        lease: &OutboxLease,
        delivery: Delivery,
    ) -> Result<Option<ClaimedMessage>> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let (set, extra): (&str, Option<String>) = match &delivery {
            Delivery::Sent { .. } => (
                "state = 'sent', sent_at = $4, lease_owner = NULL, last_error = NULL, next_attempt_at = $4",
                None,
            ),
            Delivery::Retry { error, .. } => (
                "lease_owner = NULL, next_attempt_at = $4, last_error = COALESCE($5, last_error)",
                error.clone(),
            ),
            Delivery::Dead { error } => (
                "state = 'dead', lease_owner = NULL, next_attempt_at = $4, last_error = $5",
                Some(error.clone()),
            ),
        };
        let at = match &delivery {
            Delivery::Retry { at, .. } => *at,
            _ => now,
        };
        let key: Option<String> = sqlx::query_scalar(sql(&format!(
            "UPDATE outbox SET {set} WHERE {FENCE} RETURNING ordering_key"
        )))
        .bind(lease.id)
        .bind(i64::from(lease.attempt))
        .bind(&lease.worker)
        .bind(at.as_micros())
        .bind(extra)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(key) = key else {
            return Err(Error::LeaseLost {
                task_id: lease.id,
                attempt: lease.attempt,
            });
        };
        let mut next = None;
        if let Delivery::Sent {
            next_lease: Some(lease_for),
        } = &delivery
        {
            let row = sqlx::query(sql(&format!(
                "UPDATE outbox SET lease_owner = $3, attempts = attempts + 1, next_attempt_at = $4 \
                 WHERE id = (SELECT min(p.id) FROM outbox p WHERE p.state = 'pending' AND p.ordering_key = $1) \
                   AND next_attempt_at <= $2 AND state = 'pending' \
                 RETURNING {CLAIMED_COLUMNS}"
            )))
            .bind(&key)
            .bind(now.as_micros())
            .bind(&lease.worker)
            .bind((now + *lease_for).as_micros())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                next = Some(claimed_row(&lease.worker, &row)?);
            }
        }
        tx.commit().await?;
        let free = match &delivery {
            Delivery::Sent { next_lease } => next_lease.is_none(),
            Delivery::Retry { at, .. } => *at <= now,
            Delivery::Dead { .. } => true,
        };
        if free {
            self.announce_outbox();
        }
        Ok(next)
    }

    pub(super) async fn list_outbox_impl(&self, filter: OutboxFilter) -> Result<Vec<OutboxRecord>> {
        let text = list_sql(&filter);
        let mut query = sqlx::query(sql(&text));
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        if let Some(key) = &filter.ordering_key {
            query = query.bind(key.clone());
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRecord {
                    id: row.try_get(0)?,
                    destination: row.try_get::<&str, _>(1)?.parse()?,
                    ordering_key: row.try_get(2)?,
                    idempotency_key: row.try_get(3)?,
                    payload: row.try_get(4)?,
                    headers: decode_headers(row.try_get(5)?),
                    state: row.try_get::<&str, _>(6)?.parse()?,
                    attempts: row.try_get::<i64, _>(7)? as u32,
                    next_attempt_at: Timestamp::from_micros(row.try_get(8)?),
                    lease_owner: row.try_get(9)?,
                    last_error: row.try_get(10)?,
                    created_at: Timestamp::from_micros(row.try_get(11)?),
                    sent_at: row
                        .try_get::<Option<i64>, _>(12)?
                        .map(Timestamp::from_micros),
                })
            })
            .collect()
    }

    pub(super) async fn redrive_message_impl(&self, id: i64) -> Result<()> {
        let now = self.config.clock.now();
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2, lease_owner = NULL \
             WHERE id = ?1 AND state = 'dead'",
        )
        .bind(id)
        .bind(now.as_micros())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::MessageNotFound { id, state: "dead " });
        }
        self.announce_outbox();
        Ok(())
    }

    pub(super) async fn purge_outbox_impl(&self, retention: Duration, limit: u32) -> Result<u64> {
        let before = self.config.clock.now() - retention;
        Ok(sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'sent' AND sent_at < ?1 \
             ORDER BY sent_at LIMIT ?2)",
        )
        .bind(before.as_micros())
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    pub(super) async fn purge_inbox_impl(&self, window: Duration, limit: u32) -> Result<u64> {
        let before = self.config.clock.now() - window;
        Ok(sqlx::query(
            "DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM inbox WHERE received_at < ?1 \
             ORDER BY received_at LIMIT ?2)",
        )
        .bind(before.as_micros())
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }
}

impl InboxStore for SqliteStore {
    type Db = sqlx::Sqlite;

    fn begin_write(&self) -> BoxFuture<'_, Result<sqlx::Transaction<'static, sqlx::Sqlite>>> {
        Box::pin(self.begin())
    }

    fn record_in<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { record(conn, message_id, self.config.clock.now(), window).await })
    }
}
